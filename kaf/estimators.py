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
from typing import Optional

import torch

__all__ = ["KERNELS", "nadaraya_watson"]

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


def _loo_pairs(query_ids, ref_ids, lo, hi):
    mask = _loo_mask(query_ids, ref_ids, lo, hi)
    return None if mask is None else torch.nonzero(mask, as_tuple=True)


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
        for lo, hi in _chunks(a.shape[1], chunk_size):
            w = _gaussian_weights(a_s[:, lo:hi], b_s, _loo_pairs(query_ids, ref_ids, lo, hi))
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
        scale = (1.0 / (math.sqrt(2.0) * h)).unsqueeze(1)
        a_s, b_s = a * scale, b * scale
        s = (1.0 / h**2).unsqueeze(1)  # (k, 1)
        # centre the targets too: only differences y_j - o_i enter
        y_centre = y.mean(1, keepdim=True)
        yc, oc = y - y_centre, out - y_centre
        yb, b2 = yc * b, b.square()
        grad_a = torch.empty_like(a) if need_a else None
        grad_h = torch.zeros_like(h)
        col = torch.zeros((4,) + b.shape, dtype=b.dtype, device=b.device)
        for lo, hi in _chunks(a.shape[1], chunk_size):
            w = keep if keep is not None else _gaussian_weights(
                a_s[:, lo:hi], b_s, _loo_pairs(query_ids, ref_ids, lo, hi)
            )
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
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
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
