r"""Kernel regression estimators: the mathematics behind K-AF, as pure tensor functions.

Everything here takes tensors and returns tensors; nothing here is an ``nn.Module``
(the modules in :mod:`kaf.nn` are thin wrappers over these functions).

The central object is the Nadaraya–Watson (local-constant) estimator of
:math:`E[y \mid z]` from reference pairs :math:`(z_j, y_j)`, evaluated at query
indices :math:`z_i`, one estimator per output unit :math:`k`:

.. math::

    \hat g_k(z_{ik}) = \frac{\sum_{j \notin L(i)} K\!\left(\frac{z_{jk}^{\mathrm{ref}} - z_{ik}}{h_k}\right) y_{jk}}
                            {\sum_{j \notin L(i)} K\!\left(\frac{z_{jk}^{\mathrm{ref}} - z_{ik}}{h_k}\right)}

where :math:`L(i)` is the set of reference points that *are* query point :math:`i`
(leave-one-out by identity).
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.autograd import forward_ad as _forward_ad

from kaf import _fused

__all__ = [
    "KERNELS",
    "nadaraya_watson",
    "kernel_density",
    "rule_of_thumb_bandwidth",
    "loo_cv_bandwidth",
    "ichimura",
    "IchimuraResult",
    "kaf_tron",
    "KafTronResult",
    "klein_spady",
    "klein_spady_objective",
    "KleinSpadyResult",
    "bernoulli_nll",
    "PROB_TRIM",
]

KERNELS = ("gaussian", "epanechnikov", "triangular", "uniform")


# --------------------------------------------------------------------------- validation


def _dense(name: str, x: torch.Tensor) -> None:
    """A tensor the estimators can read element by element: strided (not sparse, mkldnn or nested)."""
    if x.layout != torch.strided or x.is_nested:
        what = "nested" if x.is_nested else str(x.layout)
        raise ValueError(f"{name} must be a dense (strided) tensor, got a {what} tensor (call .to_dense() first)")


def _check_tensor(name: str, x, ndim: int, finite: bool = True) -> torch.Tensor:
    """Type, layout, rank and dtype checks; with ``finite`` also the values (one device synchronisation)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _dense(name, x)
    if x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _same_device(name: str, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; a meta tensor (shapes without values) cannot be moved to a real device."""
    if x.device == device:
        return x
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no values) while z is on {device}: give it on {device}")
    return x.to(device=device)


_ID_RANGE = "integers in [-2**63, 2**63), or all in [0, 2**64)"


def _id_tensor(name: str, ids, length: int, length_name: str) -> torch.Tensor:
    """``ids`` as a 1-D integer tensor of ``length`` (torch, numpy or a sequence of Python ints).
    Sequences with no element are int64 (``torch.as_tensor([])`` would be float); ints at and
    above 2**63 become uint64."""
    if not isinstance(ids, torch.Tensor):
        array = None
        if isinstance(ids, np.ndarray):
            array = ids
        elif not isinstance(ids, (str, bytes)) and hasattr(ids, "__len__"):
            items = list(ids)
            if not items:
                array = np.zeros(0, dtype=np.int64)
            elif all(isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_)) for i in items):
                lo, hi = min(items), max(items)
                if lo < -(2**63) or hi >= 2**64 or (lo < 0 and hi >= 2**63):
                    raise ValueError(f"{name} must hold {_ID_RANGE}, got ids from {lo} to {hi}")
                array = np.array(items, dtype=np.uint64 if hi >= 2**63 else np.int64)
            else:
                bad = next(i for i in items if not isinstance(i, numbers.Integral) or isinstance(i, (bool, np.bool_)))
                raise ValueError(f"{name} must hold integer ids, got an element {bad!r} of type {type(bad).__name__}")
        if array is None:
            raise ValueError(f"{name} must be a 1-D tensor, array or sequence of integer ids, got {type(ids).__name__}")
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer ids, got numpy dtype {array.dtype}")
        ids = torch.from_numpy(np.ascontiguousarray(array))
    _dense(name, ids)
    if ids.dim() != 1 or ids.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D tensor of length {length} ({length_name}), got shape {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    return ids


def _as_int64(ids: torch.Tensor) -> torch.Tensor:
    """Contiguous int64 ids with the same equalities, negation resolved: uint64 bit patterns
    reinterpreted (a bijection on [0, 2**64) when no id is negative), other integer types converted."""
    if ids.dtype == torch.uint64:
        ids = ids.contiguous().view(torch.int64)
    elif ids.dtype != torch.int64:
        ids = ids.to(torch.int64)
    return ids.resolve_neg().contiguous()


def _check_id_pair(query_ids, ref_ids, n: int, m: int, device):
    """The leave-one-out ids as contiguous int64 tensors on ``device`` (one tensor when one is given twice).

    Both lists map to int64 by one rule that keeps every equality between them: uint64
    ids are reinterpreted bit for bit, which is exact unless the other list holds negative
    ids while this one holds ids >= 2**63 (then no single 64-bit type holds both: an error)."""
    same = query_ids is ref_ids and n == m
    q = _id_tensor("query_ids", query_ids, n, "n, the number of queries")
    r = q if same else _id_tensor("ref_ids", ref_ids, m, "m, the number of reference points")
    if not same and (q.dtype == torch.uint64) != (r.dtype == torch.uint64):
        big, other = (("query_ids", q), ("ref_ids", r)) if q.dtype == torch.uint64 else (("ref_ids", r), ("query_ids", q))
        if bool((big[1].view(torch.int64) < 0).any()) and bool((other[1] < 0).any()):
            raise ValueError(f"{big[0]} holds ids >= 2**63 while {other[0]} holds negative ids: "
                             f"ids must be {_ID_RANGE}")
    q = _as_int64(_same_device("query_ids", q, device))
    r = q if same else _as_int64(_same_device("ref_ids", r, device))
    return q, r


def _bandwidth_tensor(h, k: int, like: torch.Tensor) -> torch.Tensor:
    """The bandwidth as a (k,) tensor on ``like``'s device and dtype, without lazy negation
    (keeps autograd). Shape and type checks, and the value of a plain number: a tensor's
    values are checked where the caller reads them."""
    if isinstance(h, np.ndarray) and h.dtype.kind in "iuf":
        h = torch.from_numpy(h)
    if isinstance(h, torch.Tensor):
        _dense("h", h)
        if h.dim() > 1 or (h.dim() == 1 and h.shape[0] not in (1, k)):
            raise ValueError(f"h must be a scalar or a tensor of shape ({k},), got shape {tuple(h.shape)}")
        if h.is_complex() or h.dtype == torch.bool:
            raise ValueError(f"h must be a positive number or a real tensor, got dtype {h.dtype}")
        h_t = h if h.dtype == like.dtype else h.to(dtype=like.dtype)
        h_t = _same_device("h", h_t, like.device).resolve_neg()
    elif isinstance(h, (bool, np.bool_)) or not isinstance(h, numbers.Real):
        raise ValueError(f"h must be a positive number or tensor, got {h!r} of type {type(h).__name__}")
    else:
        try:
            value = float(h)
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"h must be finite and > 0, got {h!r}")
        h_t = torch.tensor(value, device=like.device, dtype=like.dtype)
    return h_t.expand(k) if h_t.dim() == 0 or h_t.shape[0] == 1 else h_t


def _check_count(name: str, value, minimum: int = 1) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__") or isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_seed(name: str, value) -> int:
    """A seed for :class:`torch.Generator`: an int in [0, 2**63)."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__") or isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
    value = operator.index(value)
    if not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
    return value


def _check_positive(name: str, value) -> float:
    """A finite real number > 0 (a Python or numpy number, or a one-element real tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_bandwidth(h_t: torch.Tensor) -> None:
    if not bool(torch.isfinite(h_t).all()) or not bool((h_t > 0).all()):
        raise ValueError(f"h must be finite and > 0, got {h_t.detach().cpu().tolist()}")


def _as_bandwidth(h, k: int, like: torch.Tensor) -> torch.Tensor:
    """The bandwidth as a (k,) tensor, checked to be finite and > 0."""
    h_t = _bandwidth_tensor(h, k, like)
    _check_bandwidth(h_t)
    return h_t


# --------------------------------------------------------------------------- leave-one-out


def _chunks(n: int, chunk_size: Optional[int]):
    step = n if not chunk_size else chunk_size
    for start in range(0, n, max(step, 1)):
        yield start, min(start + step, n)


def _no_reference_left(bad: int) -> ValueError:
    return ValueError(
        f"query {bad} has no reference point left after leave-one-out exclusion: "
        "every ref_ids entry equals its query_ids entry (the reference set needs another point)"
    )


def _loo_mask(query_ids, ref_ids, lo, hi, check: bool = True):
    """Boolean (hi-lo, m) mask of left-out pairs, or None; with ``check`` raises if a query loses
    every point (not under torch.func transforms, where that data-dependent test is impossible)."""
    if query_ids is None:
        return None
    mask = query_ids[lo:hi].unsqueeze(1) == ref_ids.unsqueeze(0)
    if not check:
        return mask
    left = mask.shape[1] - mask.sum(dim=1)
    if bool((left == 0).any()):
        raise _no_reference_left(int(torch.nonzero(left == 0)[0, 0]) + lo)
    return mask


#: Up to this many (query, reference) pairs the left-out pairs are kept as a dense (n, m)
#: additive mask (0 or a huge negative number): one comparison, no sorting and no device synchronisation,
#: and it is added to the log-weights for free. Above it they are found by binary search.
_DENSE_MASK_MAX = 1 << 18


class _LeaveOut:
    """The left-out pairs ``query_ids[i] == ref_ids[j]`` of one call.

    * no ids: nothing is left out;
    * at most ``_DENSE_MASK_MAX`` pairs: a dense (n, m) boolean mask, also kept as an
      additive bias of 0 / a huge negative number (duplicated ids need nothing special);
    * more pairs, unique reference ids (the usual case: calc points are distinct rows):
      each query matches at most one reference point, found by binary search in
      O((n + m) log m) instead of an (n, m) comparison, once per call;
    * more pairs, duplicated reference ids: the comparison, chunk by chunk.
    """

    def __init__(self, query_ids, ref_ids):
        self.query_ids, self.ref_ids = query_ids, ref_ids
        self.mask = self._bias = self.rows = self._zero = self.nobody = None
        if query_ids is None:
            return
        n, m = query_ids.shape[0], ref_ids.shape[0]
        if n * m <= _DENSE_MASK_MAX:
            self.mask = query_ids.unsqueeze(1) == ref_ids.unsqueeze(0)
            self.nobody = self.mask.all(1).any()  # does some query lose every reference point
            return
        sorted_ids, order = torch.sort(ref_ids)
        if not bool((sorted_ids[1:] != sorted_ids[:-1]).all()):
            return  # duplicated reference ids: compare chunk by chunk
        pos = torch.searchsorted(sorted_ids, query_ids).clamp_(max=m - 1)
        rows = torch.nonzero(sorted_ids[pos] == query_ids).squeeze(1)
        if m == 1 and rows.numel() > 0:
            raise _no_reference_left(int(rows[0]))
        self.rows, self.cols = rows, order[pos[rows]]  # the left-out pairs, rows ascending
        self._blocks = {}

    def bias(self, lo, hi, like) -> torch.Tensor:
        """Additive (hi-lo, m) mask, 0 where kept and :func:`_excluded` where left out (dense case),
        else a 0-d zero."""
        if self.mask is None:
            if self._zero is None or self._zero.dtype != like.dtype:
                self._zero = like.new_zeros(())
            return self._zero
        if self._bias is None or self._bias.dtype != like.dtype:
            self._bias = torch.zeros(self.mask.shape, dtype=like.dtype, device=like.device).masked_fill_(
                self.mask, _excluded(like.dtype))
        return self._bias[lo:hi]

    def fill_(self, t, lo, hi, step, value, dense_done: bool = False):
        """Set the left-out entries of ``t`` (k, hi-lo, m) to ``value``; its rows are the queries
        lo..hi-1, one of the blocks ``_chunks(n, step)``."""
        if self.query_ids is None or (dense_done and self.mask is not None):
            return t
        if self.mask is not None:
            return t.masked_fill_(self.mask[lo:hi], value)
        if self.rows is None:
            return t.masked_fill_(_loo_mask(self.query_ids, self.ref_ids, lo, hi), value)
        if step not in self._blocks:  # the pairs of each block as flat positions in it, found once
            block = torch.div(self.rows, step, rounding_mode="floor")
            counts = torch.bincount(block, minlength=-(-self.query_ids.shape[0] // step)).tolist()
            flat = (self.rows - block * step) * t.shape[2] + self.cols
            self._blocks[step] = torch.split(flat, counts)
        index = self._blocks[step][lo // step]
        if index.numel():
            t.view(t.shape[0], -1).index_fill_(1, index, value)
        return t

    def dense(self) -> Optional[torch.Tensor]:
        """The (n, m) boolean mask of left-out pairs (None without ids)."""
        if self.query_ids is None:
            return None
        if self.mask is not None:
            return self.mask
        return self.query_ids.unsqueeze(1) == self.ref_ids.unsqueeze(0)

    def first_empty(self, chunk: int = 1024) -> Optional[int]:
        """The first query that loses every reference point, or None."""
        if self.query_ids is None:
            return None
        for lo in range(0, self.query_ids.shape[0], chunk):
            full = (self.query_ids[lo:lo + chunk].unsqueeze(1) == self.ref_ids.unsqueeze(0)).all(1)
            if bool(full.any()):
                return int(torch.nonzero(full)[0, 0]) + lo
        return None


# --------------------------------------------------------------------------- gaussian fast path


def _rowdot(r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_j w_{ij} r_j` for w (k, n, m), r (k, m) -> (k, n).

    Written as a row vector times the transposed weights: on CPU this takes BLAS's
    matrix-vector path, several times faster than ``w @ r`` or a broadcast multiply.
    """
    return torch.bmm(r.unsqueeze(1), w.transpose(1, 2)).squeeze(1)


