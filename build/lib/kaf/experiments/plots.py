"""Figures of the experiment chapters (matplotlib), all drawn from tidy result tables.

Every function takes a table (as written by :func:`kaf.experiments.registry.run_experiment`
or read by :func:`kaf.experiments.analysis.load`) and returns the matplotlib ``Figure``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kaf.experiments.analysis import final_rows, summarize

__all__ = ["curves", "summary_bars", "lr_sweep", "calc_size", "link_shape", "singular", "vanishing",
           "house_scale", "fluid_a", "paired_differences", "reference_differences"]

OUTPUT_COLORS = {"kaf": "C3", "sigmoid": "C0", "tanh": "C1", "relu": "C2", "swish": "C4", "mish": "C5",
                 "leaky_relu": "C6", "elu": "C7", "selu": "C8", "identity": "C9"}


def _color(name):
    return OUTPUT_COLORS.get(name, None)


def curves(table: pd.DataFrame, y: str = "test_metric", hue: str = "output", *, panels: str | None = "dataset",
           logy: bool = False, title: str | None = None):
    """Mean (line) ± sd (band) over seeds of ``y`` against epoch, one line per ``hue``, one panel per ``panels``."""
    groups = list(table[panels].unique()) if panels else [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        sub = table if g is None else table[table[panels] == g]
        for h, d in sub.groupby(hue, sort=False):
            stats = d.groupby("epoch")[y].agg(["mean", "std"]).fillna(0.0)
            (line,) = ax.plot(stats.index, stats["mean"], label=str(h), color=_color(h), lw=2 if h == "kaf" else 1)
            # the band takes the line's colour (also for a hue without a fixed colour)
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(y)
        if logy:
            ax.set_yscale("log")
        if g is not None:
            ax.set_title(str(g))
    axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def summary_bars(table: pd.DataFrame, *, by: str = "output", panels: str = "dataset"):
    """Final test metric, mean ± sd over seeds, one bar per ``by``, one panel per ``panels``."""
    s = summarize(table, [panels, by, "metric"])
    groups = list(s[panels].unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        d = s[s[panels] == g]
        colors = [_color(o) or "grey" for o in d[by]]
        ax.bar(range(len(d)), d["mean"], yerr=d["sd"], color=colors, capsize=2)
        ax.set_xticks(range(len(d)), d[by], rotation=60, fontsize=7)
        metric = d.metric.iloc[0]
        ax.set_ylabel(f"test {metric}")
        if metric == "accuracy":
            lo = max(0.0, float((d["mean"] - d["sd"]).min()) - 0.05)
            ax.set_ylim(lo, 1.0)
        ax.set_title(str(g))
    fig.tight_layout()
    return fig


def lr_sweep(table: pd.DataFrame):
    """Final test accuracy against the SGD learning rate (log axis); × marks diverged runs."""
    s = summarize(table, ["dataset", "output", "lr"])
    groups = list(s.dataset.unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.3), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for o, d in s[s.dataset == g].groupby("output", sort=False):
            d = d.sort_values("lr")
            ax.errorbar(d.lr, d["mean"], yerr=d["sd"], label=o, color=_color(o), marker="o", ms=3, capsize=2,
                        lw=2 if o == "kaf" else 1)
            div = d[d.diverged > 0]
            ax.scatter(div.lr, np.zeros(len(div)) + 0.02, marker="x", color=_color(o), s=30)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("learning rate (plain SGD)")
        ax.set_ylabel("final test accuracy")
        ax.set_title(g)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def calc_size(table: pd.DataFrame, dataset: str = "mnist"):
    """Accuracy and epoch time of K-AF against the calc-subset size m (m = n_train for 'all')."""
    d = table[(table.dataset == dataset) & (table.output == "kaf")].copy()
    d["m"] = np.where(d.calc_size == 0, d.n_train, d.calc_size)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.3))
    for pol, g in d.groupby("calc_policy"):
        s = summarize(g, ["m"]).sort_values("m")
        a1.errorbar(s.m, s["mean"], yerr=s["sd"], marker="o", ms=3, capsize=2, label=f"K-AF ({pol})")
        t = g.groupby("m").epoch_time.median()
        a2.plot(t.index, t.values, marker="o", ms=3, label=f"K-AF ({pol})")
    ref = table[(table.dataset == dataset) & (table.output == "sigmoid")]
    if len(ref):
        acc = final_rows(ref).test_metric.mean()
        a1.axhline(acc, color=_color("sigmoid"), ls="--", label="sigmoid output")
        a2.axhline(ref.epoch_time.median(), color=_color("sigmoid"), ls="--", label="sigmoid output")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("calc points m")
        ax.legend(fontsize=7)
    a1.set_ylabel("final test accuracy")
    a2.set_ylabel("seconds per training epoch")
    a2.set_yscale("log")
    fig.suptitle(f"{dataset}: K-AF against the calc-subset size")
    fig.tight_layout()
    return fig


def link_shape(curves_table: pd.DataFrame, fits: pd.DataFrame, dataset: str, max_units: int = 4):
    """The learned link G_k(z) of a few output units (seed 0) and its fitted 4-parameter logistic."""
    c = curves_table[curves_table.dataset == dataset]
    units = sorted(c.unit.unique())[:max_units]
    fig, axes = plt.subplots(1, len(units), figsize=(3.3 * len(units), 3.0), squeeze=False)
    for ax, k in zip(axes[0], units):
        d = c[c.unit == k]
        f = fits[(fits.dataset == dataset) & (fits.unit == k) & (fits.seed == d.seed.iloc[0])].iloc[0]
        ax.plot(d.z, d.link, color=_color("kaf"), lw=2, label="learned K-AF link")
        ax.plot(d.z, d.logistic, color=_color("sigmoid"), ls="--", label="fitted logistic")
        ax.set_title(f"unit {k}: R²={f.r2:.3f}, dist={f.rmse:.3f}", fontsize=9)
        ax.set_xlabel("index z")
    axes[0][0].set_ylabel("output")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: learned link vs fitted sigmoid")
    fig.tight_layout()
    return fig


def singular(table: pd.DataFrame):
    """Per initial scale (rows): test accuracy, body gradient norm, saturated fraction over epochs."""
    scales = sorted(table.init_scale.unique())
    cols = (("test_metric", "test accuracy", False), ("grad_norm", "body gradient norm", True),
            ("saturated_frac", "saturated outputs", False))
    fig, axes = plt.subplots(len(scales), 3, figsize=(11, 2.6 * len(scales)), squeeze=False)
    for r, sc in enumerate(scales):
        sub = table[table.init_scale == sc]
        for c, (col, label, logy) in enumerate(cols):
            ax = axes[r][c]
            for (o, seed), d in sub.groupby(["output", "seed"], sort=False):
                ax.plot(d.epoch, d[col], color=_color(o), alpha=0.6, lw=1, label=o if seed == 0 else None)
            if logy:
                ax.set_yscale("log")
            ax.set_title(f"init scale {sc:g}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def vanishing(grid: pd.DataFrame):
    """Typical point's scale-free gradient of the K-AF loss against h / spread, one line per (m, spread)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.3))
    for (m, s), g in grid.groupby(["m", "spread"]):
        a1.plot(g.h_over_spread, g.grad_z_median, marker=".", label=f"m={m}, spread={s:g}")
        a2.plot(g.h_over_spread, g.loss, marker=".", label=f"m={m}, spread={s:g}")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("h / spread of the indices")
    a1.set_yscale("symlog", linthresh=1e-6)
    a1.set_ylim(bottom=0.0)  # the gradient magnitude is never negative
    a1.set_ylabel("s·m·median |∂L/∂z_i|")
    a2.set_ylabel("leave-one-out loss")
    a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def house_scale(table: pd.DataFrame):
    """Final test RMSE (raw units) per target handling, output and optimiser; diverged runs marked."""
    s = summarize(table, ["optimizer", "target_transform", "y_multiplier", "output"])
    s["setting"] = s.target_transform + np.where(s.y_multiplier == 1.0, " (×1)", "")
    opts = list(s.optimizer.unique())
    fig, axes = plt.subplots(1, len(opts), figsize=(5.5 * len(opts), 3.4), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        d = s[(s.optimizer == opt) & (s.y_multiplier == 1000.0)]
        settings = list(d.setting.unique())
        outputs = list(d.output.unique())
        w = 0.8 / len(outputs)
        for i, o in enumerate(outputs):
            e = d[d.output == o].set_index("setting").reindex(settings)
            x = np.arange(len(settings)) + i * w
            ax.bar(x, e["mean"].fillna(0), yerr=e["sd"].fillna(0), width=w, color=_color(o), label=o, capsize=2)
            for xi, dv, n in zip(x, e.diverged.fillna(0), e.n.fillna(0)):
                if dv > 0:
                    # at the foot of the axis (a log axis has no 0): how many seeds diverged
                    ax.text(xi, 0.02, f"{dv:.0f} diverged" if n == 0 else f"{dv:.0f} div.", ha="center",
                            va="bottom", fontsize=6, rotation=90, color=_color(o) or "k",
                            transform=ax.get_xaxis_transform())
        ax.set_xticks(np.arange(len(settings)) + 0.4 - w / 2, settings)
        ax.set_yscale("log")
        ax.set_ylabel("test RMSE (dollars)")
        ax.set_title(f"{opt}: targets in dollars")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def fluid_a(a_table: pd.DataFrame):
    """Histograms of the learned FluidReLU a_i, per layer and variant (all seeds pooled)."""
    variants = list(a_table.fluid_variant.unique())
    layers = list(a_table.layer.unique())
    fig, axes = plt.subplots(len(variants), len(layers), figsize=(4.2 * len(layers), 2.8 * len(variants)),
                             squeeze=False)
    for r, v in enumerate(variants):
        for c, layer in enumerate(layers):
            d = a_table[(a_table.fluid_variant == v) & (a_table.layer == layer)].a
            axes[r][c].hist(d, bins=30, color="C1" if v == "exp" else "C4")
            axes[r][c].axvline(0.0, color="k", lw=0.8, ls=":")
            axes[r][c].set_title(f"{v}: {layer} (mean {d.mean():+.2f})", fontsize=9)
            axes[r][c].set_xlabel("learned a_i")
    fig.tight_layout()
    return fig


def paired_differences(table: pd.DataFrame, *, by: str, a, b, value: str = "test_metric", groups: str = "dataset",
                       tol: float | None = None, ylabel: str | None = None):
    """Per group: the paired (same seed) differences ``value[a] - value[b]`` as dots, their mean and 95 %
    t-interval (:func:`kaf.experiments.analysis.paired_ci`) as a bar, and the tie band ``±tol`` shaded."""
    from kaf.experiments.analysis import paired_ci

    fin = final_rows(table)
    names = list(table[groups].unique())  # in the order the runs were made
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.2))
    if tol is not None:
        ax.axhspan(-tol, tol, color="0.9", zorder=0, label=f"tie band ±{tol:g}")
    ax.axhline(0.0, color="k", lw=0.8)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for x, g in enumerate(names):
        d = fin[fin[groups] == g]
        va = d[d[by] == a].set_index("seed")[value]
        vb = d[d[by] == b].set_index("seed")[value]
        seeds = sorted(set(va.index) & set(vb.index))
        diff = va.loc[seeds].values - vb.loc[seeds].values
        ax.scatter(x + 0.08 * rng.standard_normal(len(diff)), diff, s=12, color="0.45", zorder=2)
        if len(diff) >= 2 and np.isfinite(diff).all():
            mean, half = paired_ci(va.loc[seeds].values, vb.loc[seeds].values)
            ax.errorbar(x + 0.3, mean, yerr=half, fmt="o", color="C3", capsize=4, zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.2)
    ax.set_ylabel(ylabel or f"{value}: {a} − {b} (same seed)")
    if tol is not None:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def reference_differences(pairs: pd.DataFrame, acc_tol: float = 0.01, rmse_tol: float = 0.05):
    """Per data set, the paired (same seed) difference between each batch-as-reference run and
    the fixed-calc-set run (accuracy: batch − calc; RMSE: batch/calc − 1, so below 0 is better),
    one dot per seed, with the mean and the tie band; ``pairs`` from
    :func:`kaf.experiments.verdicts.reference_pairs`."""
    order = ("iris", "wine", "mnist", "house")
    datasets = sorted(dict.fromkeys(pairs.dataset), key=lambda d: (order.index(d) if d in order else len(order), d))
    fig, axes = plt.subplots(1, len(datasets), figsize=(2.4 * len(datasets), 3.0), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        d = pairs[pairs.dataset == ds]
        acc = d.metric.iloc[0] == "accuracy"
        tol = acc_tol if acc else rmse_tol
        for x, col, color in ((0, "calc", "C3"), (1, "calc_batch_size", "C7")):
            if d[col].notna().sum() == 0:
                continue
            diff = (d.batch - d[col]) if acc else (d.batch / d[col] - 1)
            jitter = np.linspace(-0.12, 0.12, len(diff))
            ax.plot(x + jitter, diff, "o", ms=3, color=color, alpha=0.7)
            ax.plot([x - 0.25, x + 0.25], [diff.mean()] * 2, color=color, lw=2)
        ax.axhspan(-tol, tol, color="0.85", zorder=0)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xticks([0, 1], [f"m={int(d.m.iloc[0])}", f"m={int(d.batch_size.iloc[0])}"], fontsize=8)
        ax.set_xlim(-0.5, 1.5)
        ax.set_xlabel("against the fixed calc set", fontsize=8)
        ax.set_title(ds, fontsize=9)
        ax.set_ylabel("batch − fixed calc set" if acc else "RMSE batch / fixed − 1", fontsize=8)
    fig.suptitle("the batch as reference set against fixed calc sets (grey: tie band)", fontsize=9)
    fig.tight_layout()
    return fig
