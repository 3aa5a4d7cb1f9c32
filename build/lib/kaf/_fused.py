"""The fused CPU kernel of the Gaussian Nadaraya–Watson estimator: build, load, call.

``kaf/_nw_cpu.cpp`` is compiled at first use with the system's C++ compiler into a small
shared library (plain C ABI, no torch headers: about two seconds), cached under
``$KAF_CACHE_DIR`` (default ``$XDG_CACHE_HOME/kaf``, else ``~/.cache/kaf``) by a hash of
the source, the compiler, its flags and the CPU, and loaded with :mod:`ctypes` (which
releases the GIL during the call). :func:`kaf.estimators.nadaraya_watson` uses it for
float32/float64 CPU tensors; the choice is the environment variable ``KAF_NW_BACKEND``:

* ``auto`` (default): the fused kernel where it applies; if it cannot be built (no
  compiler), one warning and the eager path from then on;
* ``cpp``: the fused kernel where it applies, and an error if it cannot be built;
* ``eager``: never (the torch-operations path of :mod:`kaf.estimators`).

Where it does not apply the eager path runs in every mode: CUDA and other devices,
float16/bfloat16 (computed in float32 by the eager path), double backward
(``create_graph=True``), :mod:`torch.func` transforms and forward-mode AD.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

__all__ = ["BACKENDS", "backend", "available", "applies", "library", "excluded", "forward", "backward", "FusedUnavailable"]

BACKENDS = ("auto", "cpp", "eager")
_SOURCE = Path(__file__).with_name("_nw_cpu.cpp")
_ABI = 4
# the compiler is tried with these flags in turn: the CPU's own vector instructions first
# (the library is built on the machine that runs it; the CPU is part of the cache key), with
# OpenMP (threads from the runtime torch uses), then without each in turn
_FLAG_SETS = (
    ["-O3", "-std=c++17", "-shared", "-fPIC", "-march=native", "-fopenmp"],
    ["-O3", "-std=c++17", "-shared", "-fPIC", "-march=native", "-fopenmp-simd", "-pthread"],
    ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", "-pthread"],
)


class FusedUnavailable(RuntimeError):
    """The fused kernel could not be built or loaded (the message says why)."""


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_failure: Optional[str] = None
_warned = False


def backend() -> str:
    """The backend asked for by ``KAF_NW_BACKEND`` (``auto`` when unset)."""
    value = os.environ.get("KAF_NW_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"KAF_NW_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


def _cache_dir() -> Path:
    if os.environ.get("KAF_CACHE_DIR"):
        return Path(os.environ["KAF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kaf"


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What the compiled code depends on beyond the source: the CPU's instruction sets."""
    text = platform.machine() + platform.system()
    try:
        with open("/proc/cpuinfo") as f:
            text += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        text += platform.processor()
    return text


#: flags of a portable build (no instruction sets beyond the architecture's baseline): the
#: tests build it too, so the loops without AVX-512 are checked on machines that have it
PORTABLE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp"]


