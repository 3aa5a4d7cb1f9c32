"""``reproduce`` on one core against ``reproduce --jobs N``, side by side.

Runs ``python -m kaf.experiments reproduce`` (all experiments, or ``--only``) as a user
would, once serially and once with ``--jobs N``, each in a fresh process and from scratch
(``--fresh``, its own temporary output folder), alternating the order over ``--rounds``.
Prints, per round and command:

* the wall time of the command (what the target is about: start-up, every run, tables,
  provenance and verdicts),
* the CPU time of all runs as the workers measured it (``run_cpu_time_s`` in
  ``provenance.json``): it does not grow when other programs share the machine, so a
  parallel sum close to the serial one says that the workers did not slow each other
  down (memory bandwidth, caches),

then the speed-up (serial wall / parallel wall, median over rounds), whether the two
commands wrote the same tables (timing columns aside) and which verdicts differ (one that
judges measured time, like calc_size's, may differ between any two executions).

Targets on 2 cores: ``reproduce --scale full --jobs 2`` at least 1.7 x faster than serial;
a sweep of short runs, ``run baselines --scale quick --seeds 6`` (216 runs of a fraction of
a second each, ``--run baselines --seeds 6`` here), at least 1.5 x. The script prints PASS
or MISS and exits 0 either way (it is a measurement, not a test).

Usage::

    python benchmarks/bench_sweep.py [--scale quick|full] [--jobs 2] [--rounds 1] [--only NAME ...] [--keep DIR] [--record PATH]
    python benchmarks/bench_sweep.py --run baselines --seeds 6 --scale quick --rounds 3

``--keep DIR`` writes the parallel command's output (tables, ``provenance.json``,
``verdicts.csv``, run records) into ``DIR`` instead of a temporary folder, so one
measurement also re-makes a results folder: ``--scale full --jobs 2 --keep results``
re-makes the committed results and shows, in the same run, that a serial run gives the
same tables.

The wall times mean something only on a quiet machine: Linux shares the CPU between
sessions (autogroups), so while other sessions keep the cores busy a second worker
process adds little CPU to this command and the speed-up reads about 1. The script warns
when the load average exceeds the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _record

TARGET = 1.7
#: the target of a sweep of short runs (``--run``)
TARGET_SHORT = 1.5


def reproduce(args, jobs: int, out: Path) -> dict:
    what = ["run", args.run] if args.run else ["reproduce"]
    cmd = [sys.executable, "-m", "kaf.experiments", *what, "--scale", args.scale, "--out", str(out), "--fresh",
           "--no-progress"]
    if args.only:
        cmd += ["--only", *args.only]
    if args.seeds:
        cmd += ["--seeds", str(args.seeds)]
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    t0 = time.perf_counter()
    lines = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
    wall = time.perf_counter() - t0
    if args.run:  # no provenance.json: the command's own summary line ("216 runs (216 computed, ...")
        runs = next(int(line.split()[0]) for line in lines if " runs (" in line)
        return dict(wall=wall, runs=runs, runs_cpu=float("nan"))
    prov = json.loads((out / "provenance.json").read_text())
    return dict(wall=wall, runs=prov["runs"]["computed"], runs_cpu=prov["run_cpu_time_s"])


def compare(a: Path, b: Path) -> tuple:
    """(tables equal, timing columns aside; claim ids whose verdicts differ)."""
    import pandas as pd

    from kaf.experiments.analysis import load
    from kaf.experiments.sweep import TIMING_COLUMNS

    names = sorted(p.name for p in a.glob("*.csv.gz"))
    equal = names == sorted(p.name for p in b.glob("*.csv.gz"))
    for name in names if equal else []:
        x, y = (load(name[: -len(".csv.gz")], folder) for folder in (a, b))
        try:
            pd.testing.assert_frame_equal(x.drop(columns=[c for c in TIMING_COLUMNS if c in x]),
                                          y.drop(columns=[c for c in TIMING_COLUMNS if c in y]), check_exact=True)
        except AssertionError:
            print(f"  {name} differs")
            equal = False
    if not (a / "verdicts.csv").exists():
        return equal, []
    va, vb = (pd.read_csv(folder / "verdicts.csv") for folder in (a, b))
    both = va.merge(vb, on="claim_id", how="outer")
    return equal, sorted(both.loc[both.verdict_x != both.verdict_y, "claim_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("quick", "full"), default="quick")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=None, help="experiments (default: all)")
    parser.add_argument("--run", default=None, metavar="NAME", help="time `run NAME` instead of `reproduce`")
    parser.add_argument("--seeds", type=int, default=None, help="--seeds of the command")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the parallel command's output here instead of a temporary folder")
    _record.add_argument(parser)
    args = parser.parse_args()
    if args.jobs < 2 or args.rounds < 1:
        parser.error("--jobs must be >= 2 and --rounds >= 1")
    if args.run and args.only:
        parser.error("--run and --only exclude each other")

    print(_record.header())
    load, cores = os.getloadavg()[0], os.cpu_count()
    if load > cores:
        print(f"WARNING: load average {load:.1f} on {cores} cores: the wall times below measure the "
              f"other programs as much as the sweep")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    walls: dict[int, list] = {1: [], args.jobs: []}
    equal = True
    try:
        for r in range(args.rounds):
            order = (1, args.jobs) if r % 2 == 0 else (args.jobs, 1)
            for jobs in order:
                out = args.keep if (jobs > 1 and args.keep is not None) else tmp / f"jobs{jobs}"
                m = reproduce(args, jobs, out)
                walls[jobs].append(m["wall"])
                print(f"round {r + 1}, jobs={jobs}: {m['runs']} runs, wall {m['wall']:.1f} s, "
                      f"CPU time of the runs {m['runs_cpu']:.1f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
            same, verdicts = compare(tmp / "jobs1", args.keep if args.keep is not None else tmp / f"jobs{args.jobs}")
            equal &= same
            if verdicts:
                print(f"  verdicts that differ: {verdicts} (a verdict on measured time, like calc_size's, can "
                      f"differ between any two executions)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    speedup = statistics.median(walls[1]) / statistics.median(walls[args.jobs])
    target = TARGET_SHORT if args.run else TARGET
    verdict = "PASS" if speedup >= target and equal else "MISS"
    print(f"speed-up serial / jobs={args.jobs}: {speedup:.2f} x (target >= {target} on 2 cores, scale "
          f"{args.scale}); tables equal: {equal}  {verdict}")
    _record.write(args.record, "bench_sweep", {
        "scale": args.scale, "jobs": args.jobs, "rounds": args.rounds, "only": args.only,
        "wall_s": {str(j): w for j, w in walls.items()}, "speedup": speedup, "tables_equal": equal, "target": TARGET})


if __name__ == "__main__":
    main()
