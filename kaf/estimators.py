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
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

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


def _check_tensor(name: str, x, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _check_ids(name: str, ids, length: int, length_name: str, device) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D tensor of length {length} ({length_name}), got shape {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    return ids.to(device=device)


def _as_bandwidth(h, k: int, like: torch.Tensor) -> torch.Tensor:
    """Return the bandwidth as a (k,) tensor on ``like``'s device and dtype (keeps autograd)."""
    if isinstance(h, torch.Tensor):
        if h.dim() > 1 or (h.dim() == 1 and h.shape[0] not in (1, k)):
            raise ValueError(f"h must be a scalar or a tensor of shape ({k},), got shape {tuple(h.shape)}")
        h_t = h.to(device=like.device, dtype=like.dtype)
    else:
        try:
            h_t = torch.tensor(float(h), device=like.device, dtype=like.dtype)
        except (TypeError, ValueError):
            raise ValueError(f"h must be a positive number or tensor, got {h!r}") from None
    if not bool(torch.isfinite(h_t).all()) or not bool((h_t > 0).all()):
        raise ValueError(f"h must be finite and > 0, got {h_t.detach().cpu().tolist()}")
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


# --------------------------------------------------------------------------- gaussian fast path


def _gaussian_weights(a: torch.Tensor, b: torch.Tensor, pairs) -> torch.Tensor:
    """Softmax weights :math:`w_{ij} \\propto \\exp(-(b_j-a_i)^2)` in (k, n, m) layout.

    ``a`` (k, n) and ``b`` (k, m) are indices already divided by :math:`\\sqrt 2 h`.
    Computing the exact squared difference (rather than expanding the square) keeps
    full precision when the indices are far from each other; the softmax subtracts the
    row maximum, so a query far from every reference point gets weight 1 on the
    nearest one instead of 0/0. ``pairs`` (rows, cols) are the left-out pairs.
    """
    w = torch.sub(b.unsqueeze(1), a.unsqueeze(2))
    w.square_().neg_()
    if pairs is not None:
        w[:, pairs[0], pairs[1]] = float("-inf")
    torch.softmax(w, dim=-1, out=w)
    return w


def _chunks(n: int, chunk_size: Optional[int]):
    step = n if not chunk_size else chunk_size
    for start in range(0, n, max(step, 1)):
        yield start, min(start + step, n)


def _loo_mask(query_ids, ref_ids, lo, hi):
    """Boolean (hi-lo, m) mask of left-out pairs, or None; raises if a query loses every point."""
    if query_ids is None:
        return None
    mask = query_ids[lo:hi].unsqueeze(1) == ref_ids.unsqueeze(0)
    left = mask.shape[1] - mask.sum(dim=1)
    if bool((left == 0).any()):
        bad = int(torch.nonzero(left == 0)[0, 0]) + lo
        raise ValueError(
            f"query {bad} has no reference point left after leave-one-out exclusion: "
            "every ref_ids entry equals its query_ids entry (the reference set needs another point)"
        )
    return mask


class _LeaveOut:
    """Finds the left-out pairs (query_ids[i] == ref_ids[j]) chunk by chunk.

    With unique reference ids (the usual case: calc points are distinct rows) each
    query matches at most one reference point, found by binary search in
    O((n + m) log m) instead of an (n, m) comparison; duplicated ids fall back to the
    comparison.
    """

    def __init__(self, query_ids, ref_ids):
        self.query_ids, self.ref_ids = query_ids, ref_ids
        if query_ids is not None:
            self.sorted_ids, self.order = torch.sort(ref_ids)
            self.unique = bool((self.sorted_ids[1:] != self.sorted_ids[:-1]).all())

    def pairs(self, lo, hi):
        """(rows, cols) of the left-out pairs among queries lo..hi-1 (rows relative to lo), or None."""
        if self.query_ids is None:
            return None
        if not self.unique:
            return torch.nonzero(_loo_mask(self.query_ids, self.ref_ids, lo, hi), as_tuple=True)
        q = self.query_ids[lo:hi]
        m = self.sorted_ids.shape[0]
        pos = torch.searchsorted(self.sorted_ids, q).clamp_(max=m - 1)
        rows = torch.nonzero(self.sorted_ids[pos] == q).squeeze(1)
        if m == 1 and rows.numel() > 0:
            raise ValueError(
                f"query {int(rows[0]) + lo} has no reference point left after leave-one-out exclusion: "
                "every ref_ids entry equals its query_ids entry (the reference set needs another point)"
            )
        return rows, self.order[pos[rows]]


def _rowdot(r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_j w_{ij} r_j` for w (k, n, m), r (k, m) -> (k, n).

    Written as a row vector times the transposed weights: on CPU this takes BLAS's
    matrix-vector path, several times faster than ``w @ r`` or a broadcast multiply.
    """
    return torch.bmm(r.unsqueeze(1), w.transpose(1, 2)).squeeze(1)


def _coldot(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_i v_i w_{ij}` for w (k, n, m), v (k, n) -> (k, m)."""
    return torch.bmm(v.unsqueeze(1), w).squeeze(1)


class _GaussianNW(torch.autograd.Function):
    """Gaussian Nadaraya–Watson with a hand-written backward.

    Inputs are in (k, n) / (k, m) layout. With :math:`d_{ij} = b_j - a_i`,
    :math:`s = 1/h^2`, weights :math:`w_{ij}` and output :math:`o_i = \\sum_j w_{ij} y_j`,
    the upstream gradient :math:`g_i` gives :math:`G_{ij} = g_i w_{ij}(y_j - o_i)` and

    * :math:`\\partial/\\partial a_i = s\\sum_j G_{ij} d_{ij}`
    * :math:`\\partial/\\partial b_j = -s\\sum_i G_{ij} d_{ij}`
    * :math:`\\partial/\\partial y_j = \\sum_i g_i w_{ij}`
    * :math:`\\partial/\\partial h = \\sum_{ij} G_{ij} d_{ij}^2 / h^3`

    Because :math:`\\sum_j w_{ij}(y_j - o_i) = 0`, each of these expands into
    matrix-vector products with the weights (four row sums, four column sums): no
    (n, m, k) temporary and no autograd graph is built. Indices and targets are centred
    first (the estimator is invariant to a common shift), which keeps the expansion
    accurate in float32. Without chunking the weights are kept from the forward; with
    chunking they are recomputed chunk by chunk, so memory stays O(chunk·m·k).
    """

    @staticmethod
    def forward(ctx, a, b, y, h, query_ids, ref_ids, chunk_size):
        # a (k, n), b (k, m), y (k, m), h (k,)
        centre = b.mean(1, keepdim=True)
        a, b = a - centre, b - centre
        scale = (1.0 / (math.sqrt(2.0) * h)).unsqueeze(1)
        a_s, b_s = a * scale, b * scale
        out = a.new_empty(a.shape)
        keep = None
        leave_out = _LeaveOut(query_ids, ref_ids)
        for lo, hi in _chunks(a.shape[1], chunk_size):
            w = _gaussian_weights(a_s[:, lo:hi], b_s, leave_out.pairs(lo, hi))
            out[:, lo:hi] = _rowdot(y, w)
            if chunk_size is None:
                keep = w
        ctx.save_for_backward(a, b, y, h, out, query_ids, ref_ids, keep)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        a, b, y, h, out, query_ids, ref_ids, keep = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        need_a, need_b, need_y, need_h = ctx.needs_input_grad[:4]
        if keep is None:  # chunked: the weights are recomputed, chunk by chunk
            scale = (1.0 / (math.sqrt(2.0) * h)).unsqueeze(1)
            a_s, b_s = a * scale, b * scale
            leave_out = _LeaveOut(query_ids, ref_ids)
        s = (1.0 / h**2).unsqueeze(1)  # (k, 1)
        # centre the targets too: only differences y_j - o_i enter
        y_centre = y.mean(1, keepdim=True)
        yc, oc = y - y_centre, out - y_centre
        yb, b2 = yc * b, b.square()
        grad_a = torch.empty_like(a) if need_a else None
        grad_h = torch.zeros_like(h)
        col = torch.zeros((4,) + b.shape, dtype=b.dtype, device=b.device)
        for lo, hi in _chunks(a.shape[1], chunk_size):
            w = keep if keep is not None else _gaussian_weights(a_s[:, lo:hi], b_s, leave_out.pairs(lo, hi))
            g, o, a_c = grad_out[:, lo:hi], oc[:, lo:hi], a[:, lo:hi]
            # m1_i = sum_j w_ij (y_j - o_i) b_j = sum_j G_ij d_ij / g_i
            m1 = _rowdot(yb, w) - o * _rowdot(b, w)
            if need_a:
                grad_a[:, lo:hi] = g * s * m1
            if need_h:
                m2 = _rowdot(yc * b2, w) - o * _rowdot(b2, w)
                grad_h += (g * (m2 - 2 * a_c * m1)).sum(1)
            if need_b or need_y:
                go = g * o
                col[0] += _coldot(g, w)
                if need_b:
                    col[1] += _coldot(go, w)
                    col[2] += _coldot(g * a_c, w)
                    col[3] += _coldot(go * a_c, w)
        grad_y = col[0] if need_y else None
        grad_b = -s * (yb * col[0] - b * col[1] - yc * col[2] + col[3]) if need_b else None
        grad_h = grad_h / h**3 if need_h else None
        return grad_a, grad_b, grad_y, grad_h, None, None, None


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


def _compact_nw(z, z_ref, y_ref, h, kernel, query_ids, ref_ids, chunk_size):
    # (n, m, k) layout through plain autograd: compact kernels are the comparison
    # case, not the hot path.
    outs = []
    for lo, hi in _chunks(z.shape[0], chunk_size):
        d = z_ref.unsqueeze(0) - z[lo:hi].unsqueeze(1)  # (c, m, k)
        K = _compact_kernel(kernel, d / h)
        mask = _loo_mask(query_ids, ref_ids, lo, hi)
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
      :math:`-u^2/2` (log space), so a query far from every reference point gets the
      nearest point's target (ties averaged) instead of 0/0.
    * ``"epanechnikov"`` :math:`\tfrac34(1-u^2)`, ``"triangular"`` :math:`1-|u|`,
      ``"uniform"`` :math:`\tfrac12`, all on :math:`|u| \le 1`. When no reference point
      lies inside the window the answer is defined as the target of the nearest
      reference point (the :math:`h \to 0` limit of the estimator); that answer
      carries gradient to ``y_ref`` only.

    Leave-one-out is by sample identity: a pair with ``query_ids[i] == ref_ids[j]`` is
    excluded, so a batch may contain calc points. Without ids nothing is excluded
    (inference on unseen data).

    Args:
        z: query indices, shape :math:`(n, k)`.
        z_ref: reference indices, shape :math:`(m, k)`.
        y_ref: reference targets, shape :math:`(m, k)`.
        h: bandwidth, a positive number or a tensor of shape ``()`` or ``(k,)``
            (differentiable).
        kernel: one of :data:`KERNELS`.
        query_ids: integer ids of the queries, shape :math:`(n,)`; give together with
            ``ref_ids``.
        ref_ids: integer ids of the reference points, shape :math:`(m,)`.
        chunk_size: evaluate at most this many queries at a time, bounding memory to
            :math:`O(\text{chunk\_size} \cdot m \cdot k)` (forward and backward). ``None``
            evaluates all queries at once (fastest).

    Returns:
        Tensor of shape :math:`(n, k)`, on the device and dtype of ``z``.

    Raises:
        ValueError: wrong ranks or mismatched shapes, non-finite values, ``h <= 0``, an
            empty reference set, ids of the wrong length, an unknown kernel, or a query
            left with no reference point after exclusion.

    Differentiable with respect to ``z``, ``z_ref``, ``y_ref`` and ``h`` (first order;
    the Gaussian path uses a hand-written backward that does not support double
    backward).

    Examples::

        >>> z_ref = torch.linspace(-3, 3, 50).unsqueeze(1)
        >>> y_ref = torch.sigmoid(2 * z_ref)
        >>> out = nadaraya_watson(torch.zeros(1, 1), z_ref, y_ref, h=0.3)
        >>> round(out.item(), 3)
        0.5
    """
    z = _check_tensor("z", z, 2)
    z_ref = _check_tensor("z_ref", z_ref, 2)
    y_ref = _check_tensor("y_ref", y_ref, 2)
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
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if (query_ids is None) != (ref_ids is None):
        raise ValueError("query_ids and ref_ids must be given together (leave-one-out needs both), got only one")
    if query_ids is not None:
        query_ids = _check_ids("query_ids", query_ids, n, "n, the number of queries", z.device)
        ref_ids = _check_ids("ref_ids", ref_ids, m, "m, the number of reference points", z.device)
    h_t = _as_bandwidth(h, k, z)
    if n == 0:
        return z.new_zeros((0, k)) + 0 * h_t.sum()

    if kernel == "gaussian":
        out = _GaussianNW.apply(
            z.t().contiguous(), z_ref.t().contiguous(), y_ref.t().contiguous(), h_t, query_ids, ref_ids, chunk_size
        )
        return out.t()
    return _compact_nw(z, z_ref, y_ref, h_t, kernel, query_ids, ref_ids, chunk_size)


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

    def link(self, z) -> torch.Tensor:
        """The estimated link :math:`\\hat g(z)`: NW of the training targets on the training
        indices (no point left out), evaluated at ``z`` of shape (n,)."""
        z = _as_column("z", z, like=self.index)
        return nadaraya_watson(z, self.index.unsqueeze(1), self.targets.unsqueeze(1), self.bandwidth,
                               kernel=self.kernel)[:, 0]

    def predict(self, X) -> torch.Tensor:
        """:math:`\\hat g(X \\hat w)` for new rows ``X`` of shape (n, d)."""
        X = torch.as_tensor(X, dtype=self.w.dtype, device=self.w.device)
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
                raise ValueError("the leave-one-out objective is undefined: no point has a neighbour within the "
                                 "bandwidth (compact kernel); use a larger bandwidth or the gaussian kernel")
            loss.backward()
            history.append(float(loss.detach()))
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss, trimmed = objective(v, u)
        start_losses.append(float(loss))
        if best is None or float(loss) < best[0]:
            best = (float(loss), v.detach().clone(), float(bandwidth_of(u.detach())), history, trimmed)

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

    def index(w, step):
        z = X @ w
        if not bool(torch.isfinite(z).all()):
            raise ValueError(
                f"the index X @ w overflowed {X.dtype} at step {step}: lr={lr!r} is too large for the scale of X "
                "(the algorithm assumes |x| <= 1); rescale X or use a smaller lr"
            )
        return z

    with torch.no_grad():
        for step in range(steps):
            z = index(w, step).unsqueeze(1)
            if bandwidth is None:
                h = rule_of_thumb_bandwidth(z)
            u = nadaraya_watson(z, z, y.unsqueeze(1), h, kernel=kernel, query_ids=ids, ref_ids=ids)[:, 0]
            resid = y - u
            losses.append(float(resid.double().square().mean()))
            w = w + lr * (resid @ X) / m
            weights.append(w.clone())
        z = index(w, steps)
        if bandwidth is None:
            h = rule_of_thumb_bandwidth(z)
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