def _build(flag_sets=_FLAG_SETS) -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise FusedUnavailable("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
    source = _SOURCE.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in flag_sets:
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:16]
        suffix = ".dll" if sys.platform == "win32" else ".so"
        for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"kaf-{os.getuid() if hasattr(os, 'getuid') else 0}"):
            target = folder / f"nw_cpu-{key}{suffix}"
            if not target.exists():
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    # build under a private name, then rename: processes that build at the
                    # same time (parallel sweeps) never load a half-written library
                    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=folder)
                    os.close(fd)
                except OSError as e:
                    errors.append(f"{folder}: {e}")
                    continue
                proc = subprocess.run([cxx, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True)
                if proc.returncode != 0:
                    os.unlink(tmp)
                    errors.append(f"{' '.join(flags)}: {proc.stderr.strip()[-2000:]}")
                    break  # the same flags fail in any folder: try the next set
                os.replace(tmp, target)
            try:
                lib = ctypes.CDLL(str(target))
            except OSError as e:
                errors.append(f"{target}: {e}")
                continue
            if lib.kaf_nw_abi_version() != _ABI:
                errors.append(f"{target}: ABI version {lib.kaf_nw_abi_version()} != {_ABI}")
                continue
            _declare(lib)
            return lib
    raise FusedUnavailable("could not build kaf/_nw_cpu.cpp:\n" + "\n".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    i64, p, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.kaf_nw_excluded.argtypes = [i64, i64, p, p, p, p, i64]
    lib.kaf_nw_excluded.restype = i64
    for suffix in ("f32", "f64"):
        f = getattr(lib, f"kaf_nw_forward_{suffix}")
        f.argtypes = [i64, i64, i64] + [p] * 6 + [c_int] + [p] * 5 + [c_int, p]
        f.restype = c_int
        b = getattr(lib, f"kaf_nw_backward_{suffix}")
        b.argtypes = [i64, i64, i64] + [p] * 14 + [c_int]
        b.restype = None


def library() -> ctypes.CDLL:
    """The loaded kernel library, built on first call; raises :class:`FusedUnavailable`."""
    global _lib, _failure
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            if _failure is not None:
                raise FusedUnavailable(_failure)
            try:
                _lib = _build()
            except FusedUnavailable as e:
                _failure = str(e)
                raise
    return _lib


def available() -> bool:
    """Whether the fused kernel can be used (builds it if needed)."""
    try:
        library()
    except FusedUnavailable:
        return False
    return True


def applies(a: torch.Tensor) -> bool:
    """Whether the fused kernel should compute a call on tensors like ``a``, per ``KAF_NW_BACKEND``."""
    global _warned
    if a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64):
        return False
    if torch.compiler.is_compiling():  # torch.compile traces the torch-operations path instead
        return False
    mode = backend()
    if mode == "eager":
        return False
    if _lib is not None:
        return True
    try:
        library()
    except FusedUnavailable as e:
        if mode == "cpp":
            raise
        if not _warned:
            _warned = True
            warnings.warn(f"kaf: the fused CPU kernel of nadaraya_watson is unavailable, using the slower eager "
                          f"path ({str(e).splitlines()[0]}); set KAF_NW_BACKEND=eager to silence this",
                          RuntimeWarning, stacklevel=3)
        return False
    return True


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else t.data_ptr()


def excluded(query_ids: Optional[torch.Tensor], ref_ids: Optional[torch.Tensor]):
    """The left-out pairs as lists, ``(start, cols)``: query i leaves out the reference columns
    ``cols[start[i]:start[i + 1]]`` (ascending); ``(None, None)`` without ids. int64 CPU ids."""
    if query_ids is None:
        return None, None
    lib = library()
    n, m = query_ids.shape[0], ref_ids.shape[0]
    start = torch.empty(n + 1, dtype=torch.int64)
    cols = torch.empty(max(n, 1), dtype=torch.int64)  # room for one pair per query: unique ids
    count = lib.kaf_nw_excluded(n, m, query_ids.data_ptr(), ref_ids.data_ptr(), start.data_ptr(), cols.data_ptr(),
                                cols.numel())
    if count > cols.numel():  # duplicated ids: more pairs
        cols = torch.empty(count, dtype=torch.int64)
        lib.kaf_nw_excluded(n, m, query_ids.data_ptr(), ref_ids.data_ptr(), start.data_ptr(), cols.data_ptr(),
                            count)
    return start, cols


def forward(a, b, y, h, leave_out, same: bool, need_ab: bool):
    """Run the fused forward; ``leave_out`` is :func:`excluded`'s pair. Returns
    ``(status, bad, out, oc, lnorm, dmean, ycen)``: ``out`` the estimate (k, n), ``oc`` it
    minus the targets' mean, ``lnorm`` the log-normalisers of the weights, ``dmean`` (2, k, n)
    the weighted means of the scaled gaps and of their squares (only with ``need_ab``: the
    index or bandwidth gradients are wanted; else None), ``ycen`` the centred targets.

    ``status`` 0: done; 1: input outside the fused range (non-finite, h <= 0, overflow
    risk), nothing computed; 2: query ``bad`` has no reference point left.
    """
    lib = library()
    k, n = a.shape
    m = b.shape[1]
    out, oc, lnorm = a.new_empty((k, n)), a.new_empty((k, n)), a.new_empty((k, n))
    dmean = a.new_empty((2, k, n)) if need_ab else None
    ycen = y.new_empty((k, m))
    bad = ctypes.c_int64(-1)
    fn = lib.kaf_nw_forward_f32 if a.dtype == torch.float32 else lib.kaf_nw_forward_f64
    status = fn(k, n, m, _ptr(a), _ptr(b), _ptr(y), _ptr(h), _ptr(leave_out[0]), _ptr(leave_out[1]), int(same),
                _ptr(out), _ptr(oc), _ptr(lnorm), _ptr(dmean), _ptr(ycen), torch.get_num_threads(), ctypes.byref(bad))
    return status, bad.value, out, oc, lnorm, dmean, ycen


def backward(a, b, ycen, h, leave_out, oc, lnorm, dmean, g, needs):
    """Gradients ``(grad_a, grad_b, grad_y, grad_h)`` for the upstream gradient ``g`` (k, n)
    (None where ``needs``, four booleans, says not needed; grad_a and grad_h need ``dmean``)."""
    lib = library()
    k, n = a.shape
    m = b.shape[1]
    if (needs[0] or needs[3]) and dmean is None:
        raise RuntimeError("kaf._fused.backward: index or bandwidth gradients need the forward's dmean")
    grad_a = a.new_empty((k, n)) if needs[0] else None
    grad_b = b.new_empty((k, m)) if needs[1] else None
    grad_y = ycen.new_empty((k, m)) if needs[2] else None
    grad_h = h.new_empty((k,)) if needs[3] else None
    fn = lib.kaf_nw_backward_f32 if a.dtype == torch.float32 else lib.kaf_nw_backward_f64
    fn(k, n, m, _ptr(a), _ptr(b), _ptr(ycen), _ptr(h), _ptr(leave_out[0]), _ptr(leave_out[1]), _ptr(oc),
       _ptr(lnorm), _ptr(dmean), _ptr(g), _ptr(grad_a), _ptr(grad_b), _ptr(grad_y), _ptr(grad_h),
       torch.get_num_threads())
    return grad_a, grad_b, grad_y, grad_h
