"""Command line: ``python -m kaf.experiments {list,run,reproduce,verdicts}``.

Examples::

    python -m kaf.experiments list
    python -m kaf.experiments run baselines --scale quick --seeds 2 --out /tmp/r
    python -m kaf.experiments reproduce --scale full            # writes results/ + provenance.json
    python -m kaf.experiments reproduce --scale full --jobs 4   # the same tables, on 4 local processes
    python -m kaf.experiments reproduce --dask tcp://host:8786  # ... on an existing Dask cluster
    python -m kaf.experiments verdicts                          # results/verdicts.csv from results/

Without ``--out``, full-scale runs write to ``results/`` and quick-scale runs to
``results/quick/`` (so a quick run never overwrites the committed full-scale tables):
the repository's ``results/`` when kaf runs from a checkout, else ``results/`` in the
working directory (an installed kaf). The first line of output names the folder.
Every finished run is recorded in ``<out>/runs/`` (not committed): a killed ``run`` or
``reproduce`` started again with the same options redoes only the runs that had not
finished (``--fresh`` redoes all of them).

Every option is checked before any work (a bad one is a usage error, exit status 2), and
no command loses results: a table or ``verdicts.csv`` that holds more rows than the new
one is left as it is unless ``--fresh`` is given, and ``verdicts`` writes nothing when it
finds no tables.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

import kaf
from kaf import _fused
from kaf.experiments import registry, repo_root, results_dir
from kaf.experiments.sweep import CODE_DIGEST, RUNS_FOLDER, SweepError, atomic_write, table_rows
from kaf.scale import get_scale

#: the kaf package that runs (a checkout's or an installed copy)
_PACKAGE = Path(kaf.__file__).resolve().parent


#: the most seeds ``--seeds`` takes (every config is run once per seed)
MAX_SEEDS = 1000
#: the most local processes ``--jobs`` takes: more than a few per core only slows the runs down
MAX_JOBS = max(8, 4 * (os.cpu_count() or 1))


def default_out(scale: str) -> Path:
    """``results/`` (full scale) or ``results/quick/`` under :func:`~kaf.experiments.results_dir`: the
    repository's when kaf runs from a checkout, else the working directory's."""
    return results_dir() if scale == "full" else results_dir() / "quick"


def _git_commit() -> str:
    try:
        root = repo_root()
    except FileNotFoundError:
        return "unknown (kaf is installed, not a checkout)"
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kaf"],
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
    kernel = _fused.describe()
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
        "kaf_sources_sha256": {p.relative_to(_PACKAGE.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                               for p in sorted([*_PACKAGE.rglob("*.py"), *_PACKAGE.rglob("*.cpp")])},
        # the path of the Gaussian estimator on the CPU (the fused kernel, or torch operations
        # where KAF_NW_BACKEND or auto's rule says so), with the kernel build's instruction sets
        "nw_cpu_path": kernel["nw_path"],
        "nw_kernel_isa": kernel["isa"],
        "data": data if data is not None else _data_provenance(),
    }


def _csv_checksums(out: Path) -> dict:
    """sha256 (first 12 hex digits) of every result table's CSV text (decompressed for ``.csv.gz``)."""
    sums = {}
    for p in sorted(out.glob("*.csv*")):
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        sums[p.name] = hashlib.sha256(data).hexdigest()[:12]
    return sums


def _int_in(lo: int, hi: int):
    """An argparse type: an int in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected a positive integer (at most {hi}), got {text!r}")
        return value

    return parse


#: device types a run can train on
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"expected a torch device of type {'/'.join(DEVICE_TYPES)} such as cpu, "
                                         f"cuda or cuda:1, got {text!r}")
    return str(device)


def _unavailable(device: str) -> str | None:
    """Why ``device`` cannot be used by this process, or ``None``."""
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False on this machine"
        if d.index is not None and d.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if d.type == "mps" and not torch.backends.mps.is_available():
        return "torch.backends.mps.is_available() is False on this machine"
    if d.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return "torch.xpu.is_available() is False on this machine"
    return None


def _folder(text: str) -> str:
    """An argparse type: a folder to write into (it may not exist yet)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text!r}")
    return text


def _existing_folder(text: str) -> str:
    """An argparse type: a folder that exists."""
    if not text.strip() or not Path(text).is_dir():
        what = "an empty path" if not text.strip() else ("a file" if Path(text).exists() else "nothing there")
        raise argparse.ArgumentTypeError(f"expected an existing folder of result tables, got {text!r} ({what})")
    return text


def _dask_address(text: str) -> str:
    from kaf.experiments.sweep import check_dask_address

    try:
        return check_dask_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("dask must be", "expected")) from None


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


