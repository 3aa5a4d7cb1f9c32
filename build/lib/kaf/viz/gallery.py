"""Static figures shared by chapters (matplotlib)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch

__all__ = ["plot_activations"]


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
