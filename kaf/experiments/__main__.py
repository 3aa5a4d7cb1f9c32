"""Command line: ``python -m kaf.experiments {list,run,reproduce,verdicts}``.

Examples::

    python -m kaf.experiments list
    python -m kaf.experiments run baselines --scale quick --seeds 2 --out /tmp/r
    python -m kaf.experiments reproduce --scale full            # writes results/ + provenance.json
    python -m kaf.experiments reproduce --scale full --jobs 4   # the same tables, on 4 local processes
    python -m kaf.experiments reproduce --dask tcp://host:8786  # ... on an existing Dask cluster
    python -m kaf.experiments verdicts                          # results/verdicts.csv from results/

Without ``--out``, full-scale runs write to ``results/`` and quick-scale runs to
``results/quick/`` (so a quick run never overwrites the committed full-scale tables).
Every finished run is recorded in ``<out>/runs/`` (not committed): a killed ``run`` or
``reproduce`` started again with the same options redoes only the runs that had not
finished (``--fresh`` redoes all of them).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import platform
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kaf import _fused
from kaf.experiments import registry, repo_root, results_dir
from kaf.experiments.sweep import CODE_DIGEST, RUNS_FOLDER, SweepError, atomic_write
from kaf.scale import get_scale


def default_out(scale: str) -> Path:
    return results_dir() if scale == "full" else results_dir() / "quick"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo_root()), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo_root()), "status", "--porcelain", "--", "kaf"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (kaf/ modified)" if dirty.stdout.strip() else "")


def _data_provenance() -> list:
    from kaf.data import load_dataset

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("iris", "wine", "breast_cancer", "mnist", "house"):
            info = load_dataset(name).info
            rows.append(dict(requested=name, name=info.name, label=info.label(), is_full=info.is_full,
                             fallback=info.fallback, checksum=info.checksum, source=info.source, note=info.note))
    return rows


def provenance(scale: str, device: str | None, sweep, wall: float, commit: str | None = None,
               data: list | None = None) -> dict:
    """The provenance record; ``sweep`` is the :class:`~kaf.experiments.sweep.SweepResult`,
    ``commit`` the git state taken when the runs started."""
    return {
        "command": "python -m kaf.experiments " + " ".join(sys.argv[1:]),
        "scale": scale,
        "git_commit": commit if commit is not None else _git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device or "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if (device or "").startswith("cuda") else None,
        "torch_threads": torch.get_num_threads(),
        "threads_per_run": 1,
        "wall_time_s": round(wall, 1),
        **sweep.provenance(),
        "code_digest": CODE_DIGEST,
        # seconds each experiment's runs took where they ran (summed; reused runs count with
        # the time they took when they were computed)
        "experiment_run_time_s": {k: round(v, 1) for k, v in sweep.run_seconds.items()},
        "kaf_sources_sha256": {p.relative_to(repo_root()).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                               for p in sorted([*(repo_root() / "kaf").rglob("*.py"),
                                                *(repo_root() / "kaf").rglob("*.cpp")])},
        # the path of the Gaussian estimator on the CPU: its fused kernel, or torch operations
        "nw_cpu_path": "fused kernel" if _fused.available() and _fused.backend() != "eager" else "torch operations",
        "data": data if data is not None else _data_provenance(),
    }


def _csv_checksums(out: Path) -> dict:
    """sha256 (first 12 hex digits) of every result table's CSV text (decompressed for ``.csv.gz``)."""
    sums = {}
    for p in sorted(out.glob("*.csv*")):
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        sums[p.name] = hashlib.sha256(data).hexdigest()[:12]
    return sums


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _Background(threading.Thread):
    """``fn()`` in a daemon thread (its result in ``.value``): work that waits on I/O while the runs go on."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.value, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.value = self.fn()
        except Exception as err:  # re-raised by result()
            self.error = err

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def _error(message: str) -> int:
    print(f"python -m kaf.experiments: error: {message}", file=sys.stderr, flush=True)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaf.experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the named experiments")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--scale", choices=("quick", "full"), default=None, help="default: KAF_SCALE / CI")
    common.add_argument("--device", default=None, help="torch device, e.g. cuda (default cpu)")
    common.add_argument("--seeds", type=_positive_int, default=None, help="override the number of seeds (0..N-1)")
    common.add_argument("--out", default=None, help="output folder (default results/ or results/quick/)")
    common.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    where = common.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                       help="run on N local processes, one thread each (default 1: in this process)")
    where.add_argument("--dask", default=None, metavar="ADDRESS",
                       help="submit the runs to the Dask scheduler at ADDRESS (e.g. tcp://host:8786)")
    common.add_argument("--fresh", action="store_true",
                        help="recompute every run, even those recorded in <out>/runs/ by an earlier sweep")
    p_run = sub.add_parser("run", parents=[common], help="run one experiment")
    p_run.add_argument("name", choices=sorted(registry.EXPERIMENTS))
    p_rep = sub.add_parser("reproduce", parents=[common], help="run every experiment, write provenance + verdicts")
    p_rep.add_argument("--only", nargs="*", default=None, choices=sorted(registry.EXPERIMENTS), metavar="NAME",
                       help="a subset of experiments")
    p_ver = sub.add_parser("verdicts", help="write verdicts.csv from the result tables")
    p_ver.add_argument("--results", default=None, help="folder with the result CSVs (default results/)")
    # --- portable check (logic in kaf.experiments.verdicts.check_portable) ---
    p_ver.add_argument("--check-portable", nargs="*", default=None, choices=sorted(registry.EXPERIMENTS), metavar="NAME",
                       help="first re-run NAME (default: the knife-edge experiments) under torch's portable kernels "
                            "and weigh every verdict against that second execution")
    p_ver.add_argument("--jobs", type=_positive_int, default=1, metavar="N", help="processes for --check-portable")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, exp in registry.EXPERIMENTS.items():
            print(f"{name:12s} {exp.title}  [{exp.chapter}]")
        return 0
    if args.command == "verdicts":
        from kaf.experiments.verdicts import write_verdicts

        folder = Path(args.results) if args.results else results_dir()
        if args.check_portable is not None:
            from kaf.experiments.verdicts import check_portable

            check_portable(folder, args.check_portable or None, jobs=args.jobs)
        table = write_verdicts(folder)
        print(table[["claim_id", "verdict"]].to_string(index=False))
        return 0

    if args.device and args.device.startswith("cuda") and not args.dask and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch.cuda.is_available() is False on this machine")
    scale = get_scale(args.scale)
    out = Path(args.out) if args.out else default_out(scale)
    names = [args.name] if args.command == "run" else (args.only or list(registry.EXPERIMENTS))
    jobs = args.jobs or 1
    # the code that runs is the code at the start (edits made while it runs do not count)
    commit = _git_commit()
    start = time.perf_counter()
    # with workers elsewhere this process is idle: describe the data meanwhile (mostly waiting
    # for the network); run here, the runs have loaded the data and it is instant afterwards
    data = _Background(_data_provenance) if args.command == "reproduce" and (jobs > 1 or args.dask) else None

    def written(name, tables):
        tqdm.write(f"{name}: {len(tables)} table(s) -> {out}")

    try:
        sweep = registry.run_experiments(names, scale, seeds=args.seeds, device=args.device, out=out,
                                         progress=not args.no_progress, jobs=jobs, dask=args.dask,
                                         fresh=args.fresh, on_experiment=written)
    except SweepError as err:
        return _error(str(err))
    except KeyboardInterrupt:
        print(f"interrupted; the finished runs are kept in {out / RUNS_FOLDER}: run the same command again to "
              f"go on from there", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    runs = sweep.provenance()["runs"]
    print(f"{runs['total']} runs ({runs['computed']} computed, {runs['reused']} reused from {out / RUNS_FOLDER}) "
          f"on {sweep.backend}{f' x{jobs}' if jobs > 1 else ''}: {wall:.1f} s", flush=True)
    if args.command == "reproduce":
        from kaf.experiments.verdicts import compute_verdicts

        prov = provenance(scale, args.device, sweep, wall, commit, data.result() if data is not None else None)
        prov["csv_sha256"] = _csv_checksums(out)
        text = json.dumps(prov, indent=2) + "\n"
        atomic_write(out / "provenance.json", lambda tmp: tmp.write_text(text))
        verdicts = compute_verdicts(out)
        atomic_write(out / "verdicts.csv", lambda tmp: verdicts.to_csv(tmp, index=False))
        print(f"reproduce ({scale}): {wall:.1f} s; provenance and verdicts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