def _write_verdicts(folder: Path, table, fresh: bool) -> str | None:
    """Write ``table`` as ``folder/verdicts.csv`` unless that loses verdicts; why not, or ``None``."""
    path = folder / "verdicts.csv"
    old = table_rows(path)
    if not fresh and old is not None and old > len(table):
        return (f"{path} holds {old} verdicts and the tables in {folder} give {len(table)}: not overwritten "
                f"(pass --fresh to replace it)")
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kaf.experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the named experiments")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--scale", choices=("quick", "full"), default=None, help="default: KAF_SCALE / CI")
    common.add_argument("--device", type=_device, default=None, help="torch device, e.g. cuda (default cpu)")
    common.add_argument("--seeds", type=_int_in(1, MAX_SEEDS), default=None,
                        help=f"override the number of seeds (0..N-1, N <= {MAX_SEEDS})")
    common.add_argument("--out", type=_folder, default=None,
                        help="output folder (default results/ or results/quick/: the repository's in a checkout, "
                             "else the working directory's)")
    common.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    where = common.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=_int_in(1, MAX_JOBS), default=None, metavar="N",
                       help="run on N local processes, one thread each (default 1: in this process)")
    where.add_argument("--dask", type=_dask_address, default=None, metavar="ADDRESS",
                       help="submit the runs to the Dask scheduler at ADDRESS (e.g. tcp://host:8786)")
    common.add_argument("--fresh", action="store_true",
                        help="recompute every run, even those recorded in <out>/runs/ by an earlier sweep, and "
                             "replace tables that hold more rows than the new ones")
    p_run = sub.add_parser("run", parents=[common], help="run one experiment")
    p_run.add_argument("name", choices=sorted(registry.EXPERIMENTS))
    p_rep = sub.add_parser("reproduce", parents=[common], help="run every experiment, write provenance + verdicts")
    p_rep.add_argument("--only", nargs="+", default=None, choices=sorted(registry.EXPERIMENTS), metavar="NAME",
                       help="a subset of experiments")
    p_ver = sub.add_parser("verdicts", help="write verdicts.csv from the result tables")
    p_ver.add_argument("--results", type=_existing_folder, default=None,
                       help="folder with the result tables (default results/: the repository's in a checkout, "
                            "else the working directory's)")
    p_ver.add_argument("--fresh", action="store_true", help="replace verdicts.csv even when it holds more verdicts")
    # --- portable check (logic in kaf.experiments.verdicts.check_portable) ---
    p_ver.add_argument("--check-portable", nargs="*", default=None, choices=sorted(registry.EXPERIMENTS), metavar="NAME",
                       help="first re-run NAME (default: the knife-edge experiments) under torch's portable kernels "
                            "and weigh every verdict against that second execution")
    p_ver.add_argument("--jobs", type=_int_in(1, MAX_JOBS), default=1, metavar="N", help="processes for --check-portable")
    return parser


def _verdicts(parser, args) -> int:
    from kaf.experiments.verdicts import compute_verdicts

    folder = Path(args.results) if args.results else results_dir()
    print(f"reading the result tables in {folder.resolve()}", flush=True)
    if not folder.is_dir():
        parser.error(f"there is no folder {str(folder)!r} of result tables: give one with --results, or make it with "
                     f"`python -m kaf.experiments run NAME` (or reproduce)")
    # a few verdicts are closed forms that need no table: without any table the file would be
    # made from no data at all
    if not any(p.name != "verdicts.csv" for p in folder.glob("*.csv*")):
        return _error(f"no result tables in {folder}, so no verdict; nothing written")
    if args.check_portable is not None:
        from kaf.experiments.verdicts import check_portable

        check_portable(folder, args.check_portable or None, jobs=args.jobs)
    table = compute_verdicts(folder)
    refused = _write_verdicts(folder, table, args.fresh)
    if refused:
        return _error(refused)
    print(table[["claim_id", "verdict"]].to_string(index=False))
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, exp in registry.EXPERIMENTS.items():
            print(f"{name:12s} {exp.title}  [{exp.chapter}]")
        return 0
    if args.command == "verdicts":
        return _verdicts(parser, args)

    # every option is checked before any work
    try:
        scale = get_scale(args.scale)
    except ValueError as err:
        parser.error(str(err))
    if args.device and not args.dask and (why := _unavailable(args.device)):
        parser.error(f"argument --device: {args.device}: {why}")
    out = Path(args.out) if args.out else default_out(scale)
    names = [args.name] if args.command == "run" else (args.only or list(registry.EXPERIMENTS))
    jobs = args.jobs or 1
    print(f"writing into {out.resolve()}", flush=True)
    if args.device:
        for name in names:
            if registry.EXPERIMENTS[name].compute is not None:
                print(f"{name}: its computed table does not train and runs on the CPU; --device {args.device} "
                      f"applies to its training runs only", flush=True)
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
        refused = _write_verdicts(out, compute_verdicts(out), args.fresh)
        if refused:
            return _error(refused)
        print(f"reproduce ({scale}): {wall:.1f} s; provenance and verdicts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
