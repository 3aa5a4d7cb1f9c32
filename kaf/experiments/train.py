r"""The training loop: :func:`run` turns an :class:`ExperimentConfig` into a tidy table.

One row per (seed, epoch) with the config's columns plus

============== ==========================================================================
column         meaning
============== ==========================================================================
epoch          1, 2, ... (the state after that many passes)
batch_loss     mean training loss over the epoch's mini-batches (penalty excluded)
train_loss     loss on the training set after the epoch (K-AF: leave-one-out; at most
               ``EVAL_TRAIN_MAX`` rows, likewise for train_metric, index_std, saturated_frac)
test_loss      loss on the test set (K-AF: nothing left out)
metric         ``accuracy`` (argmax) or ``rmse`` (regression, raw target units)
train_metric   the metric on the training set
test_metric    the metric on the test set
grad_norm      mean over the epoch's batches of :math:`\lVert\nabla_\theta L\rVert_2` of the body
grad_norm_min  smallest batch gradient norm of the epoch (a plateau shows here)
h              mean learned K-AF bandwidth :math:`h` (empty for fixed output activations)
index_std      standard deviation of the output indices :math:`z` on the training set
saturated_frac fraction of training outputs whose link slope :math:`|\partial \hat y/\partial z|` is below
               ``SATURATION_SLOPE`` (a flat, gradient-free part of the output activation)
diverged       ``True`` once a loss or a weight became non-finite; training stops there and
               the row's losses/metrics are NaN *by this flag's definition*
epoch_time     seconds of training (not evaluation) in the epoch
wall_time      cumulative training seconds
============== ==========================================================================

Determinism: on CPU, a run is a function of its config (weights from
``torch.manual_seed(seed)``, calc subset from :func:`kaf.nn.select_calc` with
``seed``, batch order from a seeded ``torch.Generator``).
"""

from __future__ import annotations

import math
import time
import warnings

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kaf import nn as knn
from kaf.estimators import PROB_TRIM, bernoulli_nll
from kaf.experiments.config import ExperimentConfig
from kaf.experiments.models import Network, build_network

__all__ = ["run", "prepare", "Prepared", "kaf_nll", "SATURATION_SLOPE", "EVAL_CHUNK", "EVAL_TRAIN_MAX"]

#: a link slope below this counts as saturated (for the sigmoid: :math:`|z| \gtrsim 6.9`).
SATURATION_SLOPE = 1e-3
#: the training-set columns (train_loss, train_metric, index_std, saturated_frac) are computed on
#: the first EVAL_TRAIN_MAX training rows (the split is already shuffled), to bound evaluation time.
EVAL_TRAIN_MAX = 1000
#: rows evaluated at a time (bounds the K-AF evaluation memory to EVAL_CHUNK × m × k).
EVAL_CHUNK = 1024


def data_args(config: ExperimentConfig) -> dict:
    """The arguments of :func:`kaf.data.load_dataset` that give the data of ``config``."""
    return dict(name=config.dataset, seed=config.data_seed, flatten=config.model != "cnn")


def load_data(config: ExperimentConfig):
    """The :class:`kaf.data.Dataset` of ``config`` (a fallback is recorded in ``info.label()``, not warned)."""
    # imported here: scikit-learn and SciPy take a second and more to import, and a sweep
    # fanned out over processes never loads data in its own
    from kaf.data import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(**data_args(config))


