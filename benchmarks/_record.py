"""What every benchmark states first, and the JSON record it writes with ``--record PATH``.

The first line names the kernel build behind :func:`kaf.estimators.nadaraya_watson` on the
CPU (its instruction sets, vector width and compiler flags, ``KAF_NW_ISA``) and the path
``KAF_NW_BACKEND`` gives it (the fused kernel or the eager torch operations). The record has
one schema for every benchmark::

    {"benchmark": script stem, "date_utc": ISO time, "machine": CPU model, "isa", "flags",
     "nw_path", "torch": version, "threads": torch's intra-op threads, "results": {...}}
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

from kaf import _fused


def machine() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def header() -> str:
    """The first line of a benchmark's output."""
    k = _fused.describe()
    return (f"nadaraya_watson on the CPU: {k['nw_path']}; kernel build: {k['isa']} (KAF_NW_ISA={_fused.isa()}), "
            f"flags {k['flags'] or '-'}; {machine()}, torch {torch.__version__} ({torch_capability()})")


def torch_capability() -> str:
    return f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"


def add_argument(parser) -> None:
    parser.add_argument("--record", type=Path, default=None, metavar="PATH",
                        help="also write the results as a JSON record to PATH")


def write(path, benchmark: str, results: dict) -> None:
    """Write the record of ``benchmark`` (its script's stem) with ``results`` to ``path``."""
    if path is None:
        return
    k = _fused.describe()
    record = {"benchmark": benchmark, "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "machine": machine(), "isa": k["isa"], "flags": k["flags"], "nw_path": k["nw_path"],
              "torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record written to {path}")
