r"""The book's named experiments, each with a quick and a full size.

An :class:`Experiment` is a function from the scale to a list of configs (a sweep),
plus optional extras: ``post`` turns each trained model into extra tidy rows (the
learned link's shape, FluidReLU's learned :math:`a_i`) and ``compute`` produces a table
without training (the gradient-vanishing grid). :func:`run_experiment` runs one and
writes ``<out>/<name>.csv.gz`` (and ``<name>_<extra>.csv.gz``): gzip-compressed CSV
(the tables repeat every config field on every row, so they compress about tenfold;
``pandas.read_csv`` and :func:`kaf.experiments.analysis.load` read them directly).

Sizes (full scale; quick scale in the registry code) are chosen so that the whole
``reproduce --scale full`` fits on two CPU cores in well under half an hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kaf.estimators import nadaraya_watson
from kaf.experiments.config import ExperimentConfig
from kaf.experiments.train import prepare, run
from kaf.scale import get_scale, pick

__all__ = ["Experiment", "EXPERIMENTS", "get_experiment", "run_experiment", "run_experiments", "experiment_tasks",
           "OUTPUTS", "BASELINES", "dataset_defaults", "fit_logistic"]

#: fixed output activations the K-AF output is compared with (the thesis's list)
BASELINES = ("sigmoid", "tanh", "relu", "swish", "mish", "leaky_relu", "elu", "selu")
OUTPUTS = ("kaf",) + BASELINES
#: the smaller set of outputs used on the comparison axes
AXIS_OUTPUTS = ("kaf", "sigmoid", "tanh", "relu")


def dataset_defaults(dataset: str, scale: str | None = None) -> dict:
    """Per-data-set training defaults (the base every experiment varies from)."""
    if dataset == "mnist":
        return dict(dataset="mnist", hidden_size=128, batch_size=128, optimizer="adam", lr=0.005,
                    epochs=pick(2, 15, scale), calc_size=pick(200, 500, scale))
    if dataset == "house":
        return dict(dataset="house", hidden_size=32, batch_size=32, optimizer="adam", lr=0.01,
                    epochs=pick(15, 150, scale), target_transform="minmax")
    return dict(dataset=dataset, hidden_size=32, batch_size=16, optimizer="adam", lr=0.01,
                epochs=pick(15, 100, scale))


def _seeds(scale, quick=2, full=5):
    return tuple(range(pick(quick, full, scale)))


@dataclass(frozen=True)
class Experiment:
    """A named sweep. ``configs(scale)`` lists the runs; ``post(config, table, net, prepared)``
    returns ``{extra_name: DataFrame}`` per run; ``compute(scale)`` returns ``{extra_name: DataFrame}``."""

    name: str
    title: str
    chapter: str
    configs: Callable[[str], list] | None = None
    post: Callable | None = None
    compute: Callable | None = None


# ----------------------------------------------------------------------------- sweeps


def _baselines(scale):
    datasets = ("iris", "wine", "house", "mnist")
    return [ExperimentConfig(name="baselines", output=o, seed=s, **dataset_defaults(d, scale))
            for d in datasets for o in OUTPUTS for s in _seeds(scale, 2, 5 if d == "mnist" else 10)]


def _baselines_bias(scale):
    datasets = ("iris", "wine", "house", "mnist")
    return [ExperimentConfig(name="baselines_bias", output=o, bias=True, seed=s, **dataset_defaults(d, scale))
            for d in datasets for o in OUTPUTS for s in _seeds(scale, 1, 5 if d == "mnist" else 10)]


LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def _lr_sweep(scale):
    grid = pick((0.1, 10.0), LR_GRID, scale)
    out = []
    for d in ("iris", "wine"):
        base = dict(dataset_defaults(d, scale), optimizer="sgd", epochs=pick(10, 50, scale))
        out += [ExperimentConfig(name="lr_sweep", output=o, lr=lr, seed=s, **{k: v for k, v in base.items() if k != "lr"})
                for o in AXIS_OUTPUTS for lr in grid for s in _seeds(scale, 1, 10)]
    return out


INIT_GRID = (("default", 1.0), ("normal", 1.0), ("uniform", 1.0), ("xavier", 1.0), ("kaiming", 1.0),
             ("orthogonal", 1.0), ("normal", 0.1), ("normal", 0.3), ("normal", 3.0), ("normal", 10.0))


def _init_sweep(scale):
    grid = pick(INIT_GRID[:1] + INIT_GRID[-1:], INIT_GRID, scale)
    base = dict(dataset_defaults("wine", scale), epochs=pick(10, 60, scale))
    return [ExperimentConfig(name="init_sweep", output=o, init=i, init_scale=sc, seed=s, **base)
            for o in AXIS_OUTPUTS for i, sc in grid for s in _seeds(scale, 1, 3)]


REGULARIZERS = (("none", 0.0, 0.0), ("l1", 1e-3, 0.0), ("l2", 0.0, 1e-3))


def _regularizer(scale):
    out = []
    for d in ("iris", "wine"):
        base = dict(dataset_defaults(d, scale))
        out += [ExperimentConfig(name="regularizer", output=o, l1=l1, l2=l2, seed=s, tags=(f"reg={r}",), **base)
                for o in AXIS_OUTPUTS for r, l1, l2 in REGULARIZERS for s in _seeds(scale, 1, 5)]
    return out


#: optimiser -> learning rate (each at a usual value for it; momentum 0.9)
OPTIMIZER_LRS = {"sgd": 0.5, "momentum": 0.05, "adam": 0.01, "rmsprop": 0.003}


def _optimizer(scale):
    out = []
    for d in ("iris", "wine"):
        base = {k: v for k, v in dataset_defaults(d, scale).items() if k not in ("optimizer", "lr")}
        out += [ExperimentConfig(name="optimizer", output=o, optimizer=opt, lr=lr, seed=s, **base)
                for o in AXIS_OUTPUTS for opt, lr in OPTIMIZER_LRS.items() for s in _seeds(scale, 1, 5)]
    return out


MNIST_CALC_GRID = (10, 20, 50, 100, 200, 500, 1000, 0)
WINE_CALC_GRID = (3, 6, 12, 24, 48, 0)


def _calc_size(scale):
    out = []
    mnist = dict(dataset_defaults("mnist", scale), epochs=pick(1, 10, scale))
    for m in pick((20, 200), MNIST_CALC_GRID, scale):
        for s in _seeds(scale, 1, 3):
            out.append(ExperimentConfig(name="calc_size", output="kaf", seed=s, **{**mnist, "calc_size": m}))
    for m in pick((20,), (20, 100, 500), scale):  # random vs stratified at small m
        for s in _seeds(scale, 1, 3):
            out.append(ExperimentConfig(name="calc_size", output="kaf", seed=s, calc_policy="random",
                                        **{**mnist, "calc_size": m}))
    for s in _seeds(scale, 1, 3):  # the sigmoid reference for time and accuracy
        out.append(ExperimentConfig(name="calc_size", output="sigmoid", seed=s, **mnist))
    wine = dataset_defaults("wine", scale)
    for m in pick((6, 0), WINE_CALC_GRID, scale):
        for s in _seeds(scale, 1, 3):
            out.append(ExperimentConfig(name="calc_size", output="kaf", seed=s, **{**wine, "calc_size": m}))
    return out


#: paired seeds of the batch_reference experiment at full scale: (batch and fixed calc set,
#: the batch-size subset); more where the verdict sits near the edge of the tie band
BATCH_REFERENCE_SEEDS = {"iris": (20, 10), "wine": (20, 10), "house": (10, 10), "mnist": (8, 5)}


def _batch_reference(scale):
    """Each data set's K-AF network with three reference sets, paired by seed: the fixed
    calc set of the other experiments (MNIST: m = 500; the others: every training row),
    a fixed calc subset of one batch's size, and each batch itself (``reference="batch"``;
    evaluation then uses the fixed calc set). A seed's runs are adjacent, so their epoch
    times are measured under the same conditions. Quick scale: two seeds, no batch-size subset."""
    out = []
    for d in ("iris", "wine", "house", "mnist"):
        base = dataset_defaults(d, scale)
        if d == "mnist":
            base = dict(base, epochs=pick(1, 10, scale))
        paired, small = pick((2, 0), BATCH_REFERENCE_SEEDS[d], scale)
        for s in range(paired):
            arms = [dict(), dict(reference="batch")] + ([dict(calc_size=base["batch_size"])] if s < small else [])
            out += [ExperimentConfig(name="batch_reference", output="kaf", seed=s, **{**base, **arm}) for arm in arms]
    return out


def _link_shape(scale):
    return [ExperimentConfig(name="link_shape", output="kaf", seed=s, **dataset_defaults(d, scale))
            for d in ("iris", "wine", "mnist") for s in _seeds(scale, 1, 3)]


def fit_logistic(z: np.ndarray, g: np.ndarray) -> dict:
    r"""Least-squares fit of the 4-parameter logistic :math:`lo + (hi-lo)\,\sigma(c(z-d))` to ``g(z)``.

    Returns ``dict(lo, hi, c, d, rmse, r2, r2_linear, n_mid, r2_mid, fit_ok)`` where
    ``rmse`` is the distance :math:`\sqrt{\mathrm{mean}(g - \hat g)^2}` over the given
    points, ``r2`` its coefficient of determination, ``r2_linear`` that of the best
    straight line (a reference: a sigmoid should beat a line on a sigmoid-shaped link),
    and ``r2_mid`` the logistic's :math:`R^2` over the ``n_mid`` points of the transition
    region (fitted value 5–95 % of the way from ``lo`` to ``hi``; NaN when fewer than 5).
    """
    from scipy.optimize import curve_fit

    z = np.asarray(z, dtype=float)
    g = np.asarray(g, dtype=float)
    if z.shape != g.shape or z.ndim != 1 or len(z) < 5:
        raise ValueError(f"z and g must be 1-D of equal length >= 5, got {z.shape} and {g.shape}")

    def logistic(x, lo, hi, c, d):
        return lo + (hi - lo) / (1.0 + np.exp(-np.clip(c * (x - d), -60, 60)))

    sst = float(((g - g.mean()) ** 2).sum())
    slope = np.polyfit(z, g, 1)
    r2_lin = 1.0 - float(((g - np.polyval(slope, z)) ** 2).sum()) / sst if sst > 0 else 1.0
    spread = float(z.std()) or 1.0
    best = None
    # the link may rise or fall, and curve_fit is local: start from both signs
    for sign in (1.0, -1.0):
        p0 = (float(g.min()), float(g.max()), sign * 4.0 / spread, float(np.median(z)))
        try:
            params, _ = curve_fit(logistic, z, g, p0=p0, maxfev=20000)
        except RuntimeError:
            continue
        sse = float(((g - logistic(z, *params)) ** 2).sum())
        if best is None or sse < best[1]:
            best = (params, sse)
    if best is None:
        return dict(lo=math.nan, hi=math.nan, c=math.nan, d=math.nan, rmse=math.nan, r2=math.nan,
                    r2_linear=r2_lin, n_mid=0, r2_mid=math.nan, fit_ok=False)
    (lo, hi, c, d), sse = best
    # the transition region alone: points whose fitted value is between 5 % and 95 % of the
    # way from lo to hi (on a near-step link most points sit on the plateaus and make R² easy)
    fitted = logistic(z, lo, hi, c, d)
    frac = (fitted - lo) / (hi - lo) if hi != lo else np.zeros_like(z)
    mid = (frac > 0.05) & (frac < 0.95)
    sst_mid = float(((g[mid] - g[mid].mean()) ** 2).sum()) if mid.sum() else 0.0
    r2_mid = 1.0 - float(((g[mid] - fitted[mid]) ** 2).sum()) / sst_mid if mid.sum() >= 5 and sst_mid > 0 else math.nan
    return dict(lo=lo, hi=hi, c=c, d=d, rmse=math.sqrt(sse / len(z)), r2=1.0 - sse / sst if sst > 0 else 1.0,
                r2_linear=r2_lin, n_mid=int(mid.sum()), r2_mid=r2_mid, fit_ok=True)


def _link_shape_post(config, table, net, prep):
    """Per output unit: the learned link at the training indices, its logistic fit, and a curve grid."""
    fits, curves = [], []
    with torch.no_grad():
        z = net.index(prep.X_train)
        ids = torch.arange(prep.n_train, device=z.device)
        g = net.link(z, ids)
        z_ref = net.index(net.kernel_output.calc_x)
    z_np, g_np = z.cpu().numpy(), g.cpu().numpy()
    for k in range(z_np.shape[1]):
        fit = fit_logistic(z_np[:, k], g_np[:, k])
        fits.append(dict(dataset=config.dataset, seed=config.seed, unit=k, h=net.bandwidth(),
                         index_std=float(z_np[:, k].std()), link_range=float(g_np[:, k].max() - g_np[:, k].min()),
                         **fit))
        if config.seed == 0:
            lo_z, hi_z = np.quantile(z_np[:, k], [0.005, 0.995])
            grid = torch.linspace(float(lo_z), float(hi_z), 80, device=z.device)
            zq = z.new_zeros((80, z.shape[1]))
            zq[:, k] = grid
            with torch.no_grad():
                link = net.link(zq)[:, k].cpu().numpy()
            for zi, li in zip(grid.cpu().numpy(), link):
                fitted = (fit["lo"] + (fit["hi"] - fit["lo"]) / (1 + math.exp(-max(min(fit["c"] * (zi - fit["d"]), 60), -60)))
                          if fit["fit_ok"] else math.nan)
                curves.append(dict(dataset=config.dataset, seed=config.seed, unit=k, z=float(zi), link=float(li),
                                   logistic=fitted))
    del z_ref
    return {"fit": pd.DataFrame(fits), "curves": pd.DataFrame(curves)}


def _singular(scale):
    base = dict(dataset_defaults("wine", scale), optimizer="sgd", lr=0.5, init="normal", epochs=pick(20, 300, scale))
    return [ExperimentConfig(name="singular", output=o, init_scale=sc, seed=s, **base)
            for o in ("kaf", "sigmoid") for sc in pick((8.0,), (1.0, 4.0, 16.0), scale) for s in _seeds(scale, 1, 20)]


H_GRID = (0.01, 0.1, 0.5, 1.5, 5.0, 20.0, 100.0)


def _bandwidth(scale):
    base = dict(dataset_defaults("wine", scale), epochs=pick(10, 60, scale))
    out = []
    for sc in pick((1.0,), (0.1, 1.0, 10.0), scale):
        for s in _seeds(scale, 1, 3):
            out.append(ExperimentConfig(name="bandwidth", output="kaf", init_scale=sc, seed=s, tags=("learned",), **base))
            for h in pick((0.01, 1.5, 100.0), H_GRID, scale):
                out.append(ExperimentConfig(name="bandwidth", output="kaf", init_scale=sc, seed=s, bandwidth=h,
                                            learn_bandwidth=False, tags=("fixed",), **base))
    return out


def vanishing_grid(scale: str | None = None, *, seed: int = 0) -> dict:
    r"""Gradient of the K-AF loss with respect to the indices, over bandwidth :math:`h`, index spread :math:`s`
    and number of calc points :math:`m`.

    Indices :math:`z_i = s\,u_i` with :math:`u_i \sim \mathcal N(0,1)`, binary targets
    :math:`y_i = 1[u_i + 0.5\,\varepsilon_i > 0]`; the leave-one-out K-AF output on all
    :math:`m` points and the MSE loss :math:`L`. Records, scale-free (multiplied by :math:`s`,
    since :math:`L` depends on :math:`z` only through :math:`z/h`):
    ``grad_z_scaled`` :math:`= s\lVert\partial L/\partial z\rVert_2` and
    ``grad_z_median`` :math:`= s\,m\,\mathrm{median}_i|\partial L/\partial z_i|` (the typical
    point's gradient; the norm alone is dominated by a few points when :math:`h` is tiny),
    and :math:`|\partial L/\partial h|`.
    """
    rows = []
    spreads = pick((1.0,), (0.1, 10.0), scale)
    sizes = pick((200,), (50, 200, 800), scale)
    hs = np.logspace(-4, 3, pick(15, 43, scale))
    for m in sizes:
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(m, 1, generator=gen, dtype=torch.float64)
        y = ((u + 0.5 * torch.randn(m, 1, generator=gen, dtype=torch.float64)) > 0).double()
        ids = torch.arange(m)
        for s in spreads:
            for h in hs:
                z = (s * u).requires_grad_(True)
                ht = torch.tensor(float(h), dtype=torch.float64, requires_grad=True)
                # the reference indices are the same z (gradient flows through both, as in the thesis)
                g = nadaraya_watson(z, z, y, ht, query_ids=ids, ref_ids=ids)
                loss = ((g - y) ** 2).mean()
                dz, dh = torch.autograd.grad(loss, (z, ht))
                rows.append(dict(m=m, spread=s, h=float(h), h_over_spread=float(h) / s, loss=float(loss.detach()),
                                 grad_z=float(dz.norm()), grad_z_scaled=float(dz.norm()) * s,
                                 grad_z_median=float(dz.abs().median()) * s * m, grad_h=abs(float(dh))))
    return {"grid": pd.DataFrame(rows)}


def _house_scale(scale):
    base = {k: v for k, v in dataset_defaults("house", scale).items() if k not in ("target_transform", "optimizer", "lr")}
    base["epochs"] = pick(15, 100, scale)
    settings = (("raw", 1.0), ("raw", 1000.0), ("standard", 1000.0), ("minmax", 1000.0), ("learnable", 1000.0))
    out = []
    for opt, lr in (("adam", 0.01), ("sgd", 0.01)):
        for tt, mult in pick(settings[1:3], settings, scale):
            for o in ("kaf", "sigmoid", "identity"):
                for s in _seeds(scale, 1, 10):
                    out.append(ExperimentConfig(name="house_scale", output=o, optimizer=opt, lr=lr, target_transform=tt,
                                                y_multiplier=mult, seed=s, **base))
    return out


def _fluid_relu(scale):
    # the paper: momentum SGD, mu = 0.9, eps = 0.001, beta = 10000 on a, every a_i = 0 at start;
    # eps is used for the weights too and the batch size (unstated) is 16
    base = dict(name="fluid_relu", dataset="mnist", model="cnn", output="identity", loss="cross_entropy",
                optimizer="momentum", lr=0.001, momentum=0.9, batch_size=16, grad_scale=10000.0, fluid_init=0.0,
                epochs=pick(1, 8, scale))
    out = []
    for s in _seeds(scale, 1, 10):
        out.append(ExperimentConfig(hidden="relu", seed=s, **base))
        out.append(ExperimentConfig(hidden="fluid_relu", fluid_variant="exp", seed=s, **base))
        out.append(ExperimentConfig(hidden="fluid_relu", fluid_variant="sigmoid", seed=s, **base))
    return out


def _fluid_post(config, table, net, prep):
    if config.hidden != "fluid_relu":
        return {}
    rows = []
    for layer, act in (("conv1", net.body.act1), ("conv2", net.body.act2)):
        for ch, a in enumerate(act.a.detach().cpu().tolist()):
            rows.append(dict(hidden=config.hidden, fluid_variant=config.fluid_variant, seed=config.seed,
                             layer=layer, channel=ch, a=a))
    return {"a": pd.DataFrame(rows)}


#: the likelihood experiment's data sets: the thesis's three classification sets and breast cancer (binary)
LIKELIHOOD_DATASETS = ("iris", "wine", "breast_cancer", "mnist")
LIKELIHOOD_LOSSES = ("mse", "nll")


def _likelihood(scale):
    # paired seeds: the two losses of one seed share initial weights, calc subset and batch order
    return [ExperimentConfig(name="likelihood", output="kaf", loss=loss, seed=s, **dataset_defaults(d, scale))
            for d in LIKELIHOOD_DATASETS for loss in LIKELIHOOD_LOSSES for s in _seeds(scale, 2, 10)]


def _likelihood_post(config, table, net, prep):
    """Every trained K-AF scored on the test set by both criteria (and accuracy), whatever it was trained on."""
    from kaf.experiments.train import EVAL_CHUNK, kaf_nll

    with torch.no_grad():
        out = torch.cat([net(prep.X_test[lo:lo + EVAL_CHUNK]) for lo in range(0, prep.X_test.shape[0], EVAL_CHUNK)])
        target = prep.T_test
        row = dict(dataset=config.dataset, loss=config.loss, seed=config.seed, n_classes=prep.n_outputs,
                   test_accuracy=float((out.argmax(1) == prep.labels_test).float().mean()),
                   test_brier=float(((out - target) ** 2).sum(1).mean()),
                   test_nll=float(kaf_nll(out, target)),
                   mean_row_sum=float(out.sum(1).mean()), h=net.bandwidth())
    return {"scores": pd.DataFrame([row])}


EXPERIMENTS = {e.name: e for e in [
    Experiment("baselines", "K-AF output vs fixed output activations on four data sets", "book/experiments/baselines",
               configs=_baselines),
    Experiment("baselines_bias", "The same comparison with biases in both linear layers (not in appendix B)",
               "book/experiments/baselines", configs=_baselines_bias),
    Experiment("lr_sweep", "Learning-rate sweep with plain SGD (log grid)", "book/experiments/axes", configs=_lr_sweep),
    Experiment("init_sweep", "Initial values: schemes and scales", "book/experiments/axes", configs=_init_sweep),
    Experiment("regularizer", "Regulariser: none, L1, L2", "book/experiments/axes", configs=_regularizer),
    Experiment("optimizer", "Optimiser: SGD, momentum, Adam, RMSprop", "book/experiments/axes", configs=_optimizer),
    Experiment("calc_size", "Accuracy and time against the calc-subset size m", "book/experiments/calc_size",
               configs=_calc_size),
    Experiment("batch_reference", "Each batch as the K-AF reference set vs fixed calc sets, paired by seed",
               "book/experiments/calc_size", configs=_batch_reference),
    Experiment("link_shape", "Shape of the learned K-AF link against a fitted sigmoid", "book/experiments/link_shape",
               configs=_link_shape, post=_link_shape_post),
    Experiment("singular", "Plateaus and saturation: sigmoid vs K-AF from large initial weights",
               "book/experiments/gradients", configs=_singular),
    Experiment("bandwidth", "Training with fixed bandwidths vs the learned one", "book/experiments/gradients",
               configs=_bandwidth),
    Experiment("vanishing", "K-AF gradient against bandwidth and index spread (no training)",
               "book/experiments/gradients", compute=vanishing_grid),
    Experiment("house_scale", "Raw vs standardised vs learnable-scale house-price targets",
               "book/experiments/large_targets", configs=_house_scale),
    Experiment("fluid_relu", "FluidReLU vs ReLU in the paper's MNIST CNN", "book/experiments/fluid_relu",
               configs=_fluid_relu, post=_fluid_post),
    Experiment("likelihood", "K-AF trained by likelihood (Klein-Spady) vs squared error (the thesis)",
               "book/experiments/likelihood", configs=_likelihood, post=_likelihood_post),
]}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"name must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name]


def experiment_configs(name: str, scale: str | None = None, *, seeds: int | None = None,
                       device: str | None = None) -> list:
    """The configs of experiment ``name`` at ``scale``, optionally with ``seeds`` seeds (0..N-1) and on ``device``."""
    exp = get_experiment(name)
    scale = get_scale(scale)
    if exp.configs is None:
        return []
    configs = exp.configs(scale)
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {seeds!r}")
        unique = list(dict.fromkeys(c.replace(seed=0) for c in configs))
        configs = [c.replace(seed=s) for c in unique for s in range(seeds)]
    if device is not None:
        configs = [c.replace(device=device) for c in configs]
    return configs


def experiment_tasks(name: str, scale: str | None = None, *, seeds: int | None = None,
                     device: str | None = None) -> list:
    """The tasks (:class:`~kaf.experiments.sweep.Task`) of experiment ``name``: its ``compute`` step
    (if any), then one training run per config, in the order of :func:`experiment_configs`."""
    from kaf.experiments.sweep import Task

    exp = get_experiment(name)
    scale = get_scale(scale)
    tasks = [Task(name, compute=exp.compute, scale=scale)] if exp.compute is not None else []
    tasks += [Task(name, config=c, post=exp.post) for c in experiment_configs(name, scale, seeds=seeds, device=device)]
    return tasks


def run_experiments(names, scale: str | None = None, *, seeds: int | None = None, device: str | None = None,
                    out: str | Path | None = None, progress: bool = True, jobs: int = 1, dask: str | None = None,
                    fresh: bool = False, on_experiment=None):
    """Run the experiments ``names`` as one sweep; return a :class:`~kaf.experiments.sweep.SweepResult`.

    All their runs share one pool of workers (``jobs`` local processes, or the Dask
    scheduler at ``dask``), longest first; each experiment's tables are written to
    ``out`` as soon as its last run ends, and every finished run is recorded in
    ``out/runs/`` so that a killed sweep resumes where it stopped (``fresh=True``
    recomputes). See :func:`kaf.experiments.sweep.run_sweep`.
    """
    from kaf.experiments.sweep import run_sweep

    scale = get_scale(scale)
    experiments = {name: experiment_tasks(name, scale, seeds=seeds, device=device) for name in names}
    return run_sweep(experiments, out=out, jobs=jobs, dask=dask, fresh=fresh, progress=progress,
                     on_experiment=on_experiment)


def run_experiment(name: str, scale: str | None = None, *, seeds: int | None = None, device: str | None = None,
                   out: str | Path | None = None, progress: bool = True, jobs: int = 1, dask: str | None = None,
                   fresh: bool = False) -> dict:
    """Run experiment ``name``; return ``{table_name: DataFrame}`` and write each as ``<out>/<table_name>.csv.gz``.

    The main table is called ``name``; extras are ``name_<extra>``. ``out=None`` writes nothing.
    ``jobs``, ``dask`` and ``fresh`` as in :func:`run_experiments`; the tables do not
    depend on them (rows in config order; only the timing columns differ between executions).
    """
    return run_experiments([name], scale, seeds=seeds, device=device, out=out, progress=progress, jobs=jobs,
                           dask=dask, fresh=fresh).tables[name]