def _coldot(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_i v_i w_{ij}` for w (k, n, m), v (k, n) -> (k, m)."""
    return torch.bmm(v.unsqueeze(1), w).squeeze(1)


_LOG_SQRT2 = 0.5 * math.log(2.0)


def _excluded(dtype) -> float:
    """Log-weight of a left-out pair: weight exactly 0 after the softmax, yet finite, so that
    products with it (the log-weights times the weights, for dh) are 0 and not 0 * inf."""
    return torch.finfo(dtype).min / 4


def _buffer(flat: Optional[torch.Tensor], shape, like: torch.Tensor) -> torch.Tensor:
    if flat is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return flat[:math.prod(shape)].view(shape)


def _gaussian_weights(a, b, inv, lo, hi, step, leave_out, gaps=None, logw=None, weights=None,
                      keep_gaps: bool = False, keep_logw: bool = False):
    """Softmax weights :math:`w_{ij} \\propto e^{-d_{ij}^2}`, :math:`d_{ij} = (b_j - a_i)/(\\sqrt2 h)`, queries lo..hi-1.

    ``a`` (k, n), ``b`` (k, m) are raw indices and ``inv`` (k, 1, 1) is
    :math:`1/(\\sqrt 2 h)`. The difference :math:`b_j - a_i` is formed first and only
    then scaled, so it is exact however far the indices are from zero or from each other
    (expanding the square, :math:`a^2 - 2ab + b^2`, would lose the float32 accuracy of
    every nearby pair as soon as the indices are large); the softmax subtracts the row
    maximum, so a query far from every reference point gets weight 1 on the nearest one
    instead of 0/0.

    Returns ``(w, d, logw)``, (k, hi-lo, m) each: ``d`` the scaled gaps if ``keep_gaps``,
    ``logw`` the log-weights :math:`-d^2` if ``keep_logw`` (else None; what is not kept is
    overwritten in place). ``gaps``, ``logw`` and ``weights`` are flat buffers to write
    into (None: fresh memory). A few large buffers are recycled by the allocator from call
    to call; many block-sized ones are handed back to the system and cost fresh page
    faults every time.
    """
    shape = (a.shape[0], hi - lo, b.shape[1])
    d = _buffer(gaps, shape, a)
    torch.sub(b.unsqueeze(1), a[:, lo:hi].unsqueeze(2), out=d)
    d.mul_(inv)
    lw = _buffer(logw if keep_logw else weights, shape, a) if keep_gaps else d
    torch.addcmul(leave_out.bias(lo, hi, d), d, d, value=-1.0, out=lw)
    leave_out.fill_(lw, lo, hi, step, _excluded(lw.dtype), dense_done=True)
    w = _buffer(weights, shape, a) if keep_logw else lw
    torch.softmax(lw, dim=-1, out=w)
    return w, (d if keep_gaps else None), (lw if keep_logw else None)


def _tame(a, b, y, log_h, inv, same: bool, leave_out) -> torch.Tensor:
    """0-d bool tensor: every value finite, h > 0, no query without a reference point, and
    the scaled index range :math:`R = (\\max - \\min)/(\\sqrt2 h)` small enough
    (:math:`\\sum_k R_k < 2^{16}` in float32, :math:`2^{128}` in float64) that no square, weight or
    gradient term of the fast path can overflow. One number carries it all (NaN or inf
    in any input, or a bad h, makes it NaN), so one device synchronisation reads it."""
    lo, hi = torch.aminmax(b if same else torch.cat((a, b), 1), dim=1)
    limit = 2.0 ** (math.frexp(torch.finfo(a.dtype).max)[1] // 8)  # 2^16 in float32
    yf = y.view(-1)
    # the sum over units bounds the largest R (stricter by at most a factor k)
    value = torch.dot(hi - lo, inv) * (1.0 / limit) + (log_h.sum() + torch.dot(yf, yf)) * 0.0
    nobody = leave_out.nobody
    return value < 1.0 if nobody is None else (value + nobody) < 1.0


def _diagnose(a, b, y, h, leave_out) -> None:
    """Raise the ValueError that explains why ``_tame`` failed; return if the input is valid."""
    for name, t in (("z", a), ("z_ref", b), ("y_ref", y)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    _check_bandwidth(h)
    bad = leave_out.first_empty()
    if bad is not None:
        raise _no_reference_left(bad)


# --------------------------------------------------------------------------- overflow-safe path

#: chunk of queries of the overflow-safe path (it works on float64 (k, chunk, m) tensors)
_SAFE_CHUNK = 256


class _SafeScales:
    """float64 copies of the inputs scaled by powers of two (exact): per unit, the indices
    into [-1, 1] (with h along) and the targets into [-1, 1]."""

    def __init__(self, a, b, y, h):
        a, b, y, h = (t.detach().double() for t in (a, b, y, h))
        big = torch.maximum(a.abs().amax(1), b.abs().amax(1))
        self.p = torch.frexp(big).exponent.clamp(-1000, 1000).unsqueeze(1)  # (k, 1)
        self.q = torch.frexp(y.abs().amax(1)).exponent.clamp(-1000, 1000).unsqueeze(1)
        self.a, self.b = torch.ldexp(a, -self.p), torch.ldexp(b, -self.p)
        self.y = torch.ldexp(y, -self.q)
        h = torch.ldexp(h.unsqueeze(1), -self.p)
        fmax = torch.finfo(torch.float64).max
        # 1/(sqrt2 h); capped: h can underflow to 0 once scaled (then every finite gap is "far")
        self.inv = (1.0 / (math.sqrt(2.0) * h)).clamp(max=fmax).unsqueeze(2)  # (k, 1, 1)

    def weights(self, lo, hi, step, leave_out):
        """(w, delta): softmax weights from exact log-weight differences, and the gaps b_j - a_i."""
        fmax = torch.finfo(torch.float64).max
        delta = self.b.unsqueeze(1) - self.a[:, lo:hi].unsqueeze(2)  # |delta| <= 2
        dist = leave_out.fill_(delta.abs(), lo, hi, step, float("inf"))
        near = dist.amin(-1, keepdim=True)  # the nearest kept reference point
        # -(d^2 - d_near^2) / (2 h^2) as a product of two capped non-negative factors: 0 at the
        # nearest point (so the softmax never sees a row of -inf), -inf where it overflows.
        u = ((dist - near) * self.inv).clamp_(max=fmax)
        v = ((dist + near) * self.inv).clamp_(max=fmax)
        return torch.softmax(-(u * v), dim=-1), delta


def _safe_forward(a, b, y, h, leave_out, chunk_size):
    s = _SafeScales(a, b, y, h)
    out = torch.empty(a.shape, dtype=torch.float64, device=a.device)
    step = min(chunk_size or _SAFE_CHUNK, _SAFE_CHUNK)
    for lo, hi in _chunks(a.shape[1], step):
        w, _ = s.weights(lo, hi, step, leave_out)
        out[:, lo:hi] = _rowdot(s.y, w)
    return torch.ldexp(out, s.q).to(a.dtype)


def _safe_backward(a, b, y, h, out, grad_out, leave_out, chunk_size, needs):
    """First-order gradients of the overflow-safe path, in float64, never 0 * inf."""
    s = _SafeScales(a, b, y, h)
    g = grad_out.double()
    o = torch.ldexp(out.double(), -s.q)  # the forward's output
    k, n = a.shape
    s_a = torch.zeros((k, n), dtype=torch.float64, device=a.device)
    s_b = torch.zeros(b.shape, dtype=torch.float64, device=a.device)
    s_h = torch.zeros((k,), dtype=torch.float64, device=a.device)
    g_y = torch.zeros(b.shape, dtype=torch.float64, device=a.device)
    step = min(chunk_size or _SAFE_CHUNK, _SAFE_CHUNK)
    for lo, hi in _chunks(n, step):
        w, delta = s.weights(lo, hi, step, leave_out)
        gc = g[:, lo:hi].unsqueeze(2)
        if needs[2]:
            g_y += (gc * w).sum(1)
        x = gc * w * (s.y.unsqueeze(1) - o[:, lo:hi].unsqueeze(2)) * delta  # finite: |delta| <= 2
        s_a[:, lo:hi] = x.sum(2)
        s_b += x.sum(1)
        s_h += (x * delta).sum((1, 2))
    inv = s.inv.squeeze(2)  # (k, 1)

    def scaled(t, powers):  # t * 2^q * inv^powers * 2^-p, one finite factor at a time (0 stays 0)
        t = torch.ldexp(t, s.q)
        for _ in range(powers):
            t = t * inv
        return torch.ldexp(t, -s.p)

    # d(-delta^2 inv^2)/da = 2 delta inv^2, .../db = -2 delta inv^2, .../dh = 2 sqrt2 delta^2 inv^3
    grad_a = (2 * scaled(s_a, 2)).to(a.dtype) if needs[0] else None
    grad_b = (-2 * scaled(s_b, 2)).to(b.dtype) if needs[1] else None
    grad_h = (2 * math.sqrt(2.0) * scaled(s_h.unsqueeze(1), 3)).squeeze(1).to(h.dtype) if needs[3] else None
    grad_y = g_y.to(y.dtype) if needs[2] else None
    return grad_a, grad_b, grad_y, grad_h


# --------------------------------------------------------------------------- differentiable reference


def _nw_dense(a, b, y, h, mask):
    """The Gaussian estimator in plain differentiable operations, (k, n) layout.

    Used where the hand-written backward cannot serve: double backward
    (``create_graph=True``) and :mod:`torch.func` transforms. Memory O(n·m·k).
    """
    inv = (1.0 / (math.sqrt(2.0) * h)).reshape(-1, 1, 1)
    d = (b.unsqueeze(1) - a.unsqueeze(2)) * inv
    logw = -d.square()
    if mask is not None:
        logw = logw.masked_fill(mask, float("-inf"))
    w = torch.softmax(logw, dim=-1)
    return torch.matmul(w, y.unsqueeze(2)).squeeze(2)


#: the unchunked path works through the queries in blocks of about this many (query,
#: reference, unit) entries (2 MiB in float32), so that the passes over one block of weights
#: run in cache instead of streaming an (n, m, k) tensor through memory several times
_BLOCK = 1 << 19


class _GaussianNW(torch.autograd.Function):
    """Gaussian Nadaraya–Watson with a hand-written backward.

    Inputs are in (k, n) / (k, m) layout. With scaled gaps
    :math:`d_{ij} = (b_j - a_i)/(\\sqrt 2 h)`, weights :math:`w_{ij} \\propto e^{-d_{ij}^2}`,
    output :math:`o_i = \\sum_j w_{ij} y_j`, upstream gradient :math:`g_i` and
    :math:`P_{ij} = w_{ij} d_{ij}`:

    * :math:`\\partial/\\partial a_i = \\frac{2}{\\sqrt2 h}\\, g_i \\sum_j P_{ij}(y_j - o_i)`
      (a row sum: computed in the forward, it does not depend on g),
    * :math:`\\partial/\\partial b_j = -\\frac{2}{\\sqrt2 h} \\sum_i g_i P_{ij} (y_j - o_i)`
      (two column sums of P, the only pass the backward makes),
    * :math:`\\partial/\\partial y_j = \\sum_i g_i w_{ij}`,
    * :math:`\\partial/\\partial h = \\frac2h \\sum_i g_i \\sum_j w_{ij} d_{ij}^2 (y_j - o_i)`
      (a row sum as well, from the log-weights :math:`-d_{ij}^2` before the softmax).

    P and :math:`w d^2` are formed from the exact gaps, so no large terms cancel, and y is
    centred. The forward works through the queries in blocks (``_BLOCK`` entries, or
    ``chunk_size`` queries): each block's gaps, weights, outputs and row sums are computed
    while the block is in cache. Without chunking the blocks of P (and of w when y needs
    a gradient) are kept for the backward; with chunking they are recomputed chunk by
    chunk, so memory stays O(chunk·m·k). No autograd graph is built.

    Inputs outside the range where this is overflow-free (scaled index ranges summing to
    more than :math:`2^{16}` in float32, huge targets) go through an overflow-safe float64
    path; with ``create_graph=True`` the backward is :func:`_nw_dense` differentiated by
    autograd.
    """

    @staticmethod
    def forward(ctx, a, b, y, h, query_ids, ref_ids, chunk_size, need_ab, need_y, same):
        # a (k, n), b (k, m), y (k, m), h (k,)
        ctx.ids, ctx.fused, ctx.leave_out = (query_ids, ref_ids), False, None
        if _fused.applies(a):
            out = _GaussianNW._fused_forward(ctx, a, b, y, h, need_ab, same)
            if out is not None:
                return out
            # else: outside the fused kernel's range (non-finite values, h <= 0, overflow risk);
            # the eager path below explains the error or takes its overflow-safe path
        leave_out = _LeaveOut(query_ids, ref_ids)
        k, n = a.shape
        m = b.shape[1]
        inv = (h * math.sqrt(2.0)).reciprocal_()  # 1/(sqrt2 h)
        ctx.safe = not bool(_tame(a, b, y, h.log(), inv, same, leave_out))
        ctx.leave_out, ctx.chunk_size, ctx.same, ctx.blocks = leave_out, chunk_size, same, None
        if ctx.safe:
            _diagnose(a, b, y, h, leave_out)  # raises on invalid input
            out = _safe_forward(a, b, y, h, leave_out, chunk_size)
            ctx.save_for_backward(a, b, y, h, out, None)
            return out
        inv = inv.view(-1, 1, 1)
        keep = chunk_size is None and (need_ab or need_y)
        step = min(chunk_size or max(1, _BLOCK // (m * k)), n)
        y_centre = y.mean(1, keepdim=True)  # only differences y_j - o_i enter the gradients
        yc = y - y_centre
        yc1 = torch.stack((yc, torch.ones_like(yc)), 1) if need_ab else None  # (k, 2, m)
        if step >= n:  # one block
            oc, rows, blocks = _GaussianNW._one_block(a, b, yc, yc1, inv, leave_out, need_ab, need_y)
            ctx.blocks = blocks if keep else None
            ctx.inv, ctx.yc = inv, yc
            ctx.save_for_backward(a, b, y, h, oc, rows)
            return oc + y_centre
        oc = a.new_empty((k, n))
        rows = a.new_empty((2, k, n)) if need_ab else None  # the rows of dh and of da, see _block_rows
        # Blocks the backward needs are consecutive slices of one buffer (P, and w when y
        # needs a gradient); the others live in block-sized buffers reused block to block.
        size = k * step * m
        kept_p = a.new_empty(k * n * m) if keep and need_ab else None
        kept_w = a.new_empty(k * n * m) if keep and need_y else None
        work_d = a.new_empty(size) if kept_p is None and (need_ab or kept_w is None) else None
        work_l = a.new_empty(size) if need_ab else None
        work_w = a.new_empty(size) if need_ab and kept_w is None else None
        blocks = []
        for lo, hi in _chunks(n, step):
            span = slice(k * lo * m, k * hi * m)
            if need_ab:
                w, d, lw = _gaussian_weights(
                    a, b, inv, lo, hi, step, leave_out, work_d if kept_p is None else kept_p[span], work_l,
                    work_w if kept_w is None else kept_w[span], keep_gaps=True, keep_logw=True)
            else:  # the weights overwrite the gaps
                w, d, lw = _gaussian_weights(a, b, inv, lo, hi, step, leave_out,
                                             work_d if kept_w is None else kept_w[span])
            o = _rowdot(yc, w)
            oc[:, lo:hi] = o
            p = None
            if need_ab:
                p = d.mul_(w)
                rows[0, :, lo:hi] = _GaussianNW._block_rows(yc1, o, lw.mul_(w)).neg_()
                rows[1, :, lo:hi] = _GaussianNW._block_rows(yc1, o, p)
            if keep:
                blocks.append((lo, hi, p, w if need_y else None))
        ctx.blocks = blocks if keep else None
        ctx.inv, ctx.yc = inv, yc
        ctx.save_for_backward(a, b, y, h, oc, rows)
        return oc + y_centre

    @staticmethod
    def _fused_forward(ctx, a, b, y, h, need_ab, same) -> Optional[torch.Tensor]:
        """The forward in the fused CPU kernel (:mod:`kaf._fused`): the output, or None if the
        input is outside the kernel's range (then nothing is computed)."""
        leave_out = _fused.excluded(*ctx.ids)  # ids: contiguous int64 (_nw_inputs)
        status, bad, out, oc, lnorm, dmean, ycen = _fused.forward(a, b, y, h, leave_out, same, need_ab)
        if status == 2:
            raise _no_reference_left(bad)
        if status != 0:
            return None
        ctx.fused, ctx.safe, ctx.same, ctx.fused_leave_out = True, False, same, leave_out
        ctx.save_for_backward(a, b, y, h, oc, None, lnorm, dmean, ycen)
        return out

    @staticmethod
    def _block_rows(yc1, o, x):
        """:math:`\\sum_j x_{ij}(y_j - o_i)`, (k, c), for x = P = w d (the rows of da) or
        x = w * logw = -w d^2 (minus those of dh); they do not depend on the upstream gradient."""
        r = torch.bmm(yc1, x.transpose(1, 2))  # sum_j x_ij y_j, sum_j x_ij
        return r[:, 0] - o * r[:, 1]

    @staticmethod
    def _one_block(a, b, yc, yc1, inv, leave_out, need_ab, need_y):
        """The forward in one block, with as few operations as possible (small training batches):
        the gaps and the log-weights share one buffer, so P = w d and w * logw come from one
        multiplication and their row sums from one matrix product. Returns (oc, rows, blocks)."""
        k, n = a.shape
        m = b.shape[1]
        if not need_ab:
            w = _gaussian_weights(a, b, inv, 0, n, n, leave_out)[0]
            return _rowdot(yc, w), None, [(0, n, None, w if need_y else None)]
        pair = a.new_empty((2, k, n, m))  # two buffers only: the gaps, and the log-weights -> weights
        d, w = pair[0], pair[1]
        torch.sub(b.unsqueeze(1), a.unsqueeze(2), out=d)
        d.mul_(inv)
        torch.addcmul(leave_out.bias(0, n, d), d, d, value=-1.0, out=w)
        leave_out.fill_(w, 0, n, n, _excluded(w.dtype), dense_done=True)
        torch.softmax(w, dim=-1, out=w)
        oc = _rowdot(yc, w)
        kept_w = w.clone() if need_y else None
        w.mul_(d)  # P = w d
        d.mul_(w)  # w d^2
        yc1 = yc1.expand(2, k, 2, m).reshape(2 * k, 2, m)
        r = torch.bmm(yc1, pair.view(2 * k, n, m).transpose(1, 2)).view(2, k, 2, n)
        rows = r[:, :, 0] - oc * r[:, :, 1]  # (2, k, n): the rows of dh and of da
        return oc, rows, [(0, n, pair[1], kept_w)]

    @staticmethod
    def backward(ctx, grad_out):
        a, b, y, h, oc, rows = ctx.saved_tensors[:6]
        needs = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _GaussianNW._differentiable_backward(ctx, a, b, y, h, grad_out) + (None,) * 6
        if ctx.fused:
            lnorm, dmean, ycen = ctx.saved_tensors[6:]
            grads = _fused.backward(a, b, ycen, h, ctx.fused_leave_out, oc, lnorm, dmean,
                                    grad_out.contiguous(), needs)
            return grads + (None,) * 6
        if ctx.safe:
            grads = _safe_backward(a, b, y, h, oc, grad_out, ctx.leave_out, ctx.chunk_size, needs)
            return grads + (None,) * 6
        n = a.shape[1]
        need_ab = rows is not None
        inv, g = ctx.inv, grad_out
        grad_y = torch.zeros_like(y) if needs[2] else None
        cols = None
        blocks = ctx.blocks
        if blocks is None:  # chunked: recompute the weights chunk by chunk
            size = a.shape[0] * min(ctx.chunk_size, n) * b.shape[1]
            work_d, work_w = a.new_empty(size), (a.new_empty(size) if need_ab else None)
            blocks = (
                (lo, hi) + _gaussian_weights(a, b, inv, lo, hi, ctx.chunk_size, ctx.leave_out, work_d, None, work_w,
                                             keep_gaps=need_ab)[1::-1]
                for lo, hi in _chunks(n, ctx.chunk_size)
            )
            fresh = True
        else:
            fresh = False
        if need_ab and needs[0] | needs[1]:
            gog = torch.stack((g, g * oc), 1)  # (k, 2, n): g_i and g_i o_i
        for lo, hi, p, w in blocks:
            if needs[2]:
                grad_y += _coldot(g[:, lo:hi], w)
            if need_ab and needs[0] | needs[1]:
                if fresh:
                    p = p.mul_(w)  # the recomputed gaps become P
                c = torch.bmm(gog[:, :, lo:hi], p)  # (k, 2, m): sum_i g_i P_ij, sum_i g_i o_i P_ij
                cols = c if cols is None else cols.add_(c)
        grad_a = grad_b = grad_h = None
        if need_ab:
            two_inv = 2 * inv.view(-1, 1)
            if needs[0]:
                grad_a = two_inv * g * rows[1]
            if needs[1]:
                grad_b = two_inv * (cols[:, 1] - ctx.yc * cols[:, 0])
            if needs[3]:  # rows[0] = sum_j w d^2 (y_j - o_i)
                grad_h = torch.linalg.vecdot(g, rows[0]).mul_(2).div_(h)
        return grad_a, grad_b, grad_y, grad_h, None, None, None, None, None, None

    @staticmethod
    def _differentiable_backward(ctx, a, b, y, h, grad_out):
        leave_out = ctx.leave_out if ctx.leave_out is not None else _LeaveOut(*ctx.ids)
        return _dense_gradients(a, b, y, h, leave_out.dense(), ctx.same, ctx.safe, grad_out, ctx.needs_input_grad)


def _dense_gradients(a, b, y, h, mask, same: bool, safe: bool, grad_out, needs) -> tuple:
    """Gradients ``(a, b, y, h)`` of the Gaussian estimator as a graph of plain operations
    (:func:`_nw_dense`), so that they can be differentiated again: the backward of both the
    torch-operations path and the fused operator with ``create_graph=True``."""
    if safe:
        raise ValueError(
            "double backward through nadaraya_watson is not supported for these inputs: their scaled "
            "index range (max - min)/h, or the targets, are too large for the plain formula without "
            "overflow (first-order gradients are fine)"
        )
    roles = [(a, needs[0] or (same and needs[1])), (b, needs[1] and not same), (y, needs[2]), (h, needs[3])]
    wanted = [t for t, need in roles if need]
    with torch.enable_grad():
        out = _nw_dense(a, a if same else b, y, h, mask)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = tuple(next(grads) if need else None for _, need in roles)
    if same:  # a and b are one tensor: its whole gradient is returned once
        result = (result[0], None) + result[2:]
    return result


# --------------------------------------------------------------------------- compact kernels


def _compact_kernel(name: str, u: torch.Tensor) -> torch.Tensor:
    inside = u.abs() <= 1
    if name == "epanechnikov":
        k = 0.75 * (1 - u.square())
    elif name == "triangular":
        k = 1 - u.abs()
    else:  # uniform
        k = u * 0 + 0.5  # zero gradient, but keeps the graph connected to h and the indices
    return torch.where(inside, k, torch.zeros_like(u))


def _compact_nw(z, z_ref, y_ref, h, kernel, query_ids, ref_ids, chunk_size, check=True):
    # (n, m, k) layout through plain autograd: compact kernels are the comparison
    # case, not the hot path.
    outs = []
    for lo, hi in _chunks(z.shape[0], chunk_size):
        d = z_ref.unsqueeze(0) - z[lo:hi].unsqueeze(1)  # (c, m, k)
        K = _compact_kernel(kernel, d / h)
        mask = _loo_mask(query_ids, ref_ids, lo, hi, check)
        if mask is not None:
            K = K.masked_fill(mask.unsqueeze(2), 0.0)
        den = K.sum(1)
        num = (K * y_ref.unsqueeze(0)).sum(1)
        # Empty window: fall back to the nearest (non-excluded) reference point's
        # target, the h -> 0 limit of the estimator, instead of 0/0.
        dist = d.detach().abs()
        if mask is not None:
            dist = dist.masked_fill(mask.unsqueeze(2), float("inf"))
        nearest = dist.argmin(dim=1)  # (c, k)
        y_near = torch.gather(y_ref, 0, nearest)
        empty = den <= 0
        outs.append(torch.where(empty, y_near, num / torch.where(empty, torch.ones_like(den), den)))
    return torch.cat(outs, 0)


# --------------------------------------------------------------------------- public API


def nadaraya_watson(
    z: torch.Tensor,
    z_ref: torch.Tensor,
    y_ref: torch.Tensor,
    h,
    *,
    kernel: str = "gaussian",
    query_ids: Optional[torch.Tensor] = None,
    ref_ids: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    r"""Nadaraya–Watson regression of ``y_ref`` on ``z_ref``, evaluated at ``z``, per output unit.

    .. math::

        \mathrm{out}_{ik} = \frac{\sum_{j:\,\mathrm{id}_j \ne \mathrm{id}_i}
            K\big((z^{\mathrm{ref}}_{jk} - z_{ik})/h_k\big)\, y^{\mathrm{ref}}_{jk}}
            {\sum_{j:\,\mathrm{id}_j \ne \mathrm{id}_i} K\big((z^{\mathrm{ref}}_{jk} - z_{ik})/h_k\big)}

    Each output unit ``k`` has its own one-dimensional estimator (the thesis's
    element-wise K-AF). Kernels (normalising constants cancel in the ratio):

    * ``"gaussian"``: :math:`K(u) = e^{-u^2/2}`, computed as a softmax over
      :math:`-u^2/2` (log space) from the exact differences :math:`z^{\mathrm{ref}}_j - z_i`,
      so a query far from every reference point gets the nearest point's target (ties
      averaged) instead of 0/0, and indices far from zero keep their float32 accuracy.
    * ``"epanechnikov"`` :math:`\tfrac34(1-u^2)`, ``"triangular"`` :math:`1-|u|`,
      ``"uniform"`` :math:`\tfrac12`, all on :math:`|u| \le 1`. When no reference point
      lies inside the window the answer is defined as the target of the nearest
      reference point (the :math:`h \to 0` limit of the estimator); that answer
      carries gradient to ``y_ref`` only.

    Leave-one-out is by sample identity: a pair with ``query_ids[i] == ref_ids[j]`` is
    excluded, so a batch may contain calc points, or be its own reference set
    (``z_ref`` is ``z``, ``ref_ids`` is ``query_ids``). Without ids nothing is excluded
    (inference on unseen data).

    **Where it runs.** On the CPU in float32 and float64 the Gaussian estimator runs in a
    fused kernel (:mod:`kaf._fused`, compiled with the system's C++ compiler at first use):
    each query's weights are formed, summed and used without ever being stored, and the
    backward recomputes them from the saved log-normalisers, so time is two passes over
    the :math:`n \cdot m \cdot k` pairs and memory :math:`O((n + m)k)` whatever
    ``chunk_size``. Elsewhere (CUDA, other dtypes, double backward, :mod:`torch.func`) and
    with ``KAF_NW_BACKEND=eager`` it runs as torch operations, with the same numbers to
    rounding; without a compiler it falls back to them with one warning. Under
    :func:`torch.compile` and :func:`torch.export.export` the kernel is the operator
    ``kaf::nw_forward`` (its gradient ``kaf::nw_backward``), so the graph holds it whole
    (``fullgraph=True`` works) and its value checks run when the graph runs.

    Any finite input gives a finite answer. The Gaussian path checks every value with a
    single device synchronisation; inputs at which its squares or gradient terms could
    overflow (scaled index ranges :math:`(\max - \min)/(\sqrt2 h)` summing to more than
    :math:`2^{16}` over the units in float32, targets beyond :math:`\sim 10^{19}`) are
    computed by a slower overflow-safe path in float64 (weights from the gaps to the
    nearest reference point). float16 and
    bfloat16 inputs are computed in float32.

    Args:
        z: query indices, shape :math:`(n, k)`.
        z_ref: reference indices, shape :math:`(m, k)`.
        y_ref: reference targets, shape :math:`(m, k)`.
        h: bandwidth, a positive real number (not a bool or a string) or a real tensor
            of shape ``()``, ``(1,)`` or ``(k,)`` (differentiable).
        kernel: one of :data:`KERNELS`.
        query_ids: integer ids of the queries, shape :math:`(n,)`: a tensor or numpy
            array of any integer dtype, or a sequence of ints (all in
            :math:`[-2^{63}, 2^{63})`, or all in :math:`[0, 2^{64})`); give together
            with ``ref_ids``.
        ref_ids: integer ids of the reference points, shape :math:`(m,)`, as ``query_ids``.
        chunk_size: evaluate at most this many queries at a time, bounding memory to
            :math:`O(\text{chunk\_size} \cdot m \cdot k)` (forward and backward). ``None``
            evaluates all queries at once (fastest; keeps two (n, m, k) tensors for the
            backward when a gradient is needed). The fused CPU kernel needs no chunks
            (its memory is :math:`O((n + m)k)`) and ignores it.

    Returns:
        Tensor of shape :math:`(n, k)`, on the device and dtype of ``z`` (a meta tensor
        when ``z`` is one: the shape without values).

    Raises:
        ValueError: wrong types, ranks or mismatched shapes, sparse tensors, non-finite
            values, ``h <= 0``, an empty reference set, ids of the wrong length or not
            integers, an unknown kernel, or a query left with no reference point after
            exclusion; each message names the argument.

    Differentiable with respect to ``z``, ``z_ref``, ``y_ref`` and ``h``. The Gaussian
    path has a hand-written first-order backward; with ``create_graph=True`` its
    backward is built from plain differentiable operations instead, so second
    derivatives (gradient penalties, ``gradgradcheck``) are exact. Under
    :mod:`torch.func` transforms (``grad``, ``vmap``, ``jacrev``, ``jacfwd``,
    ``hessian``) and forward-mode AD the Gaussian estimator runs as plain operations
    (memory :math:`O(n \cdot m \cdot k)`, ``chunk_size`` ignored); values cannot be
    checked there (data-dependent checks are impossible under ``vmap``), so bad values
    give NaN instead of an error.

    Examples::

        >>> z_ref = torch.linspace(-3, 3, 50).unsqueeze(1)
        >>> y_ref = torch.sigmoid(2 * z_ref)
        >>> out = nadaraya_watson(torch.zeros(1, 1), z_ref, y_ref, h=0.3)
        >>> round(out.item(), 3)
        0.5
    """
    z, z_ref, y_ref, h_t, query_ids, ref_ids = _nw_inputs(z, z_ref, y_ref, h, kernel, query_ids, ref_ids, chunk_size)
    n, k = z.shape
    same = z_ref is z
    # torch.func transforms, forward-mode AD and meta tensors (shapes without values) get the
    # plain differentiable formula: no value can be read there, so none is checked
    symbolic = (torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0
                or z.device.type == "meta")

    if kernel != "gaussian" or n == 0 or k == 0:
        if not symbolic:
            for name, t in (("z", z), ("z_ref", z_ref), ("y_ref", y_ref)):
                _check_tensor(name, t, 2)
            _check_bandwidth(h_t)
        if n == 0 or k == 0:
            return z.new_zeros((n, k)) + 0 * h_t.sum()
        return _compact_nw(z, z_ref, y_ref, h_t, kernel, query_ids, ref_ids, chunk_size, check=not symbolic)

    dtype = z.dtype
    if dtype in (torch.float16, torch.bfloat16):  # computed in float32
        z, y_ref, h_t = z.float(), y_ref.float(), h_t.float()
        z_ref = z if same else z_ref.float()
    a = z.t().contiguous()
    b = a if same else z_ref.t().contiguous()
    y = y_ref.t().contiguous()
    h_t = h_t.contiguous()
    if symbolic:
        mask = None if query_ids is None or ref_ids is None else query_ids.unsqueeze(1) == ref_ids.unsqueeze(0)
        out = _nw_dense(a, b, y, h_t, mask)
    else:
        grad = torch.is_grad_enabled()
        need_ab = grad and (z.requires_grad or z_ref.requires_grad or h_t.requires_grad)
        need_y = grad and y_ref.requires_grad
        if torch.compiler.is_compiling() and _fused_applies(a):
            # torch.compile and torch.export: the kernel as an operator the graph holds (its
            # data-dependent checks run inside it). Eager calls reach the same kernel through
            # _GaussianNW's ctypes call, which costs less (benchmarks/bench_nw_dispatch.py).
            out = _fused.nw_forward(a, b, y, h_t, query_ids, ref_ids, same, need_ab)[0]
        else:
            out = _GaussianNW.apply(a, b, y, h_t, query_ids, ref_ids, chunk_size, need_ab, need_y, same)
    out = out.t()
    return out if out.dtype == dtype else out.to(dtype)


#: whether the fused kernel computes a call (:func:`kaf._fused.applies`); torch.compile calls it
#: while tracing and keeps its answer in the compiled graph instead of tracing into its build,
#: lock and environment (so a compiled function keeps the backend it was compiled with)
def _fused_applies(a: torch.Tensor) -> bool:
    return _fused.applies(a)


# torch.compiler.assume_constant_result(fn) does no more than set this flag on fn, but calling it
# imports torch._dynamo, which would add over a second to every `import kaf`; tests/test_op.py
# checks that the decorator still sets exactly this flag, and compiles a call through it.
_fused_applies._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _nw_inputs(z, z_ref, y_ref, h, kernel, query_ids, ref_ids, chunk_size):
    """The one normalisation in front of every path of :func:`nadaraya_watson` (fused kernel,
    torch operations, plain formula): each argument's type, layout, rank, shape, dtype and
    device checked, naming the argument; lazy negation resolved (the kernel reads raw memory,
    and a view such as ``x.conj().imag`` shows -x over the memory of x; the conjugate bit
    exists only on complex tensors, which are refused); the bandwidth a (k,) tensor of z's
    dtype; ids contiguous int64 on z's device. Values are checked later, where each path
    reads them (one synchronisation). ``z_ref is z`` stays true when it was."""
    same = z_ref is z
    z = _check_tensor("z", z, 2, finite=False).resolve_neg()
    z_ref = z if same else _check_tensor("z_ref", z_ref, 2, finite=False).resolve_neg()
    y_ref = _check_tensor("y_ref", y_ref, 2, finite=False).resolve_neg()
    n, k = z.shape
    m = z_ref.shape[0]
    if m == 0:
        raise ValueError("z_ref must hold at least one reference point, got an empty reference set")
    if z_ref.shape[1] != k:
        raise ValueError(f"z_ref must have shape (m, {k}) to match z's {k} output units, got {tuple(z_ref.shape)}")
    if y_ref.shape != z_ref.shape:
        raise ValueError(f"y_ref must have the shape of z_ref {tuple(z_ref.shape)}, got {tuple(y_ref.shape)}")
    if z_ref.dtype != z.dtype or y_ref.dtype != z.dtype:
        raise ValueError(f"z, z_ref and y_ref must share one dtype, got {z.dtype}, {z_ref.dtype}, {y_ref.dtype}")
    if z_ref.device != z.device or y_ref.device != z.device:
        raise ValueError(f"z, z_ref and y_ref must be on one device, got {z.device}, {z_ref.device}, {y_ref.device}")
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if (query_ids is None) != (ref_ids is None):
        raise ValueError("query_ids and ref_ids must be given together (leave-one-out needs both), got only one")
    if query_ids is not None:
        query_ids, ref_ids = _check_id_pair(query_ids, ref_ids, n, m, z.device)
    return z, z_ref, y_ref, _bandwidth_tensor(h, k, z), query_ids, ref_ids


# --------------------------------------------------------------------------- bandwidths


def _as_column(name: str, x, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=torch.get_default_dtype() if like is None else like.dtype)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a tensor or a sequence of numbers, got {type(x).__name__}") from None
    if x.is_complex() or (like is None and not x.is_floating_point()):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 1:
        x = x.unsqueeze(1)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 1-D (n,) or 2-D (n, k), got shape {tuple(x.shape)}")
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def rule_of_thumb_bandwidth(z: torch.Tensor) -> float:
    r"""Silverman's rule of thumb :math:`h_0 = 1.06\,\hat\sigma_z\, n^{-1/5}` for a 1-D index.

    ``z`` of shape (n,) or (n, k) (the spread is averaged over the k columns). Returns a
    Python float; a constant index (zero spread) gives 1.0, where any bandwidth gives the
    same (mean) estimate.
    """
    z = _as_column("z", z)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"z must hold at least 2 points to estimate a spread, got {n}")
    sd = float(z.detach().std(dim=0).mean())
    return 1.06 * sd * n ** (-0.2) if sd > 0 else 1.0


#: Each kernel as a probability density on u (the constants that cancel in the
#: Nadaraya–Watson ratio, but not in a density estimate).
_DENSITY_CONSTANT = {"gaussian": 1 / math.sqrt(2 * math.pi), "epanechnikov": 1.0, "triangular": 1.0, "uniform": 1.0}


def kernel_density(z: torch.Tensor, z_ref: torch.Tensor, h, *, kernel: str = "gaussian") -> torch.Tensor:
    r"""Kernel density estimate of a 1-D index, the denominator of Nadaraya–Watson:

    .. math::

        \hat p(z) = \frac{1}{m h} \sum_{j=1}^m K\!\left(\frac{z - z^{\mathrm{ref}}_j}{h}\right)

    with :math:`K` the kernel as a density (:math:`\varphi(u) = e^{-u^2/2}/\sqrt{2\pi}`
    for ``"gaussian"``; the compact kernels of :data:`KERNELS` integrate to one as they
    stand).

    Args:
        z: where to evaluate, shape (n,).
        z_ref: the sample, shape (m,), m >= 1.
        h: bandwidth, a positive number.
        kernel: one of :data:`KERNELS`.

    Returns:
        Tensor of shape (n,), on the device and dtype of ``z``.

    Examples::

        >>> p = kernel_density(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 1.0)
        >>> round(p.item(), 4)  # the standard normal density at 0
        0.3989
    """
    z = _check_tensor("z", z, 1)
    z_ref = _check_tensor("z_ref", z_ref, 1)
    if z_ref.shape[0] == 0:
        raise ValueError("z_ref must hold at least one point")
    if z_ref.dtype != z.dtype or z_ref.device != z.device:
        raise ValueError(f"z and z_ref must share dtype and device, got {z.dtype}/{z.device}, {z_ref.dtype}/{z_ref.device}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    h_t = _as_bandwidth(h, 1, z)[0]
    u = (z.unsqueeze(1) - z_ref.unsqueeze(0)) / h_t
    k = torch.exp(-0.5 * u.square()) if kernel == "gaussian" else _compact_kernel(kernel, u)
    return k.mean(dim=1) * (_DENSITY_CONSTANT[kernel] / h_t)


def _loo_mse(z, y, h, kernel) -> torch.Tensor:
    ids = torch.arange(z.shape[0], device=z.device)
    k = y.shape[1]
    fit = nadaraya_watson(z.expand(-1, k) if z.shape[1] == 1 else z, z.expand(-1, k) if z.shape[1] == 1 else z,
                          y, h, kernel=kernel, query_ids=ids, ref_ids=ids)
    # in float64: squared errors of float32 targets of order 1e20 and beyond overflow float32
    return (fit.double() - y.double()).square().mean()


def loo_cv_bandwidth(z, y, *, grid=None, kernel: str = "gaussian"):
    r"""Choose the bandwidth of a Nadaraya–Watson fit by leave-one-out cross-validation.

    .. math::

        \mathrm{CV}(h) = \frac1n\sum_{i=1}^n \big(y_i - \hat g_{-i}(z_i; h)\big)^2,
        \qquad \hat h = \arg\min_{h \in \text{grid}} \mathrm{CV}(h)

    Args:
        z: index, shape (n,) or (n, 1) (one index shared by every target column) or
            (n, k) (one per column).
        y: targets, shape (n,) or (n, k).
        grid: candidate bandwidths (positive); default 40 values log-spaced from
            0.05·h0 to 5·h0 around the rule of thumb h0.
        kernel: one of :data:`KERNELS`.

    Returns:
        ``(best_h, grid, loo_mse)``: a float, and two 1-D tensors of equal length.
    """
    z = _as_column("z", z)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # a small computation: no reason to choose the bandwidth in half precision
    y = _as_column("y", y, like=z)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"y must have {z.shape[0]} rows like z, got {y.shape[0]}")
    if z.shape[1] not in (1, y.shape[1]):
        raise ValueError(f"z must have 1 or {y.shape[1]} columns (one per target), got {z.shape[1]}")
    if z.shape[0] < 2:
        raise ValueError(f"z must hold at least 2 points (leave-one-out needs another), got {z.shape[0]}")
    if grid is None:
        h0 = rule_of_thumb_bandwidth(z)
        grid = h0 * torch.logspace(math.log10(0.05), math.log10(5.0), 40, dtype=torch.float64)
    try:
        grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"grid must be a sequence of bandwidths > 0, got {grid!r}") from None
    if grid.numel() == 0 or not bool((grid > 0).all()) or not bool(torch.isfinite(grid).all()):
        raise ValueError("grid must be a non-empty sequence of finite bandwidths > 0")
    with torch.no_grad():
        mse = torch.stack([_loo_mse(z, y, float(h), kernel).double().cpu() for h in grid])
    best = int(torch.argmin(mse))
    return float(grid[best]), grid, mse


# --------------------------------------------------------------------------- Ichimura's SLS


class _SingleIndexFit:
    """What a fitted single-index model offers: its link and predictions.

    Subclasses hold ``w``, ``bandwidth``, ``index`` (training indices), ``targets`` and ``kernel``.
    """

    w: torch.Tensor
    bandwidth: float
    index: torch.Tensor
    targets: torch.Tensor
    kernel: str

    def link(self, z) -> torch.Tensor:
        """The estimated link :math:`\\hat g(z)`: NW of the training targets on the training
        indices (no point left out), evaluated at ``z`` of shape (n,)."""
        z = _as_column("z", z, like=self.index)
        return nadaraya_watson(z, self.index.unsqueeze(1), self.targets.unsqueeze(1), self.bandwidth,
                               kernel=self.kernel)[:, 0]

    def predict(self, X) -> torch.Tensor:
        """:math:`\\hat g(X \\hat w)` for new rows ``X`` of shape (n, d), d the length of ``w``."""
        d = self.w.shape[0]
        try:
            X = torch.as_tensor(X)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"X must be a tensor of shape (n, {d}), got {type(X).__name__}") from None
        if X.is_complex() or X.dtype == torch.bool:
            raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
        if X.dim() != 2 or X.shape[1] != d:
            raise ValueError(f"X must have shape (n, {d}): one column per entry of the fitted w, got shape "
                             f"{tuple(X.shape)}")
        X = X.to(dtype=self.w.dtype, device=self.w.device)
        if not bool(torch.isfinite(X).all()):
            raise ValueError("X contains non-finite values (NaN or inf)")
        return self.link(X @ self.w)


@dataclass
class IchimuraResult(_SingleIndexFit):
    r"""Result of :func:`ichimura`.

    Attributes:
        w: the estimated direction, shape (d,), with :math:`\|w\| = 1` and its sign chosen
            to agree with least squares (the model only identifies the direction).
        bandwidth: the estimated bandwidth h.
        loss: the leave-one-out mean squared error at (w, h).
        history: the loss after each optimiser step of the best start.
        start_losses: the final loss of every start (the first is the OLS start).
        index: the training indices :math:`X w`, shape (n,).
        targets: the training targets, shape (n,).
        trimmed: number of points left out of the objective because no other point lay
            inside their kernel window (compact kernels only; a vanishing denominator is
            treated as invalid, not divided by).
        kernel: the kernel used.
    """

    w: torch.Tensor
    bandwidth: float
    loss: float
    history: list
    start_losses: list
    index: torch.Tensor
    targets: torch.Tensor
    trimmed: int = 0
    kernel: str = "gaussian"


def _check_xy(X, y):
    if not isinstance(X, torch.Tensor):
        try:
            X = torch.as_tensor(X, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"X must be a 2-D floating-point tensor (n, d), got {type(X).__name__}") from None
    if X.dim() != 2 or not X.is_floating_point():
        raise ValueError(f"X must be a 2-D floating-point tensor (n, d), got shape {tuple(X.shape)}, dtype {X.dtype}")
    if X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()  # the fit's bandwidths and gradients underflow half precision
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y, dtype=X.dtype)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"y must be a tensor or a sequence of numbers, got {type(y).__name__}") from None
    if y.is_complex():
        raise ValueError(f"y must hold real numbers, got dtype {y.dtype}")
    y = y.to(dtype=X.dtype, device=X.device)  # integer or boolean responses are used as numbers
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {tuple(y.shape)}")
    if X.shape[0] < 3:
        raise ValueError(f"X must hold at least 3 rows for a leave-one-out fit, got {X.shape[0]}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X must be finite (no NaN or inf)")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"y must be finite (no NaN or inf) in X's dtype {X.dtype}")
    return X, y


def _ols_direction(X, y):
    Xc = X - X.mean(0)
    yc = y - y.mean()
    sol = torch.linalg.lstsq(Xc.double().cpu(), yc.double().cpu().unsqueeze(1)).solution[:, 0]
    if float(sol.norm()) == 0:
        sol = torch.ones_like(sol)
    return (sol / sol.norm()).to(X)


def _valid_window(z: torch.Tensor, h: float) -> torch.Tensor:
    """Points with another point within distance h (compact kernels have a nonzero LOO denominator)."""
    order = torch.argsort(z)
    zs = z[order]
    gap = torch.full_like(zs, float("inf"))
    diff = zs[1:] - zs[:-1]
    gap[1:] = diff
    gap[:-1] = torch.minimum(gap[:-1], diff)
    valid = torch.empty_like(zs, dtype=torch.bool)
    valid[order] = gap < h
    return valid


def ichimura(
    X,
    y,
    *,
    n_starts: int = 5,
    seed: int = 0,
    steps: int = 100,
    bandwidth: Optional[float] = None,
    learn_bandwidth: bool = True,
    kernel: str = "gaussian",
) -> IchimuraResult:
    r"""Ichimura's (1993) semiparametric least squares for a single-index model.

    For :math:`E[y \mid x] = g(x^\top w)` with unknown link :math:`g`, minimise the
    leave-one-out squared error of a Nadaraya–Watson fit of :math:`y` on the index
    :math:`z = Xw`, jointly over the direction and the bandwidth:

    .. math::

        (\hat w, \hat h) = \arg\min_{\|w\| = 1,\ h > 0}\ \frac1n \sum_{i=1}^n
            \big(y_i - \hat g_{-i}(x_i^\top w; h)\big)^2

    Following standard practice (e.g. R's ``np::npindexbw``): the direction is
    identified by normalisation (:math:`\|w\|=1`, sign agreeing with least squares;
    include no constant column: a single-index model has no intercept in the index);
    the first start is the OLS direction, the others are random (seeded); the bandwidth
    starts at the rule of thumb :math:`1.06\,\mathrm{sd}(z)\,n^{-1/5}`; each start is
    optimised with L-BFGS over :math:`(v, \log h)` with :math:`w = v/\|v\|`. With a compact
    kernel, points whose window holds no other point are trimmed from the objective
    (a vanishing denominator is invalid, not divided by).

    Cost per evaluation: :math:`O(n^2)` (every point is a reference point). The fit runs in
    float64 whatever the dtype of ``X``; the result is returned in ``X``'s dtype.

    Args:
        X: regressors, shape (n, d); put them on comparable scales first.
        y: responses, shape (n,).
        n_starts: number of starting directions (≥ 1).
        seed: seed of the random starts.
        steps: L-BFGS iterations per start.
        bandwidth: initial (or, with ``learn_bandwidth=False``, fixed) bandwidth;
            default the rule of thumb at the OLS start.
        learn_bandwidth: optimise h jointly with w.
        kernel: one of :data:`KERNELS`.

    Returns:
        :class:`IchimuraResult`.

    Examples::

        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(300, 3, generator=g, dtype=torch.float64)
        >>> w_true = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
        >>> y = torch.sin(2 * X @ w_true) + 0.05 * torch.randn(300, generator=g, dtype=torch.float64)
        >>> fit = ichimura(X, y, n_starts=3)
        >>> abs(float(fit.w @ w_true)) > 0.99
        True
    """
    X, y = _check_xy(X, y)
    n_starts, steps, seed, bandwidth = _check_fit_args(n_starts, steps, kernel, bandwidth, seed, learn_bandwidth)
    # Fitted in float64 (an O(n^2) problem, small): in float32 the gradients, of order y^2 / h,
    # overflow for badly scaled data; the results are returned in X's dtype (float32 for half).
    dtype = X.dtype
    X, y = X.double(), y.double()
    w_ols = _ols_direction(X, y)
    h_init = bandwidth if bandwidth is not None else rule_of_thumb_bandwidth(X @ w_ols)
    fit = _fit_single_index(X, y, lambda g, t: (t - g).square(), _starts(w_ols, n_starts, seed), h_init,
                            steps=steps, learn_bandwidth=learn_bandwidth, kernel=kernel)
    w = fit["w"]
    if float(w @ w_ols) < 0:  # the model identifies w only up to sign: agree with OLS
        w = -w
    return IchimuraResult(w=w.to(dtype), bandwidth=fit["bandwidth"], loss=fit["loss"], history=fit["history"],
                          start_losses=fit["start_losses"], index=(X @ w).to(dtype), targets=y.to(dtype),
                          trimmed=fit["trimmed"], kernel=kernel)


def _check_fit_args(n_starts, steps, kernel, bandwidth, seed, learn_bandwidth):
    """The single-index fits' common arguments, checked; returns (n_starts, steps, seed, bandwidth)."""
    n_starts = _check_count("n_starts", n_starts)
    steps = _check_count("steps", steps)
    seed = _check_seed("seed", seed)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if bandwidth is not None:
        bandwidth = _check_positive("bandwidth", bandwidth)
    if not isinstance(learn_bandwidth, bool):
        raise ValueError(f"learn_bandwidth must be True or False, got {learn_bandwidth!r}")
    return n_starts, steps, seed, bandwidth


def _starts(first: torch.Tensor, n_starts: int, seed: int) -> list:
    """``first`` (a parametric fit's direction) followed by ``n_starts - 1`` seeded random directions."""
    gen = torch.Generator().manual_seed(seed)
    return [first] + [torch.randn(first.shape[0], generator=gen, dtype=torch.float64).to(first)
                      for _ in range(n_starts - 1)]


def _loo_loss(X, y, w, h, pointwise, kernel, ids):
    """(mean over valid points of ``pointwise(leave-one-out NW fit, y)`` at index X w and bandwidth h,
    number of trimmed points). With a compact kernel a point with no other point in its window is
    trimmed (its denominator vanishes); NaN when every point is."""
    z = (X @ w).unsqueeze(1)
    fit = nadaraya_watson(z, z, y.unsqueeze(1), h, kernel=kernel, query_ids=ids, ref_ids=ids)[:, 0]
    err = pointwise(fit, y)
    if kernel != "gaussian":
        valid = _valid_window(z[:, 0].detach(), float(h.detach()))
        return err[valid].mean() if bool(valid.any()) else err.sum() * float("nan"), int((~valid).sum())
    return err.mean(), 0


#: the bandwidth search of :func:`ichimura` and :func:`klein_spady` stays within a factor
#: e^(±_LOG_H_BAND) = 10^(±4) of its start (the rule of thumb unless given)
_LOG_H_BAND = math.log(1e4)


def _fit_single_index(X, y, pointwise, starts, h_init, *, steps, learn_bandwidth, kernel) -> dict:
    r"""Minimise :math:`\frac1n\sum_i \ell(\hat g_{-i}(x_i^\top w; h), y_i)` over :math:`(v, \log h)`,
    :math:`w = v/\|v\|`, by L-BFGS from every start; return the best start's fit.

    :math:`\log h` is kept within ``_LOG_H_BAND`` of :math:`\log h_0` (``h_init``) by a
    smooth bijection, so no probe of the line search reaches a bandwidth that under- or
    overflows the kernel.

    ``pointwise(fit, y)`` gives the per-point loss :math:`\ell`. The leave-one-out fit is
    :func:`nadaraya_watson` with every point a reference point. With a compact kernel,
    points whose window holds no other point are trimmed from the mean (a vanishing
    denominator is invalid, not divided by). Returns a dict with ``w`` (unit norm, sign
    as the optimiser left it), ``bandwidth``, ``loss``, ``history`` (the loss at every
    evaluation of the best start), ``start_losses`` and ``trimmed``.
    """
    ids = torch.arange(X.shape[0], device=X.device)
    log_h0 = math.log(h_init)

    def bandwidth_of(u):
        # log h = log h0 + B tanh(u / B): a smooth bijection onto h0 e^(±B), so that a line-search
        # probe far out cannot under/overflow the kernel (h -> 0 or inf), while near the start
        # (u small) the parametrisation is log h itself
        return torch.exp(log_h0 + _LOG_H_BAND * torch.tanh(u / _LOG_H_BAND))

    def objective(v, u):
        return _loo_loss(X, y, v / v.norm(), bandwidth_of(u), pointwise, kernel, ids)

    best = None
    start_losses = []
    for v0 in starts:
        v = v0.clone().requires_grad_(True)
        u = torch.zeros((), dtype=X.dtype, device=X.device, requires_grad=learn_bandwidth)
        params = [v, u] if learn_bandwidth else [v]
        opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                tolerance_change=1e-12)
        history = []

        def closure():
            opt.zero_grad()
            loss, _ = objective(v, u)
            if not torch.isfinite(loss):
                h_now = float(bandwidth_of(u.detach()))
                if kernel != "gaussian":
                    raise ValueError(f"the leave-one-out objective is undefined at bandwidth {h_now:.3g}: no point has "
                                     f"a neighbour within it ({kernel} kernel); use a larger bandwidth or the "
                                     "gaussian kernel")
                raise ValueError(f"the leave-one-out objective is not finite ({float(loss.detach())}) at bandwidth "
                                 f"{h_now:.3g}; check X and y for extreme values (standardise X)")
            loss.backward()
            history.append(float(loss.detach()))
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss, trimmed = objective(v, u)
        start_losses.append(float(loss))
        if best is None or float(loss) < best[0]:
            best = (float(loss), v.detach().clone(), float(bandwidth_of(u.detach())), history, trimmed)

    assert best is not None  # n_starts >= 1
    loss, v, h, history, trimmed = best
    return dict(w=v / v.norm(), bandwidth=h, loss=loss, history=history, start_losses=start_losses,
                trimmed=trimmed)


# --------------------------------------------------------------------------- K-AF-tron


@dataclass
class KafTronResult(_SingleIndexFit):
    r"""Result of :func:`kaf_tron`.

    Attributes:
        w: the final weight vector (d,) (its scale is not identified; compare directions).
        bandwidth: the bandwidth of the last step's link estimate.
        losses: leave-one-out mean squared error :math:`\frac1m\sum_i (y_i - u_t(w^t\cdot x_i))^2`
            at every step t (before the update).
        weights: the trajectory :math:`w^1, \dots, w^{T+1}`, shape (T+1, d).
        index: final training indices (m,); targets: (m,).
    """

    w: torch.Tensor
    bandwidth: float
    losses: list
    weights: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    kernel: str = "gaussian"


def kaf_tron(
    X,
    y,
    *,
    steps: int = 100,
    bandwidth: Optional[float] = None,
    lr: float = 1.0,
    kernel: str = "gaussian",
    w0=None,
) -> KafTronResult:
    r"""K-AF-tron (the thesis's Algorithm 1): Isotron/GLM-tron with a kernel link.

    .. math::

        w^1 = 0,\qquad u_t = \mathrm{NW}\big(\{(w^t\cdot x_i,\ y_i)\}\big),\qquad
        w^{t+1} = w^t + \frac{\eta}{m}\sum_{i=1}^m \big(y_i - u_t(w^t\cdot x_i)\big)\,x_i

    At every step the link :math:`u_t` is re-estimated from the current indices by a
    leave-one-out Nadaraya–Watson fit (a point never predicts itself), as Isotron
    re-fits an isotonic regression; the thesis's :math:`\eta = 1`. The bandwidth is
    fixed if given, otherwise the rule of thumb :math:`1.06\,\mathrm{sd}(z_t)\,m^{-1/5}`
    re-computed at every step (the index spread grows from 0 as w grows). At
    :math:`w^1 = 0` every index is 0 and :math:`u_1` is the leave-one-out mean of y.

    Args:
        X: inputs (m, d); y: targets (m,), in [0, 1] in the thesis's setting (any real
            values work).
        steps: number of updates T.
        bandwidth: a fixed bandwidth, or ``None`` for the per-step rule of thumb.
        lr: step size :math:`\eta` (> 0).
        kernel: one of :data:`KERNELS`.
        w0: start (default zeros, as in the algorithm).

    Returns:
        :class:`KafTronResult` with the loss trajectory.
    """
    X, y = _check_xy(X, y)
    steps = _check_count("steps", steps)
    lr = _check_positive("lr", lr)
    if bandwidth is not None:
        bandwidth = _check_positive("bandwidth", bandwidth)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    m, d = X.shape
    ids = torch.arange(m, device=X.device)
    if w0 is None:
        w = torch.zeros(d, dtype=X.dtype, device=X.device)
    else:
        try:
            w = torch.as_tensor(w0)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"w0 must be a tensor of shape ({d},), got {type(w0).__name__}") from None
        if w.is_complex():
            raise ValueError(f"w0 must hold real numbers, got dtype {w.dtype}")
        w = w.to(X).clone()
        if w.shape != (d,):
            raise ValueError(f"w0 must have shape ({d},), got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("w0 must be finite (no NaN or inf)")
    losses, weights = [], [w.clone()]
    h = bandwidth if bandwidth is not None else 1.0

    def overflow(step):
        return ValueError(
            f"the index X @ w overflowed {X.dtype} at step {step}: lr={lr!r} is too large for the scale of X "
            "(the algorithm assumes |x| <= 1); rescale X or use a smaller lr"
        )

    def index(w, step):
        z = X @ w
        if not bool(torch.isfinite(z).all()):
            raise overflow(step)
        return z

    def spread_bandwidth(z, step):
        # finite indices whose squares overflow give an infinite spread: the same overflow, and
        # the bandwidth made from it is not the caller's to blame
        h = rule_of_thumb_bandwidth(z)
        if not math.isfinite(h):
            raise overflow(step)
        return h

    with torch.no_grad():
        for step in range(steps):
            z = index(w, step).unsqueeze(1)
            if bandwidth is None:
                h = spread_bandwidth(z, step)
            u = nadaraya_watson(z, z, y.unsqueeze(1), h, kernel=kernel, query_ids=ids, ref_ids=ids)[:, 0]
            resid = y - u
            losses.append(float(resid.double().square().mean()))
            w = w + lr * (resid @ X) / m
            weights.append(w.clone())
        z = index(w, steps)
        if bandwidth is None:
            h = spread_bandwidth(z, steps)
    return KafTronResult(w=w, bandwidth=h, losses=losses, weights=torch.stack(weights), index=z, targets=y,
                         kernel=kernel)


# --------------------------------------------------------------------------- Klein and Spady's likelihood

#: default probability trimming :math:`\delta` of :func:`bernoulli_nll` (and so of :func:`klein_spady` and
#: of the K-AF likelihood loss): probabilities are squeezed into :math:`[\delta, 1 - \delta]`.
PROB_TRIM = 1e-3


def bernoulli_nll(p: torch.Tensor, y: torch.Tensor, *, trim: float = PROB_TRIM) -> torch.Tensor:
    r"""Element-wise negative log-likelihood of binary targets under trimmed probabilities.

    .. math::

        \tilde p = \delta + (1 - 2\delta)\,p, \qquad
        \ell(p, y) = -\big[\,y \log \tilde p + (1 - y) \log(1 - \tilde p)\,\big]

    The squeeze :math:`p \mapsto \tilde p` is the trimming shared by :func:`klein_spady`
    and the K-AF likelihood loss. A kernel estimate of a probability can sit at (or, in
    floating point, reach) 0 or 1 exactly where it is least reliable — in the tails of
    the index, where few points carry the estimate — and there one point's
    :math:`\log 0` would dominate, or make infinite, the whole objective and its score
    :math:`\propto 1/[p(1-p)]`. Klein and Spady (1993) keep the estimated probabilities
    away from 0 and 1 for that reason (their bound shrinks as :math:`n` grows, which
    leaves the limit unchanged). An affine squeeze rather than a hard clamp
    :math:`\min(\max(p, \delta), 1-\delta)`: it is smooth and keeps a gradient
    everywhere, so a confidently wrong point still pulls on the index instead of sitting
    on a flat floor; each point's loss is bounded by :math:`-\log\delta`; and it has a
    reading as a likelihood — the label is replaced by a fair coin with probability
    :math:`2\delta`. ``p`` is first clamped to :math:`[0, 1]` against rounding (a
    Nadaraya–Watson average of 0/1 targets lies there exactly).

    Shape:
        - ``p``: any shape; ``y``: the same shape, values in :math:`[0, 1]` (0/1 labels).
        - Output: the same shape (reduce it yourself: a mean over points, a sum over
          output units).

    Args:
        p: probabilities :math:`P(y = 1)`.
        y: targets.
        trim: :math:`\delta \in [0, 1/2)`; 0 gives the untrimmed likelihood (infinite at a
            confidently wrong point).

    Examples::

        >>> p = torch.tensor([0.0, 0.5, 1.0])
        >>> [round(v, 3) for v in bernoulli_nll(p, torch.ones(3), trim=0.001).tolist()]  # -log δ, log 2, ≈ δ
        [6.908, 0.693, 0.001]
    """
    if not isinstance(p, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"p and y must be tensors, got {type(p).__name__} and {type(y).__name__}")
    if p.shape != y.shape:
        raise ValueError(f"y must have the shape of p {tuple(p.shape)}, got {tuple(y.shape)}")
    _check_trim(trim)
    q = trim + (1.0 - 2.0 * trim) * p.clamp(0.0, 1.0)
    y = y.to(q.dtype)
    return -(torch.xlogy(y, q) + torch.xlogy(1.0 - y, 1.0 - q))


def _logit_direction(X: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, max_iter: int = 100) -> torch.Tensor:
    r"""Unit direction of the slopes of a logistic regression of binary ``y`` on ``X`` (with intercept).

    Minimises :math:`\frac1n\sum_i \log(1 + e^{-s_i(a + x_i^\top b)}) + \frac{\lambda}{2}\|b\|^2`
    (:math:`s_i = 2y_i - 1`) by Newton's method with step halving. The small ridge
    :math:`\lambda` keeps the fit finite when the classes are separable (the direction is
    then still meaningful).
    """
    Xd, yd = X.detach().double().cpu(), y.detach().double().cpu()
    n, d = Xd.shape
    A = torch.cat([torch.ones(n, 1, dtype=torch.float64), Xd], 1)
    pen = torch.full((d + 1,), l2, dtype=torch.float64)
    pen[0] = 0.0

    def loss(beta):
        eta = A @ beta
        return float((torch.nn.functional.softplus(eta) - yd * eta).mean() + 0.5 * (pen * beta.square()).sum())

    beta = torch.zeros(d + 1, dtype=torch.float64)
    current = loss(beta)
    for _ in range(max_iter):
        p = torch.sigmoid(A @ beta)
        grad = A.t() @ (p - yd) / n + pen * beta
        hess = (A.t() * (p * (1 - p))) @ A / n + torch.diag(pen) + 1e-12 * torch.eye(d + 1, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10 and loss(beta - t * step) > current:
            t *= 0.5
        beta = beta - t * step
        new = loss(beta)
        if current - new < 1e-15 and float(step.abs().max()) * t < 1e-10:
            current = new
            break
        current = new
    b = beta[1:]
    if float(b.norm()) == 0:
        b = torch.ones_like(b)
    return (b / b.norm()).to(X)


def _check_binary(y: torch.Tensor) -> torch.Tensor:
    values = torch.unique(y)
    if not bool(((values == 0) | (values == 1)).all()):
        shown = values[:5].tolist()
        raise ValueError(f"y must be binary, holding only 0 and 1, got values {shown}{' ...' if len(values) > 5 else ''}")
    if values.numel() < 2:
        raise ValueError(f"y must hold both classes 0 and 1, got only {int(values[0])} (constant y)")
    return y


def _check_trim(trim):
    if isinstance(trim, bool) or not isinstance(trim, (int, float)) or not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be a number in [0, 0.5), got {trim!r}")


def klein_spady_objective(X, y, w, h, *, kernel: str = "gaussian", trim: float = PROB_TRIM) -> torch.Tensor:
    r"""The objective :func:`klein_spady` minimises, at a given direction and bandwidth.

    .. math::

        Q(w, h) = -\frac1n \sum_{i=1}^n \Big[y_i \log \tilde P_{-i} + (1 - y_i) \log\big(1 - \tilde P_{-i}\big)\Big],
        \qquad \tilde P_{-i} = \delta + (1 - 2\delta)\,\hat P_{-i}(w / \|w\|, h)

    with :math:`\hat P_{-i}` the leave-one-out Nadaraya–Watson estimate of
    :math:`P(y = 1 \mid x^\top w)` at :math:`x_i` (see :func:`klein_spady`) and
    :math:`\delta` = ``trim``. ``w`` (d,) is normalised first, as in the fit; ``h > 0``.
    With a compact kernel, points whose window holds no other point are left out of the
    mean. Differentiable in ``w`` and ``h`` when they are tensors.

    Examples::

        >>> X = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
        >>> y = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
        >>> q = klein_spady_objective(X, y, torch.ones(1, dtype=torch.float64), 0.5)
        >>> bool(q > 0)
        True
    """
    X, y = _check_xy(X, y)
    _check_binary(y)
    _check_trim(trim)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    w = torch.as_tensor(w).to(X)
    if w.shape != (X.shape[1],) or not bool(torch.isfinite(w).all()) or float(w.detach().norm()) == 0:
        raise ValueError(f"w must be a finite, nonzero vector of shape ({X.shape[1]},), got shape {tuple(w.shape)}")
    h = _as_bandwidth(h, 1, X)[0]
    ids = torch.arange(X.shape[0], device=X.device)
    loss, _ = _loo_loss(X, y, w / w.norm(), h, lambda g, t: bernoulli_nll(g, t, trim=trim), kernel, ids)
    return loss


@dataclass
class KleinSpadyResult(IchimuraResult):
    r"""Result of :func:`klein_spady` (the fields of :class:`IchimuraResult`, read for a binary response).

    Attributes:
        w: the estimated direction, shape (d,), with :math:`\|w\| = 1` and its sign chosen
            to agree with logistic regression's (:math:`w^\top w_{\mathrm{logit}} \ge 0`; the
            model identifies the direction only up to sign).
        bandwidth: the estimated bandwidth h.
        loss: the trimmed leave-one-out negative log-likelihood per point at (w, h).
        history: the loss after each optimiser evaluation of the best start.
        start_losses: the final loss of every start (the first is the logistic start).
        index: the training indices :math:`X w`, shape (n,).
        targets: the binary training targets, shape (n,).
        trimmed: points left out because their kernel window held no other point
            (compact kernels only).
        kernel: the kernel used.
        trim: the probability trimming :math:`\delta` (see :func:`bernoulli_nll`).
        w_logit: logistic regression's direction (unit norm), the first start.

    :meth:`link` is the estimated :math:`\hat P(y = 1 \mid x^\top w = z)` (untrimmed) and
    :meth:`predict` the estimated probabilities for new rows.
    """

    trim: float = PROB_TRIM
    w_logit: Optional[torch.Tensor] = None


def klein_spady(
    X,
    y,
    *,
    n_starts: int = 5,
    seed: int = 0,
    steps: int = 100,
    bandwidth: Optional[float] = None,
    learn_bandwidth: bool = True,
    kernel: str = "gaussian",
    trim: float = PROB_TRIM,
) -> KleinSpadyResult:
    r"""Klein and Spady's (1993) semiparametric maximum likelihood for a binary single-index model.

    For a binary response with :math:`P(y = 1 \mid x) = G(x^\top w)` and an unknown link
    :math:`G`, the log-likelihood of the sample is
    :math:`\sum_i y_i \log G(x_i^\top w) + (1 - y_i)\log(1 - G(x_i^\top w))`. Since
    :math:`G(z) = E[y \mid x^\top w = z]`, the leave-one-out Nadaraya–Watson regression of
    the 0/1 targets on the index estimates it, and plugging that estimate in gives the
    objective, maximised jointly over the direction and the bandwidth:

    .. math::

        \hat P_{-i}(w, h) = \frac{\sum_{j \ne i} K\!\big((x_j - x_i)^\top w / h\big)\, y_j}
                                 {\sum_{j \ne i} K\!\big((x_j - x_i)^\top w / h\big)},
        \qquad
        (\hat w, \hat h) = \arg\min_{\|w\| = 1,\ h > 0}\ \frac1n \sum_{i=1}^n
            \ell\big(\hat P_{-i}(w, h),\, y_i\big)

    with :math:`\ell` the trimmed Bernoulli negative log-likelihood of
    :func:`bernoulli_nll` (probabilities squeezed into :math:`[\delta, 1-\delta]`).
    It is :func:`ichimura` with the squared error replaced by the likelihood: the same
    estimate of the link, the same leave-one-out, the same optimiser. Klein and Spady
    show the estimator attains the semiparametric efficiency bound for this model,
    which least squares does not (its errors are heteroscedastic,
    :math:`\mathrm{Var}(y \mid x) = G(1 - G)`, and the likelihood weights them accordingly).

    Design, as in :func:`ichimura`: the direction is identified by :math:`\|w\|=1` and
    its sign (agreeing with logistic regression's; include no constant column: the
    intercept is absorbed by the link); the first start is logistic regression's
    direction, the others are seeded random directions, so a link that logistic
    regression misreads (non-monotone, or skewed regressors) can still be found; the
    bandwidth starts at the rule of thumb at the logistic direction; each start is
    optimised by L-BFGS over :math:`(v, \log h)` with :math:`w = v/\|v\|`. Trimming:
    the probabilities are squeezed as above (Klein and Spady also trim observations
    where the index density is low; with the Gaussian kernel the estimate is defined
    everywhere, and with a compact kernel points whose window holds no other point are
    trimmed, as in :func:`ichimura`).

    Cost per evaluation: :math:`O(n^2)`.

    Args:
        X: regressors, shape (n, d); put them on comparable scales first.
        y: binary responses (0/1, bool or float), shape (n,), both classes present.
        n_starts: number of starting directions (≥ 1).
        seed: seed of the random starts.
        steps: L-BFGS iterations per start.
        bandwidth: initial (or, with ``learn_bandwidth=False``, fixed) bandwidth;
            default the rule of thumb at the logistic start.
        learn_bandwidth: optimise h jointly with w.
        kernel: one of :data:`KERNELS`.
        trim: probability trimming :math:`\delta \in [0, 1/2)`.

    Returns:
        :class:`KleinSpadyResult`.

    Raises:
        ValueError: ``y`` not binary or constant, mismatched shapes, non-finite values,
            or bad options.

    Examples::

        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(300, 3, generator=g, dtype=torch.float64)
        >>> w_true = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
        >>> p = torch.sigmoid(4 * torch.sin(2 * X @ w_true))          # a non-monotone link
        >>> y = torch.bernoulli(p, generator=g)
        >>> fit = klein_spady(X, y, n_starts=3)
        >>> abs(float(fit.w @ w_true)) > 0.95
        True
    """
    X, y = _check_xy(X, y)
    _check_binary(y)
    n_starts, steps, seed, bandwidth = _check_fit_args(n_starts, steps, kernel, bandwidth, seed, learn_bandwidth)
    _check_trim(trim)
    w_logit = _logit_direction(X, y)
    h_init = bandwidth if bandwidth is not None else rule_of_thumb_bandwidth(X @ w_logit)
    fit = _fit_single_index(X, y, lambda g, t: bernoulli_nll(g, t, trim=trim), _starts(w_logit, n_starts, seed),
                            h_init, steps=steps, learn_bandwidth=learn_bandwidth, kernel=kernel)
    w = fit["w"]
    if float(w @ w_logit) < 0:  # identified only up to sign: agree with logistic regression
        w = -w
    return KleinSpadyResult(w=w, bandwidth=fit["bandwidth"], loss=fit["loss"], history=fit["history"],
                            start_losses=fit["start_losses"], index=X @ w, targets=y, trimmed=fit["trimmed"],
                            kernel=kernel, trim=float(trim), w_logit=w_logit)
