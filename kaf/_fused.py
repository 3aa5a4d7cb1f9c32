"""The fused CPU kernel of the Gaussian Nadaraya–Watson estimator: build, load, call.

``kaf/_nw_cpu.cpp`` is compiled at first use with the system's C++ compiler into a small
shared library (plain C ABI, no torch headers: a few seconds), cached under
``$KAF_CACHE_DIR`` (default ``$XDG_CACHE_HOME/kaf``, else ``~/.cache/kaf``) by a hash of
the source, the compiler, its flags and the CPU, and loaded with :mod:`ctypes` (which
releases the GIL during the call). :func:`kaf.estimators.nadaraya_watson` uses it for
float32/float64 CPU tensors; the choice is the environment variable ``KAF_NW_BACKEND``:

* ``auto`` (default): the fused kernel where it applies and its vectors are at least as wide
  as those of torch's own CPU kernels (``torch.backends.cpu.get_cpu_capability()``: 64 bytes
  with AVX-512, 32 with AVX2, else 16), else the eager path. Side by side on one CPU, the
  kernel was 1.8 to 2.4 times faster than the eager path at equal width (AVX2), and at half
  width between 5% slower and 14% faster (README, "Benchmarks"); if it cannot be built (no compiler), one warning and the
  eager path from then on;
* ``cpp``: the fused kernel where it applies, and an error if it cannot be built;
* ``eager``: never (the torch-operations path of :mod:`kaf.estimators`).

``KAF_NW_ISA`` picks the instruction sets of the build (part of its cache key): ``native``
(default), ``portable`` (the architecture's baseline) or ``x86-64-v3`` (AVX2 and FMA).

Where it does not apply the eager path runs in every mode: CUDA and other devices,
float16/bfloat16 (computed in float32 by the eager path), double backward
(``create_graph=True``), :mod:`torch.func` transforms and forward-mode AD.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

__all__ = ["BACKENDS", "ISAS", "backend", "isa", "Kernel", "available", "applies", "describe", "torch_vector_bytes", "library", "excluded", "forward", "backward", "FusedUnavailable"]

BACKENDS = ("auto", "cpp", "eager")
ISAS = ("native", "portable", "x86-64-v3")
_SOURCE = Path(__file__).with_name("_nw_cpu.cpp")
#: flags of every build: -ffp-contract=off because the kernel writes out the multiply-adds it
#: wants fused, so that its forward and backward round each weight's exponent the same way
_BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off"]
#: the instruction sets a build may use, per ``KAF_NW_ISA``: the CPU's own (the library is
#: built on the machine that runs it, and the CPU is part of the cache key), the architecture's
#: baseline (SSE2 on x86-64, NEON on aarch64), or AVX2 with FMA (x86-64 only)
_ISA_FLAGS = {"native": ["-march=native"], "portable": [], "x86-64-v3": ["-march=x86-64-v3"]}


def isa() -> str:
    """The instruction sets asked for by ``KAF_NW_ISA`` (``native`` when unset)."""
    value = os.environ.get("KAF_NW_ISA", "native").strip().lower() or "native"
    if value not in ISAS:
        raise ValueError(f"KAF_NW_ISA must be one of {ISAS}, got {value!r}")
    return value


def _flag_sets(which: str):
    """The flag sets tried in turn for ``which``: with OpenMP (threads from the runtime torch
    uses), then without it, then (native only) without -march, for compilers that lack it."""
    march = _ISA_FLAGS[which]
    sets = [_BASE_FLAGS + march + ["-fopenmp"], _BASE_FLAGS + march + ["-fopenmp-simd", "-pthread"]]
    if which == "native":
        sets.append(_BASE_FLAGS + ["-fopenmp-simd", "-pthread"])
    return sets


class FusedUnavailable(RuntimeError):
    """The fused kernel could not be built or loaded (the message says why)."""


_lock = threading.Lock()
_lib: Optional["Kernel"] = None
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


def _abi(source: bytes) -> int:
    """The interface version the source declares (its one ``#define KAF_NW_ABI``)."""
    match = re.search(rb"^#define KAF_NW_ABI (\d+)$", source, re.M)
    if match is None:
        raise FusedUnavailable(f"{_SOURCE} declares no KAF_NW_ABI")
    return int(match.group(1))


_CTYPES = {"int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32}


def _args_structure(text: str):
    """The ctypes mirror of the kernel's ``KafNwArgs``, from the field list the library reports
    (``"int64_t k;int64_t n;...const void* a;..."``): pointers become ``c_void_p``."""
    fields = []
    for decl in filter(None, (part.strip() for part in text.split(";"))):
        ctype, name = decl.rsplit(" ", 1)
        fields.append((name, ctypes.c_void_p if ctype.endswith("*") else _CTYPES[ctype]))
    return type("KafNwArgs", (ctypes.Structure,), {"_fields_": fields})


class Kernel:
    """One loaded build of the kernel: the library, the ctypes structure of its arguments, the
    flags it was compiled with and the instruction sets its loops use (as the library says)."""

    def __init__(self, lib: ctypes.CDLL, flags, path: Path):
        self.lib, self.flags, self.path = lib, list(flags), path
        lib.kaf_nw_isa.restype = lib.kaf_nw_args.restype = ctypes.c_char_p
        self.isa = lib.kaf_nw_isa().decode()
        width = re.search(r"(\d+)-byte", self.isa)
        if width is None:
            raise FusedUnavailable(f"the kernel library names no vector width in its ISA string {self.isa!r}")
        self.vector_bytes = int(width.group(1))
        self.Args = _args_structure(lib.kaf_nw_args().decode())
        self._names = frozenset(name for name, _ in self.Args._fields_)
        for entry in ("kaf_nw_excluded", "kaf_nw_forward", "kaf_nw_backward"):
            getattr(lib, entry).argtypes = [ctypes.POINTER(self.Args)]
            getattr(lib, entry).restype = ctypes.c_int64

    def call(self, entry: str, **fields):
        """Call ``kaf_nw_<entry>`` with one KafNwArgs holding ``fields`` (tensors are passed by
        their data pointer, None as NULL); returns (its result, the arguments as it left them)."""
        unknown = fields.keys() - self._names
        if unknown:
            raise TypeError(f"kaf._fused: the kernel has no argument {sorted(unknown)}")
        args = self.Args(**{k: v.data_ptr() if isinstance(v, torch.Tensor) else v for k, v in fields.items()})
        return getattr(self.lib, "kaf_nw_" + entry)(ctypes.byref(args)), args


def _build(which: Optional[str] = None) -> Kernel:
    """Build (or find in the cache) and load the kernel for ``KAF_NW_ISA`` (or ``which``)."""
    which = which or isa()
    if which == "x86-64-v3":
        flags = _cpu_signature().split()
        if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= set(flags):
            raise FusedUnavailable("KAF_NW_ISA=x86-64-v3 needs an x86-64 CPU with AVX2 and FMA; this one is "
                                   f"{platform.machine()} without them")
    cxx = _compiler()
    if cxx is None:
        raise FusedUnavailable("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
    source = _SOURCE.read_bytes()
    abi = _abi(source)
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in _flag_sets(which):
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
            if lib.kaf_nw_abi_version() != abi:
                errors.append(f"{target}: ABI version {lib.kaf_nw_abi_version()} != {abi}")
                continue
            return Kernel(lib, flags, target)
    raise FusedUnavailable("could not build kaf/_nw_cpu.cpp:\n" + "\n".join(errors))


def library() -> Kernel:
    """The loaded kernel (:class:`Kernel`), built on first call; raises :class:`FusedUnavailable`."""
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


#: vector widths of torch's CPU kernels per dispatch level (others: 16 bytes)
_TORCH_VECTOR_BYTES = {"AVX512": 64, "AVX2": 32, "SVE256": 32}


def torch_vector_bytes() -> int:
    """The vector width of torch's own CPU kernels, which the eager path runs on."""
    return _TORCH_VECTOR_BYTES.get(torch.backends.cpu.get_cpu_capability(), 16)


def _auto_fused(kernel: Kernel) -> bool:
    """``auto``'s rule: the kernel, unless its vectors are narrower than torch's own."""
    return kernel.vector_bytes >= torch_vector_bytes()


def describe() -> dict:
    """What a benchmark states about the kernel: ``isa`` (its instruction sets and vector
    width), ``flags`` (the compiler's) and ``nw_path``, the path ``KAF_NW_BACKEND`` gives a
    float32 CPU call (building the kernel if needed)."""
    try:
        kernel = library()
    except FusedUnavailable as e:
        return {"isa": "none", "flags": "", "nw_path": f"eager (no fused kernel: {str(e).splitlines()[0]})"}
    mode = backend()
    if mode == "eager":
        path = "eager (KAF_NW_BACKEND=eager)"
    elif mode == "cpp" or _auto_fused(kernel):
        path = "fused kernel"
    else:
        path = (f"eager (auto: the kernel's {kernel.vector_bytes}-byte vectors are narrower than torch's "
                f"{torch_vector_bytes()}-byte ones)")
    return {"isa": kernel.isa, "flags": " ".join(kernel.flags), "nw_path": path}


def applies(a: torch.Tensor) -> bool:
    """Whether the fused kernel should compute a call on tensors like ``a``, per ``KAF_NW_BACKEND``."""
    global _warned
    if a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64):
        return False
    mode = backend()
    if mode == "eager":
        return False
    try:
        kernel = library()
    except FusedUnavailable as e:
        if mode == "cpp":
            raise
        if not _warned:
            _warned = True
            warnings.warn(f"kaf: the fused CPU kernel of nadaraya_watson is unavailable, using the slower eager "
                          f"path ({str(e).splitlines()[0]}); set KAF_NW_BACKEND=eager to silence this",
                          RuntimeWarning, stacklevel=3)
        return False
    return mode == "cpp" or _auto_fused(kernel)


def excluded(query_ids: Optional[torch.Tensor], ref_ids: Optional[torch.Tensor]):
    """The left-out pairs as runs of columns, ``(index, runs)``: query i leaves out the columns
    ``runs[r, 0]:runs[r, 1]`` for r in ``index[i, 0]:index[i, 1]`` (ascending), those whose id is
    its own. Queries with one id share their runs, so both take O(n + m) memory however many
    pairs are left out; ``(None, None)`` without ids. int64 CPU ids."""
    if query_ids is None or ref_ids is None:
        return None, None
    n, m = query_ids.shape[0], ref_ids.shape[0]
    index = torch.empty((n, 2), dtype=torch.int64)
    runs = torch.empty((max(m, 1), 2), dtype=torch.int64)  # an id's columns: at most m runs in all
    count, _ = library().call("excluded", n=n, m=m, query_ids=query_ids, ref_ids=ref_ids, ex_index=index,
                              ex_runs=runs)
    return index, runs[:count].clone()


def _dtype_code(t: torch.Tensor) -> int:
    return 0 if t.dtype == torch.float32 else 1


def forward(a, b, y, h, leave_out, same: bool, need_ab: bool):
    """Run the fused forward; ``leave_out`` is :func:`excluded`'s pair. Returns
    ``(status, bad, out, oc, lnorm, dmean, ycen)``: ``out`` the estimate (k, n), ``oc`` it
    minus the targets' mean, ``lnorm`` the log-normalisers of the weights, ``dmean`` (2, k, n)
    the weighted means of the scaled gaps and of their squares (only with ``need_ab``: the
    index or bandwidth gradients are wanted; else None), ``ycen`` the centred targets.

    ``status`` 0: done; 1: input outside the fused range (non-finite, h <= 0, overflow
    risk), nothing computed; 2: query ``bad`` has no reference point left.
    """
    k, n = a.shape
    m = b.shape[1]
    out, oc, lnorm = a.new_empty((k, n)), a.new_empty((k, n)), a.new_empty((k, n))
    dmean = a.new_empty((2, k, n)) if need_ab else None
    ycen = y.new_empty((k, m))
    status, args = library().call(
        "forward", k=k, n=n, m=m, dtype=_dtype_code(a), same=int(same), threads=torch.get_num_threads(), a=a, b=b,
        y=y, h=h, ex_index=leave_out[0], ex_runs=leave_out[1], out=out, oc=oc, lnorm=lnorm, dmean=dmean, ycen=ycen,
        bad=-1)
    return status, args.bad, out, oc, lnorm, dmean, ycen


def backward(a, b, ycen, h, leave_out, oc, lnorm, dmean, g, needs):
    """Gradients ``(grad_a, grad_b, grad_y, grad_h)`` for the upstream gradient ``g`` (k, n)
    (None where ``needs``, four booleans, says not needed; grad_a and grad_h need ``dmean``)."""
    k, n = a.shape
    m = b.shape[1]
    if (needs[0] or needs[3]) and dmean is None:
        raise RuntimeError("kaf._fused.backward: index or bandwidth gradients need the forward's dmean")
    grad_a = a.new_empty((k, n)) if needs[0] else None
    grad_b = b.new_empty((k, m)) if needs[1] else None
    grad_y = ycen.new_empty((k, m)) if needs[2] else None
    grad_h = h.new_empty((k,)) if needs[3] else None
    library().call("backward", k=k, n=n, m=m, dtype=_dtype_code(a), threads=torch.get_num_threads(), a=a, b=b,
                   ycen=ycen, h=h, ex_index=leave_out[0], ex_runs=leave_out[1], oc=oc, lnorm=lnorm, dmean=dmean,
                   g=g, grad_a=grad_a, grad_b=grad_b, grad_y=grad_y, grad_h=grad_h)
    return grad_a, grad_b, grad_y, grad_h


# --------------------------------------------------------------------------- the torch operator
#
# The fused estimator as two operators the dispatcher sees, kaf::nw_forward and
# kaf::nw_backward, so that torch.compile, torch.export and opcheck keep the call in the graph
# instead of stepping around an opaque ctypes call. Everything data-dependent (the value
# checks, the kernel's range test, a query left with no reference point) happens inside them,
# at run time; what the tracer sees is only shapes. Their inputs are those of forward() and
# backward() above: (k, n) / (k, m) layout, contiguous, without lazy negation, int64 ids.
# nadaraya_watson calls them while torch.compile or torch.export traces; eager calls keep
# the direct ctypes call from kaf.estimators._GaussianNW, whose autograd costs less
# (benchmarks/bench_nw_dispatch.py).


def _no_tensor(like: torch.Tensor) -> torch.Tensor:
    """An empty tensor standing for an output that was not asked for (an operator returns tensors)."""
    return like.new_empty((0,))


@torch.library.custom_op("kaf::nw_forward", mutates_args=(), device_types="cpu")
def nw_forward(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, h: torch.Tensor, query_ids: Optional[torch.Tensor],
               ref_ids: Optional[torch.Tensor], same: bool, need_ab: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gaussian estimator's forward: ``(out, oc, lnorm, dmean, ycen, safe)`` as in :func:`forward`
    (``dmean`` empty without ``need_ab``). ``safe`` (a 0-d bool) is true where the input lies outside
    the kernel's range and the estimator's overflow-safe float64 path computed ``out`` (the other
    outputs are then zeros); invalid input raises ``ValueError`` here."""
    status, bad, out, oc, lnorm, dmean, ycen = forward(a, b, y, h, excluded(query_ids, ref_ids), same, need_ab)
    if status == 0:
        return out, oc, lnorm, (_no_tensor(a) if dmean is None else dmean), ycen, torch.zeros((), dtype=torch.bool)
    from kaf import estimators  # the estimator's own checks and overflow-safe path (it imports this module)

    if status == 2:
        raise estimators._no_reference_left(bad)
    leave_out = estimators._LeaveOut(query_ids, ref_ids)
    estimators._diagnose(a, b, y, h, leave_out)  # raises on invalid input
    out = estimators._safe_forward(a, b, y, h, leave_out, None)
    oc.zero_(), lnorm.zero_(), ycen.zero_()
    return out, oc, lnorm, (_no_tensor(a) if dmean is None else dmean.zero_()), ycen, torch.ones((), dtype=torch.bool)


@nw_forward.register_fake
def _(a, b, y, h, query_ids, ref_ids, same, need_ab):
    k, n = a.shape
    return (a.new_empty((k, n)), a.new_empty((k, n)), a.new_empty((k, n)),
            a.new_empty((2, k, n)) if need_ab else _no_tensor(a), y.new_empty(y.shape),
            a.new_empty((), dtype=torch.bool))


@torch.library.custom_op("kaf::nw_backward", mutates_args=(), device_types="cpu")
def nw_backward(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, h: torch.Tensor, query_ids: Optional[torch.Tensor],
                ref_ids: Optional[torch.Tensor], out: torch.Tensor, oc: torch.Tensor, lnorm: torch.Tensor,
                dmean: torch.Tensor, ycen: torch.Tensor, safe: torch.Tensor, grad: torch.Tensor, needs: list[bool]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-order gradients ``(grad_a, grad_b, grad_y, grad_h)`` of :func:`nw_forward`'s ``out`` for
    the upstream gradient ``grad`` (k, n); an empty tensor where ``needs`` (four booleans) says not needed."""
    grad = grad.contiguous()
    if bool(safe):
        from kaf import estimators

        grads = estimators._safe_backward(a, b, y, h, out, grad, estimators._LeaveOut(query_ids, ref_ids), None,
                                          needs)
    else:
        grads = backward(a, b, ycen, h, excluded(query_ids, ref_ids), oc, lnorm, dmean if dmean.numel() else None,
                         grad, needs)
    ga, gb, gy, gh = (_no_tensor(t) if g is None else g for g, t in zip(grads, (a, b, y, h)))
    return ga, gb, gy, gh


@nw_backward.register_fake
def _(a, b, y, h, query_ids, ref_ids, out, oc, lnorm, dmean, ycen, safe, grad, needs):
    return tuple(t.new_empty(t.shape if need else (0,)) for t, need in zip((a, b, y, h), needs))


def _setup_context(ctx, inputs, output):
    a, b, y, h, query_ids, ref_ids, same, need_ab = inputs
    out, oc, lnorm, dmean, ycen, safe = output
    ctx.same = same
    ctx.save_for_backward(a, b, y, h, query_ids, ref_ids, out, oc, lnorm, dmean, ycen, safe)


def _backward(ctx, grad, *_):
    a, b, y, h, query_ids, ref_ids, out, oc, lnorm, dmean, ycen, safe = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4])
    if torch.is_grad_enabled():  # create_graph=True: gradients as plain operations, differentiable again
        from kaf import estimators

        return estimators._dense_gradients(a, b, y, h, estimators._LeaveOut(query_ids, ref_ids).dense(), ctx.same,
                                           bool(safe), grad, needs) + (None,) * 4
    grads = nw_backward(a, b, y, h, query_ids, ref_ids, out, oc, lnorm, dmean, ycen, safe, grad, needs)
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


nw_forward.register_autograd(_backward, setup_context=_setup_context)
