"""Command line: ``python -m kaf.experiments {list,run,reproduce,verdicts}``.

Examples::

    python -m kaf.experiments list
    python -m kaf.experiments run baselines --scale quick --seeds 2 --out /tmp/r
    python -m kaf.experiments reproduce --scale full            # writes results/ + provenance.json
    python -m kaf.experiments verdicts                          # results/verdicts.csv from results/

Without ``--out``, full-scale runs write to ``results/`` and quick-scale runs to
``results/quick/`` (so a quick run never overwrites the committed full-scale tables).
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
import time
import warnings
from pathlib import Path

import torch

from kaf.experiments import registry, repo_root, results_dir
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
        for name in ("iris", "wine", "mnist", "house"):
            info = load_dataset(name).info
            rows.append(dict(requested=name, name=info.name, label=info.label(), is_full=info.is_full,
                             fallback=info.fallback, checksum=info.checksum, source=info.source, note=info.note))
    return rows


def provenance(scale: str, device: str | None, timings: dict, wall: float, commit: str | None = None) -> dict:
    """The provenance record; ``commit`` is the git state taken when the runs started."""
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
        "wall_time_s": round(wall, 1),
        "experiment_wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        "kaf_sources_sha256": {p.relative_to(repo_root()).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                               for p in sorted((repo_root() / "kaf").rglob("*.py"))},
        "data": _data_provenance(),
    }


def _csv_checksums(out: Path) -> dict:
    """sha256 (first 12 hex digits) of every result table's CSV text (decompressed for ``.csv.gz``)."""
    sums = {}
    for p in sorted(out.glob("*.csv*")):
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        sums[p.name] = hashlib.sha256(data).hexdigest()[:12]
    return sums


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaf.experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the named experiments")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--scale", choices=("quick", "full"), default=None, help="default: KAF_SCALE / CI")
    common.add_argument("--device", default=None, help="torch device, e.g. cuda (default cpu)")
    common.add_argument("--seeds", type=int, default=None, help="override the number of seeds (0..N-1)")
    common.add_argument("--out", default=None, help="output folder (default results/ or results/quick/)")
    common.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    p_run = sub.add_parser("run", parents=[common], help="run one experiment")
    p_run.add_argument("name", choices=sorted(registry.EXPERIMENTS))
    p_rep = sub.add_parser("reproduce", parents=[common], help="run every experiment, write provenance + verdicts")
    p_rep.add_argument("--only", nargs="*", default=None, help="a subset of experiments")
    p_ver = sub.add_parser("verdicts", help="write verdicts.csv from the result tables")
    p_ver.add_argument("--results", default=None, help="folder with the result CSVs (default results/)")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, exp in registry.EXPERIMENTS.items():
            print(f"{name:12s} {exp.title}  [{exp.chapter}]")
        return 0
    if args.command == "verdicts":
        from kaf.experiments.verdicts import write_verdicts

        folder = Path(args.results) if args.results else results_dir()
        table = write_verdicts(folder)
        print(table[["claim_id", "verdict"]].to_string(index=False))
        return 0

    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch.cuda.is_available() is False on this machine")
    scale = get_scale(args.scale)
    out = Path(args.out) if args.out else default_out(scale)
    names = [args.name] if args.command == "run" else (args.only or list(registry.EXPERIMENTS))
    timings = {}
    # the code that runs is the code at the start (edits made while it runs do not count)
    commit = _git_commit()
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        registry.run_experiment(name, scale, seeds=args.seeds, device=args.device, out=out,
                                progress=not args.no_progress)
        timings[name] = time.perf_counter() - t0
        print(f"{name}: {timings[name]:.1f} s -> {out}", flush=True)
    wall = time.perf_counter() - start
    if args.command == "reproduce":
        from kaf.experiments.verdicts import write_verdicts

        prov = provenance(scale, args.device, timings, wall, commit)
        prov["csv_sha256"] = _csv_checksums(out)
        (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
        write_verdicts(out)
        print(f"reproduce ({scale}): {wall:.1f} s; provenance and verdicts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
