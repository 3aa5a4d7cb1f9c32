r"""The numbers the book's views show, computed with :mod:`kaf` itself.

These functions give each view its initial state (computed in Python, before any
control moves) and are the reference that ``tests/test_browser.py`` holds the
browser-side computation (``views.mjs``) against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from kaf.estimators import nadaraya_watson

__all__ = [
    "calc_subset",
    "nw_calc_fit",
    "nw_loo_mse",
    "nw_loo_grid",
    "kaf_loo_gradient",
    "typical_gradient",
    "fluid_relu_curves",
]


def _column(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,) or (n, 1), got shape {tuple(x.shape)}")
    return x


def calc_subset(n: int, m: int, *, seed: int = 0, device=None) -> torch.Tensor:
    """The first ``m`` entries of a seeded permutation of ``range(n)``.

    Nested in ``m``: the calc set of size m is contained in that of size m' > m (same
    seed), so a control over m adds points instead of drawing a new sample.

    Examples::

        >>> small, large = calc_subset(10, 3), calc_subset(10, 6)
        >>> bool((large[:3] == small).all())
        True
    """
    if not (isinstance(m, int) and 2 <= m <= n):
        raise ValueError(f"m must be an int with 2 <= m <= n={n}, got {m!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:m].to(device)


def nw_calc_fit(z_query, z, y, h, calc_idx: torch.Tensor, *, query_ids=None, kernel: str = "gaussian") -> torch.Tensor:
    r"""NW fit at ``z_query`` from the calc points ``(z[calc_idx], y[calc_idx])`` (1-D).

    ``query_ids`` (indices into ``z``) switch on leave-one-out: a query never uses the
    calc point that is itself. Returns shape (len(z_query),).
    """
    z, y, zq = _column("z", z), _column("y", y), _column("z_query", z_query)
    z_ref, y_ref = z[calc_idx].unsqueeze(1), y[calc_idx].unsqueeze(1).to(z.dtype)
    ref_ids = calc_idx if query_ids is not None else None
    return nadaraya_watson(zq.unsqueeze(1).to(z.dtype), z_ref, y_ref, h, kernel=kernel,
                           query_ids=query_ids, ref_ids=ref_ids)[:, 0]


def nw_loo_mse(z, y, h, calc_idx: torch.Tensor, *, kernel: str = "gaussian") -> float:
    r"""Leave-one-out error of the K-AF estimator with calc set ``C`` = ``calc_idx``:

    .. math::

        L = \frac1n\sum_{i=1}^n\Big(y_i - \hat g_{C\setminus\{i\}}(z_i)\Big)^2

    every training point predicted from the calc points other than itself.
    """
    z, y = _column("z", z), _column("y", y)
    ids = torch.arange(z.shape[0], device=z.device)
    with torch.no_grad():
        fit = nw_calc_fit(z, z, y, float(h), calc_idx, query_ids=ids, kernel=kernel)
    return float((fit - y.to(fit.dtype)).square().mean())


def nw_loo_grid(z, y, hs: Sequence[float], ms: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """:func:`nw_loo_mse` for every (m, h), calc sets from :func:`calc_subset`: shape (len(ms), len(hs))."""
    z = _column("z", z)
    out = np.empty((len(ms), len(hs)))
    for i, m in enumerate(ms):
        calc_idx = calc_subset(z.shape[0], int(m), seed=seed, device=z.device)
        for j, h in enumerate(hs):
            out[i, j] = nw_loo_mse(z, y, h, calc_idx)
    return out


def kaf_loo_gradient(z, y, h, calc_idx: torch.Tensor):
    r"""The leave-one-out error :math:`L` of :func:`nw_loo_mse` (Gaussian kernel) and its
    gradient :math:`\partial L/\partial z_i` with respect to every index.

    As in the K-AF layer, a calc point's index is the same variable as its index as a
    query, so the gradient flows through both sides of the estimator. Computed by
    autograd through :func:`kaf.estimators.nadaraya_watson`; several bandwidths are
    evaluated in one call, as that many output units with one bandwidth each.

    Args:
        z, y: the sample, 1-D of length n.
        h: a bandwidth, or a 1-D sequence of k bandwidths.
        calc_idx: the calc set (indices into z).

    Returns:
        ``(loss, grad)``: a float and a tensor of shape (n,) for a single ``h``; tensors
        of shape (k,) and (n, k) for a sequence.
    """
    z, y = _column("z", z), _column("y", y)
    single = np.ndim(h) == 0
    hs = torch.as_tensor(np.atleast_1d(np.asarray(h, dtype=np.float64)), dtype=z.dtype, device=z.device)
    n, k = z.shape[0], hs.shape[0]
    zz = z.detach()[:, None].expand(n, k).clone().requires_grad_(True)
    yy = y.to(z.dtype)[:, None].expand(n, k)
    ids = torch.arange(n, device=z.device)
    fit = nadaraya_watson(zz, zz[calc_idx], yy[calc_idx], hs, query_ids=ids, ref_ids=calc_idx)
    loss = (fit - yy).square().mean(dim=0)
    (grad,) = torch.autograd.grad(loss.sum(), zz)  # column k holds dL_k/dz: the columns do not mix
    loss = loss.detach()
    return (float(loss[0]), grad[:, 0]) if single else (loss, grad)


def typical_gradient(z, y, h, calc_idx: torch.Tensor):
    r"""The typical point's gradient :math:`n\,\mathrm{median}_i|\partial L/\partial z_i|`
    (:func:`kaf_loo_gradient`); a float for one ``h``, a numpy array for a sequence.

    The measure of ``book/experiments/gradients.ipynb``: the gradient norm alone is
    dominated by the few points at a step of the fit when :math:`h` is tiny. The median
    is :func:`torch.median`'s (the lower of the two middle values for even n).
    """
    _, grad = kaf_loo_gradient(z, y, h, calc_idx)
    typical = grad.abs().median(dim=0).values * grad.shape[0]
    return float(typical) if np.ndim(h) == 0 else typical.cpu().numpy()


def fluid_relu_curves(v, a: float, *, variant: str = "exp"):
    r"""FluidReLU :math:`f(v)`, :math:`\partial f/\partial v` and :math:`\partial f/\partial a` at each v.

    Computed by autograd through :class:`kaf.nn.FluidReLU` (``grad_scale=1``, so the
    derivative in ``a`` is the raw one, before any β). One channel per point of ``v``
    (input shape (1, n)) makes the per-channel gradient of ``a`` the pointwise
    :math:`\partial f(v_i)/\partial a`.

    Returns three numpy arrays shaped like ``v`` (1-D).
    """
    from kaf.nn import FluidReLU

    v = torch.as_tensor(v, dtype=torch.float64).flatten()
    n = v.shape[0]
    act = FluidReLU(num_parameters=n, init=float(a), variant=variant).double()
    with torch.no_grad():  # the module stores init in float32; set a exactly in float64
        act.a.fill_(float(a))
    x = v.clone().unsqueeze(0).requires_grad_(True)
    out = act(x)
    out.sum().backward()
    return out.detach()[0].numpy(), x.grad[0].numpy(), act.a.grad.detach().numpy()
