r"""Figures shared by the book's chapters, and sliders that work with or without a kernel.

A view is a *drawing function* ``draw(fig, params)`` that fills a fresh figure for one
set of parameters. The same drawing function is shown two ways:

* :func:`jshtml_slider` precomputes one PNG per parameter set and returns HTML with a
  slider (matplotlib's ``FuncAnimation.to_jshtml``): it responds in a static web page,
  with no kernel and no external script.
* :func:`live_slider` wraps the drawing function in ipywidgets sliders that redraw on
  every move, for a running Jupyter kernel.

Two views are built on this: the Nadaraya–Watson fit as the bandwidth :math:`h` and the
calc size :math:`m` change (:func:`nw_view`), and FluidReLU with its derivatives as the
parameter :math:`a` changes (:func:`fluid_relu_view`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation

from kaf.estimators import nadaraya_watson

__all__ = [
    "MAX_FRAMES",
    "jshtml_slider",
    "live_slider",
    "calc_subset",
    "nw_calc_fit",
    "nw_loo_mse",
    "nw_loo_grid",
    "draw_nw_fit",
    "nw_view",
    "fluid_relu_curves",
    "draw_fluid_relu",
    "fluid_relu_view",
    "plot_activations",
]

#: Upper bound on precomputed frames: each frame is an embedded PNG, so the page grows
#: linearly with the count (about 20–40 kB per frame at the default size and dpi).
MAX_FRAMES = 40


# --------------------------------------------------------------------------- sliders


def jshtml_slider(
    draw: Callable,
    frames: Sequence,
    *,
    figsize=(9.0, 3.4),
    dpi: int = 72,
    interval: int = 500,
    max_frames: int = MAX_FRAMES,
):
    """A kernel-free slider over precomputed frames, as an ``IPython.display.HTML`` object.

    Each entry of ``frames`` is passed to ``draw(fig, frame)`` on a cleared figure and
    saved as one PNG; matplotlib's JavaScript player shows them with a slider and
    play buttons. Put a label for the frame in the figure itself (the player shows only
    the frame number).

    Args:
        draw: ``draw(fig, frame)`` fills ``fig`` for one frame.
        frames: the parameter sets, one per frame (1 ≤ len ≤ ``max_frames``).
        figsize, dpi: size of every frame in inches and dots per inch.
        interval: milliseconds between frames when playing.
        max_frames: refuse more frames than this (page size grows with each PNG).

    Returns:
        ``IPython.display.HTML`` holding the player (its ``.data`` is the HTML string).

    Examples::

        >>> def draw(fig, c):
        ...     fig.add_subplot().plot([0, 1], [0, c])
        >>> html = jshtml_slider(draw, [0.5, 1.0, 2.0], figsize=(2, 2), dpi=20)
        >>> html.data.count("data:image/png")
        3
    """
    from IPython.display import HTML

    frames = list(frames)
    if not 1 <= len(frames) <= max_frames:
        raise ValueError(f"frames must hold between 1 and {max_frames} entries, got {len(frames)}")
    if not (isinstance(dpi, int) and dpi > 0):
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    fig = plt.figure(figsize=figsize, dpi=dpi)

    def update(i):
        fig.clear()
        draw(fig, frames[i])
        return []

    anim = FuncAnimation(fig, update, frames=len(frames), interval=interval, blit=False, repeat=False)
    try:
        html = anim.to_jshtml(default_mode="once")
    finally:
        plt.close(fig)
    return HTML(html)


def live_slider(draw: Callable, *, figsize=(9.0, 3.4), **sliders):
    """The live twin of :func:`jshtml_slider`: ipywidgets sliders that redraw on every move.

    Args:
        draw: the same ``draw(fig, params)`` as for :func:`jshtml_slider`, called with a
            dict ``params`` of the current slider values.
        figsize: figure size in inches.
        **sliders: name -> ipywidgets control (or anything ``ipywidgets.interactive``
            accepts as an abbreviation, e.g. a ``(min, max, step)`` tuple).

    Returns:
        an ``ipywidgets.interactive`` widget (display it, or leave it last in a cell).
    """
    import ipywidgets as widgets

    if not sliders:
        raise ValueError("sliders must name at least one control, e.g. h=FloatLogSlider(...)")

    def redraw(**params):
        fig = plt.figure(figsize=figsize)
        draw(fig, params)
        plt.show()

    return widgets.interactive(redraw, **sliders)


# --------------------------------------------------------------------------- Nadaraya–Watson view


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
    seed), so a slider over m adds points instead of redrawing a new sample.

    Examples::

        >>> small, large = calc_subset(10, 3), calc_subset(10, 6)
        >>> bool((large[:3] == small).all())
        True
    """
    if not (isinstance(m, int) and 2 <= m <= n):
        raise ValueError(f"m must be an int with 2 <= m <= n={n}, got {m!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:m].to(device)


def nw_calc_fit(z_query, z, y, h, calc_idx: torch.Tensor, *, query_ids=None) -> torch.Tensor:
    r"""NW fit at ``z_query`` from the calc points ``(z[calc_idx], y[calc_idx])`` (1-D).

    ``query_ids`` (indices into ``z``) switch on leave-one-out: a query never uses the
    calc point that is itself. Returns shape (len(z_query),).
    """
    z, y, zq = _column("z", z), _column("y", y), _column("z_query", z_query)
    z_ref, y_ref = z[calc_idx].unsqueeze(1), y[calc_idx].unsqueeze(1).to(z.dtype)
    ref_ids = calc_idx if query_ids is not None else None
    return nadaraya_watson(zq.unsqueeze(1).to(z.dtype), z_ref, y_ref, float(h),
                           query_ids=query_ids, ref_ids=ref_ids)[:, 0]


def nw_loo_mse(z, y, h, calc_idx: torch.Tensor) -> float:
    r"""Leave-one-out error of the K-AF estimator with calc set ``C`` = ``calc_idx``:

    .. math::

        \frac1n\sum_{i=1}^n\Big(y_i - \hat g_{C\setminus\{i\}}(z_i)\Big)^2

    every training point predicted from the calc points other than itself.
    """
    z, y = _column("z", z), _column("y", y)
    ids = torch.arange(z.shape[0], device=z.device)
    with torch.no_grad():
        fit = nw_calc_fit(z, z, y, h, calc_idx, query_ids=ids)
    return float((fit - y.to(fit.dtype)).square().mean())


def nw_loo_grid(z, y, hs: Sequence[float], ms: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """:func:`nw_loo_mse` for every (m, h): array of shape (len(ms), len(hs))."""
    z = _column("z", z)
    out = np.empty((len(ms), len(hs)))
    for i, m in enumerate(ms):
        calc_idx = calc_subset(z.shape[0], int(m), seed=seed, device=z.device)
        for j, h in enumerate(hs):
            out[i, j] = nw_loo_mse(z, y, h, calc_idx)
    return out


def draw_nw_fit(fig, z, y, h: float, m: int, *, seed: int = 0, truth: Optional[Callable] = None,
                hs: Optional[Sequence[float]] = None, ms: Optional[Sequence[int]] = None,
                loo: Optional[np.ndarray] = None) -> None:
    """Draw the NW fit from a calc subset of size ``m`` with bandwidth ``h``.

    Left panel: every point (grey), the calc points (coloured), the fit and, if given,
    the true link ``truth(z)``; the title carries h, m and the leave-one-out error.
    Right panel (when ``hs``, ``ms`` and ``loo`` of shape (len(ms), len(hs)) are given):
    the leave-one-out error against h, one curve per m, the current (h, m) marked — a
    map of where the slider is.
    """
    z, y = _column("z", z), _column("y", y)
    calc_idx = calc_subset(z.shape[0], int(m), seed=seed, device=z.device)
    grid = torch.linspace(float(z.min()), float(z.max()), 300, dtype=z.dtype, device=z.device)
    with torch.no_grad():
        fit = nw_calc_fit(grid, z, y, h, calc_idx)
    err = nw_loo_mse(z, y, h, calc_idx)
    with_map = hs is not None and ms is not None and loo is not None
    ax = fig.add_subplot(1, 2 if with_map else 1, 1)
    zc, yc = z.cpu().numpy(), y.cpu().numpy()
    ax.scatter(zc, yc, s=8, color="0.75", label="data")
    ax.scatter(zc[calc_idx.cpu().numpy()], yc[calc_idx.cpu().numpy()], s=14, color="tab:blue",
               label=f"calc points (m = {m})")
    if truth is not None:
        ax.plot(grid.cpu().numpy(), np.asarray(truth(grid.cpu().numpy())), color="k", ls="--", lw=1, label="true link")
    ax.plot(grid.cpu().numpy(), fit.cpu().numpy(), color="tab:red", lw=2, label="NW fit")
    ax.set_xlabel("index z")
    ax.set_ylabel("y")
    ax.set_title(f"h = {h:.3g}, m = {m}: leave-one-out MSE {err:.4f}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if with_map:
        loo = np.asarray(loo)
        if loo.shape != (len(ms), len(hs)):
            raise ValueError(f"loo must have shape ({len(ms)}, {len(hs)}) = (len(ms), len(hs)), got {loo.shape}")
        ax2 = fig.add_subplot(1, 2, 2)
        for i, mi in enumerate(ms):
            ax2.plot(hs, loo[i], marker=".", label=f"m = {mi}")
        ax2.plot([h], [err], "o", ms=12, mfc="none", mec="k", mew=2)
        ax2.set_xscale("log")
        ax2.set_xlabel("bandwidth h")
        ax2.set_ylabel("leave-one-out MSE")
        ax2.set_title("where the slider is", fontsize=10)
        ax2.legend(fontsize=7)
    # fixed margins, not tight_layout: the layout solve costs more than the drawing
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.22)


def nw_view(z, y, hs: Sequence[float], ms: Sequence[int], *, live: bool = False, seed: int = 0,
            truth: Optional[Callable] = None, dpi: int = 72, figsize=(9.0, 3.4)):
    """The NW fit as h and m change.

    Static (``live=False``): one slider over the grid of (m, h) in row order — m outer,
    h inner — each frame labelled with its h and m and a right panel locating it on the
    leave-one-out curves. At most :data:`MAX_FRAMES` frames.
    Live (``live=True``): two ipywidgets sliders, h (log scale, over the range of
    ``hs``) and m (over the range of ``ms``).
    """
    z, y = _column("z", z), _column("y", y)
    if z.shape != y.shape:
        raise ValueError(f"y must have the shape of z {tuple(z.shape)}, got {tuple(y.shape)}")
    hs = [float(h) for h in hs]
    ms = [int(m) for m in ms]
    if not hs or not ms or min(hs) <= 0:
        raise ValueError("hs must be non-empty positive bandwidths and ms non-empty calc sizes")
    loo = nw_loo_grid(z, y, hs, ms, seed=seed)

    def draw(fig, params):
        draw_nw_fit(fig, z, y, params["h"], params["m"], seed=seed, truth=truth, hs=hs, ms=ms, loo=loo)

    if live:
        import ipywidgets as widgets

        lo, hi, step = math.log10(min(hs)), math.log10(max(hs)), 0.05
        # start on the slider's own grid of exponents, so readout and figure title agree
        start = 10 ** (lo + round((math.log10(hs[len(hs) // 2]) - lo) / step) * step)
        return live_slider(
            draw, figsize=figsize,
            h=widgets.FloatLogSlider(value=start, base=10, min=lo, max=hi, step=step, description="h"),
            m=widgets.IntSlider(value=ms[-1], min=min(ms), max=max(ms), step=1, description="m"),
        )
    frames = [{"h": h, "m": m} for m in ms for h in hs]
    return jshtml_slider(draw, frames, figsize=figsize, dpi=dpi)


# --------------------------------------------------------------------------- FluidReLU view


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


def draw_fluid_relu(fig, a: float, *, variants=("exp", "sigmoid"), v_range=(-6.0, 3.0)) -> None:
    r"""Three panels at parameter ``a``: :math:`f(v)`, :math:`\partial f/\partial v`,
    :math:`|\partial f/\partial a|` (log scale), one line per variant, ReLU and the
    identity (the two limits) dashed."""
    v = np.linspace(v_range[0], v_range[1], 361)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for variant in variants:
        f, dv, da = fluid_relu_curves(v, a, variant=variant)
        axes[0].plot(v, f, lw=2, label=variant)
        axes[1].plot(v, dv, lw=2, label=variant)
        neg = v < 0
        axes[2].semilogy(v[neg], np.maximum(np.abs(da[neg]), 1e-12), lw=2, label=variant)
    axes[0].plot(v, np.maximum(v, 0), "k--", lw=1, label="ReLU (a → −∞)")
    axes[0].plot(v, v, "k:", lw=1, label="identity (a → +∞)")
    axes[0].set_ylim(v_range[0], v_range[1])
    axes[0].set_title(f"f(v), a = {a:+.2f}", fontsize=10)
    axes[1].set_title("∂f/∂v", fontsize=10)
    axes[1].set_ylim(-0.25, 1.1)
    axes[2].set_title("|∂f/∂a| for v < 0", fontsize=10)
    axes[2].set_ylim(1e-6, 10)
    for ax in axes:
        ax.set_xlabel("v")
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.16, top=0.9, wspace=0.25)


def fluid_relu_view(a_values: Sequence[float], *, live: bool = False, variants=("exp", "sigmoid"),
                    dpi: int = 72, figsize=(10.0, 3.2)):
    """FluidReLU and its derivatives as ``a`` moves over ``a_values`` (static slider) or,
    with ``live=True``, over their range (ipywidgets slider)."""
    a_values = [float(a) for a in a_values]
    if not a_values:
        raise ValueError("a_values must hold at least one value of a")

    def draw(fig, params):
        draw_fluid_relu(fig, params["a"], variants=variants)

    if live:
        import ipywidgets as widgets

        return live_slider(draw, figsize=figsize,
                           a=widgets.FloatSlider(value=0.0 if min(a_values) <= 0 <= max(a_values) else a_values[0],
                                                 min=min(a_values), max=max(a_values), step=0.1, description="a"))
    return jshtml_slider(draw, [{"a": a} for a in a_values], figsize=figsize, dpi=dpi)


# --------------------------------------------------------------------------- activation gallery


def plot_activations(names: Optional[Sequence[str]] = None, *, v_range=(-4.0, 4.0), ncols: int = 4,
                     panel_size=(2.6, 2.1)):
    """One panel per registered activation: the function (solid) and its derivative (dashed),
    computed by autograd through ``kaf.nn.make_activation(name)`` at its default parameters.

    Returns the matplotlib figure.
    """
    from kaf.nn import ACTIVATIONS, make_activation

    names = list(ACTIVATIONS) if names is None else list(names)
    unknown = [n for n in names if n not in ACTIVATIONS]
    if unknown:
        raise ValueError(f"names must be registered activations {sorted(ACTIVATIONS)}, got unknown {unknown}")
    v = torch.linspace(v_range[0], v_range[1], 401, dtype=torch.float64)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                             squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, names):
        act = make_activation(name).double()
        # channel dimension of size 1, for the per-channel activations (PReLU, FluidReLU)
        x = v.clone().unsqueeze(1).requires_grad_(True)
        out = act(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        ax.plot(v.numpy(), out.detach()[:, 0].numpy(), lw=2, label="f")
        ax.plot(v.numpy(), grad[:, 0].numpy(), "--", lw=1.2, label="f′")
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_title(name, fontsize=10)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