class Prepared:
    """Data of one config, ready for training: inputs, the targets the network regresses,
    raw targets for metrics, and the map from network output back to raw units.

    ``dataset``: the config's :class:`kaf.data.Dataset` if already loaded (see :func:`load_data`).
    """

    def __init__(self, config: ExperimentConfig, dataset=None):
        device = torch.device(config.device)
        ds = dataset if dataset is not None else load_data(config)
        self.info = ds.info
        self.task = ds.info.task
        self.X_train = ds.X_train.to(device)
        self.X_test = ds.X_test.to(device)
        if self.task == "classification":
            self.n_outputs = ds.info.n_classes
            self.labels_train = ds.y_train.to(device)
            self.labels_test = ds.y_test.to(device)
            if config.loss in ("mse", "nll"):
                self.T_train = F.one_hot(self.labels_train, self.n_outputs).float()
                self.T_test = F.one_hot(self.labels_test, self.n_outputs).float()
            else:
                self.T_train, self.T_test = self.labels_train, self.labels_test
            self.shift, self.scale = 0.0, 1.0
        else:
            self.n_outputs = 1
            y_train = ds.y_train.to(device) * config.y_multiplier
            y_test = ds.y_test.to(device) * config.y_multiplier
            self.raw_train, self.raw_test = y_train, y_test
            if config.target_transform == "standard":
                self.shift, self.scale = float(y_train.mean()), float(y_train.std(unbiased=False))
            elif config.target_transform == "minmax":
                lo, hi = float(y_train.min()), float(y_train.max())
                self.shift, self.scale = lo, hi - lo
            else:
                self.shift, self.scale = 0.0, 1.0
            self.T_train = (y_train - self.shift) / self.scale
            self.T_test = (y_test - self.shift) / self.scale
        self.n_train = self.X_train.shape[0]
        self.n_features = int(self.X_train[0].numel())

    def to_raw(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.scale + self.shift


def prepare(config: ExperimentConfig, dataset=None) -> Prepared:
    """Load (unless ``dataset`` is given) and preprocess the data of ``config`` (see :class:`Prepared`)."""
    return Prepared(config, dataset)


def _make_optimizer(config: ExperimentConfig, params):
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.RMSprop(params, lr=config.lr)


def kaf_nll(out: torch.Tensor, target: torch.Tensor, *, trim: float = PROB_TRIM) -> torch.Tensor:
    r"""Negative log-likelihood of one-hot targets under the K-AF class probabilities, per unit.

    .. math::

        L = -\frac1N \sum_{i=1}^N \sum_{k=1}^K \Big[t_{ik} \log \tilde G_k(z_{ik})
            + (1 - t_{ik}) \log\big(1 - \tilde G_k(z_{ik})\big)\Big],
        \qquad \tilde G = \delta + (1 - 2\delta)\,G

    where :math:`G_k(z_{ik})` is output unit :math:`k`'s leave-one-out kernel estimate of
    :math:`P(t_k = 1 \mid z_k)` and :math:`\delta` the probability trimming of
    :func:`kaf.estimators.bernoulli_nll` (the same code as :func:`kaf.estimators.klein_spady`).

    **Per-unit Bernoulli, not normalised probabilities.** K-AF is element-wise: unit
    :math:`k` regresses the indicator :math:`t_k = 1[\text{class} = k]` on its own index
    :math:`z_k`, so :math:`G_k` *is* an estimate of the binary probability
    :math:`P(t_k = 1 \mid z_k)` — each unit is a binary single-index model, and its
    likelihood is exactly Klein and Spady's. The sum over units scores each unit's
    probability with its own likelihood (a proper scoring rule for it); like the
    element-wise estimator and the squared error, it treats the units' outcomes as
    separate events and does not use that exactly one :math:`t_k` is 1. Dividing by the
    row sum, :math:`G_k / \sum_j G_j`, would instead build a multinomial model the
    estimator does not estimate: the units condition on different indices, so the ratio
    is not a conditional probability any unit estimates; it is blind to a common
    rescaling of the units (a row of estimates all near 0 scores as well as one near 1);
    and it is unstable where every :math:`G_j` is small. For two classes the two units
    model :math:`t_1 = 1 - t_0` separately, as the squared error on one-hot targets does.

    The reduction (sum over units, mean over rows) makes each row's term the
    log-likelihood of its :math:`K` binary outcomes; the squared error it replaces is
    :func:`torch.nn.functional.mse_loss` on the same targets (a mean over all entries).

    Shape:
        - ``out``, ``target``: :math:`(N, K)`, probabilities and 0/1 targets.
        - Output: scalar.
    """
    return bernoulli_nll(out, target, trim=trim).sum(1).mean()


def _loss(config: ExperimentConfig, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if config.loss == "cross_entropy":
        return F.cross_entropy(out, target)
    if config.loss == "nll":
        return kaf_nll(out, target)
    return F.mse_loss(out, target)


def _evaluate(config, net: Network, prep: Prepared, X, T, ids):
    """(loss, metric, index_std, saturated_frac) of ``net`` on (X, T); ``ids`` for leave-one-out."""
    outs, slopes, zs = [], [], []
    for lo in range(0, X.shape[0], EVAL_CHUNK):
        sl = slice(lo, lo + EVAL_CHUNK)
        with torch.no_grad():
            z = net.index(X[sl])
        zg = z.requires_grad_(True)
        link = net.link(zg, None if ids is None else ids[sl])
        # the link acts element-wise given the (fixed) calc indices, so the gradient of the
        # sum is the slope of each output at its own index
        slopes.append(torch.autograd.grad(link.sum(), zg)[0])
        with torch.no_grad():
            outs.append(net.affine(link) if net.affine is not None else link.detach())
        zs.append(z.detach())
    out, z, slope = torch.cat(outs).detach(), torch.cat(zs), torch.cat(slopes)
    with torch.no_grad():
        loss = float(_loss(config, out, T))
        if prep.task == "classification":
            labels = T if config.loss == "cross_entropy" else T.argmax(1)
            metric = float((out.argmax(1) == labels).float().mean())
        else:
            metric = float(torch.sqrt(((prep.to_raw(out) - prep.to_raw(T)) ** 2).mean()))
        saturated = float((slope.abs() < SATURATION_SLOPE).float().mean())
        return loss, metric, float(z.std(0, unbiased=False).mean()), saturated


def _batches(n: int, size: int, no_single: bool):
    """(lo, hi) of the mini-batches of an epoch; with ``no_single`` a last batch of one row is
    merged into the one before (a batch that is its own reference set needs two rows)."""
    bounds = list(range(0, n, size)) + [n]
    if no_single and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def _finite(net: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


def run(config: ExperimentConfig, *, progress: bool = False, return_model: bool = False, prepared: Prepared | None = None):
    """Train one config; return the tidy results table (and the model and data if asked).

    Args:
        config: the run.
        progress: show a tqdm bar over epochs.
        return_model: also return the trained :class:`~kaf.experiments.models.Network` and
            the :class:`Prepared` data: ``(table, net, prepared)``.
        prepared: reuse already-loaded data (must come from a config with the same data fields).

    Returns:
        :class:`pandas.DataFrame`, one row per epoch (columns in the module docstring).
    """
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} asked for CUDA but torch.cuda.is_available() is False")
    old_threads = torch.get_num_threads()
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    try:
        return _run(config, device, progress, return_model, prepared)
    finally:
        torch.set_num_threads(old_threads)


def _run(config, device, progress, return_model, prepared):
    prep = prepared if prepared is not None else prepare(config)
    torch.manual_seed(config.seed)
    calc_kw = {}
    if config.output == "kaf":
        m = config.calc_size or prep.n_train
        if m > prep.n_train:
            raise ValueError(f"calc_size must be <= the {prep.n_train} training rows, got {config.calc_size}")
        # "stratified" keeps the class proportions of a classification target and takes one
        # row per quantile stratum of a regression target (kaf.nn.select_calc)
        policy = config.calc_policy
        labels = prep.labels_train if prep.task == "classification" else prep.T_train[:, 0]
        idx = knn.select_calc(labels.cpu(), m, policy=policy, seed=config.seed).to(device)
        calc_kw = dict(calc_x=prep.X_train[idx], calc_y=prep.T_train[idx], calc_ids=idx)
    net = build_network(config, n_features=prep.n_features, n_outputs=prep.n_outputs, **calc_kw).to(device)
    # which parameters carry the L1/L2 penalty: those kaf.nn.param_groups would decay
    penalised = [p for g in knn.param_groups(net, 1.0) if g["weight_decay"] > 0 for p in g["params"]]
    # the recorded gradient norm is that of the body's weights (bandwidth, FluidReLU's a excluded)
    body_ids = {id(p) for p in net.body.parameters()}
    body_params = [p for p in penalised if id(p) in body_ids]
    optimizer = _make_optimizer(config, [p for p in net.parameters() if p.requires_grad])
    gen = torch.Generator().manual_seed(config.seed)
    train_ids = torch.arange(prep.n_train, device=device)

    base = config.as_row()
    base.update(data=prep.info.name, n_train=prep.n_train, n_test=prep.X_test.shape[0],
                metric="accuracy" if prep.task == "classification" else "rmse")
    rows, wall, diverged = [], 0.0, False
    bar = tqdm(range(1, config.epochs + 1), desc=f"{config.name}:{config.dataset}:{config.output}:s{config.seed}",
               disable=not progress, leave=False)
    for epoch in bar:
        net.train()
        t0 = time.perf_counter()
        perm = torch.randperm(prep.n_train, generator=gen).to(device)
        batch_losses, grad_norms = [], []
        for lo, hi in _batches(prep.n_train, config.batch_size, config.reference == "batch"):
            ids = perm[lo:hi]
            out = net(prep.X_train[ids], train_ids[ids], prep.T_train[ids])
            loss = _loss(config, out, prep.T_train[ids])
            total = loss
            if config.l1 > 0:
                total = total + config.l1 * sum(p.abs().sum() for p in penalised)
            if config.l2 > 0:
                total = total + config.l2 * sum((p * p).sum() for p in penalised)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grads = [p.grad.detach().flatten() for p in body_params if p.grad is not None]
            gnorm = torch.linalg.vector_norm(torch.cat(grads)) if grads else torch.zeros((), device=device)
            batch_losses.append(loss.detach())
            grad_norms.append(gnorm)
            if not bool(torch.isfinite(total.detach())) or not bool(torch.isfinite(gnorm)):
                diverged = True
                break
            optimizer.step()
            # a bandwidth that under/overflows (h -> 0 or inf) is a divergence too
            h_now = net.bandwidth()
            if not _finite(net) or (h_now is not None and not 0.0 < h_now < math.inf):
                diverged = True
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t0
        wall += epoch_time
        row = dict(base, epoch=epoch, epoch_time=epoch_time, wall_time=wall, diverged=diverged)
        if diverged:
            row.update(batch_loss=math.nan, train_loss=math.nan, test_loss=math.nan, train_metric=math.nan,
                       test_metric=math.nan, grad_norm=math.nan, grad_norm_min=math.nan, h=math.nan,
                       index_std=math.nan, saturated_frac=math.nan)
            rows.append(row)
            break
        net.eval()
        ev = train_ids[:EVAL_TRAIN_MAX]
        tr = _evaluate(config, net, prep, prep.X_train[ev], prep.T_train[ev], ev if net.is_kaf else None)
        te = _evaluate(config, net, prep, prep.X_test, prep.T_test, None)
        gn = torch.stack(grad_norms)
        h = net.bandwidth()
        row.update(batch_loss=float(torch.stack(batch_losses).mean()), train_loss=tr[0], test_loss=te[0],
                   train_metric=tr[1], test_metric=te[1], grad_norm=float(gn.mean()), grad_norm_min=float(gn.min()),
                   h=math.nan if h is None else h, index_std=tr[2], saturated_frac=tr[3])
        rows.append(row)
        bar.set_postfix(test=f"{te[1]:.3f}")
    table = pd.DataFrame(rows)
    if return_model:
        return table, net, prep
    return table

