"""The experiment configuration: one frozen record per training run.

A run is fully described by an :class:`ExperimentConfig`; :func:`kaf.experiments.run`
turns it into a tidy table. Sweeps are plain lists of configs, usually built with
:func:`dataclasses.replace` from one base config, so nothing about a run is hidden in
global state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from kaf.estimators import KERNELS
from kaf.nn import ACTIVATIONS

__all__ = [
    "ExperimentConfig",
    "DATASETS",
    "MODELS",
    "OPTIMIZERS",
    "INITS",
    "CALC_POLICIES",
    "REFERENCES",
    "TARGET_TRANSFORMS",
    "LOSSES",
]

DATASETS = ("iris", "wine", "mnist", "house", "breast_cancer")
MODELS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
#: ``default`` keeps PyTorch's own initialisation; the others are scaled by ``init_scale``.
INITS = ("default", "normal", "uniform", "xavier", "kaiming", "orthogonal")
CALC_POLICIES = ("stratified", "random")
#: the K-AF output's reference set in training: the fixed calc set, or each batch itself
REFERENCES = ("calc", "batch")
#: how a regression target is presented to the network (RMSE is always reported in raw units):
#: ``standard`` (z-score), ``minmax`` (to [0, 1]), ``raw`` (untouched), ``learnable``
#: (raw targets, the network output passes through a learnable affine map a*out + b, a=1, b=0).
TARGET_TRANSFORMS = ("standard", "minmax", "raw", "learnable")
#: ``mse``: mean squared error on one-hot targets (the thesis's setting, every output
#: activation); ``cross_entropy``: softmax cross-entropy on raw logits (the FluidReLU CNN);
#: ``nll``: K-AF outputs only, the Bernoulli negative log-likelihood of the one-hot targets
#: under the K-AF probabilities, one binary single-index model per output unit
#: (Klein–Spady; see :func:`kaf.experiments.train.kaf_nll`).
LOSSES = ("mse", "cross_entropy", "nll")


@dataclass(frozen=True)
class ExperimentConfig:
    r"""Everything that defines one training run.

    The model is the thesis's appendix-B network

    .. math::  z = W_2\, \phi(W_1 x), \qquad \hat y = \mathrm{out}(z),

    (``Linear(d, hidden_size, bias=False)`` → ``hidden`` → ``Linear(hidden_size, k, bias=False)``)
    with ``out`` either the K-AF kernel output (``output="kaf"``) or a fixed activation
    from :data:`kaf.nn.ACTIVATIONS`; or, with ``model="cnn"``, the FluidReLU paper's CNN.

    Attributes:
        name: the experiment this run belongs to (a column of the results table).
        dataset: ``"iris"``, ``"wine"``, ``"mnist"``, ``"house"`` or ``"breast_cancer"``.
        model: ``"mlp"`` (appendix B) or ``"cnn"`` (FluidReLU paper).
        output: ``"kaf"`` or an activation name (``"sigmoid"``, ``"tanh"``, ...).
        hidden: hidden activation name (``"relu"``; ``"fluid_relu"`` in the CNN).
        hidden_size: width of the hidden layer of the MLP.
        bias: give both linear layers of the MLP a bias (appendix B has none; a fixed
            output activation then cannot move its threshold, while K-AF's link can).
        optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"rmsprop"``.
        lr: learning rate.
        momentum: momentum of ``"momentum"`` SGD.
        init: weight initialisation scheme (:data:`INITS`).
        init_scale: multiplies the initial weights (``default`` init included).
        l1, l2: weights of the L1 penalty :math:`\lambda_1 \sum |w|` and of the L2 penalty
            :math:`\lambda_2 \sum w^2` on the body's weights (never on ``h`` or ``a``).
        epochs: passes over the training set.
        batch_size: mini-batch size.
        calc_size: number of calc points :math:`m` of the K-AF output; ``0`` means the
            whole training set.
        calc_policy: ``"stratified"`` (class proportions kept; quantile strata for a
            regression target) or ``"random"`` (see :func:`kaf.nn.select_calc`).
        reference: the K-AF output's reference set while training: ``"calc"`` (the calc
            set, the thesis) or ``"batch"`` (each mini-batch, leave-one-out; the calc set
            is then used only for evaluation). See :class:`kaf.nn.KernelOutput`.
        bandwidth: initial K-AF bandwidth :math:`h` (the thesis: 1.5).
        learn_bandwidth: learn :math:`h` (otherwise it stays fixed).
        kernel: K-AF kernel name (:data:`kaf.estimators.KERNELS`).
        loss: :data:`LOSSES`.
        target_transform: regression target handling (:data:`TARGET_TRANSFORMS`).
        y_multiplier: multiplies raw regression targets before anything else (1000 turns
            Boston's thousands of dollars into dollars).
        grad_scale: FluidReLU's :math:`\beta` (the paper: 10000).
        fluid_variant: ``"exp"`` or ``"sigmoid"`` (the two FluidReLU candidates).
        fluid_init: initial FluidReLU :math:`a`.
        data_seed: seed of the train/test split (kept fixed across model seeds so that the
            seeds measure training variance only).
        seed: seed of initialisation, calc subset and batch order.
        device: torch device string.
        threads: ``torch.set_num_threads`` during the run on CPU (``0``: leave as is).
    """

    name: str = "adhoc"
    dataset: str = "iris"
    model: str = "mlp"
    output: str = "kaf"
    hidden: str = "relu"
    hidden_size: int = 32
    bias: bool = False
    optimizer: str = "adam"
    lr: float = 0.01
    momentum: float = 0.9
    init: str = "default"
    init_scale: float = 1.0
    l1: float = 0.0
    l2: float = 0.0
    epochs: int = 50
    batch_size: int = 32
    calc_size: int = 0
    calc_policy: str = "stratified"
    reference: str = "calc"
    bandwidth: float = 1.5
    learn_bandwidth: bool = True
    kernel: str = "gaussian"
    loss: str = "mse"
    target_transform: str = "minmax"
    y_multiplier: float = 1.0
    grad_scale: float = 10000.0
    fluid_variant: str = "exp"
    fluid_init: float = 0.0
    data_seed: int = 0
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    tags: tuple = field(default=(), compare=True)

    def __post_init__(self):
        def one_of(attr, options):
            value = getattr(self, attr)
            if value not in options:
                raise ValueError(f"{attr} must be one of {options}, got {value!r}")

        one_of("dataset", DATASETS)
        one_of("model", MODELS)
        one_of("optimizer", OPTIMIZERS)
        one_of("init", INITS)
        one_of("calc_policy", CALC_POLICIES)
        one_of("reference", REFERENCES)
        if self.reference == "batch" and self.output != "kaf":
            raise ValueError(f"reference='batch' is a K-AF option, so it needs output='kaf', got output={self.output!r}")
        one_of("target_transform", TARGET_TRANSFORMS)
        one_of("loss", LOSSES)
        one_of("fluid_variant", ("exp", "sigmoid"))
        one_of("output", ("kaf",) + tuple(sorted(ACTIVATIONS)))
        one_of("hidden", tuple(sorted(ACTIVATIONS)))
        one_of("kernel", KERNELS)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a device string ('cpu', 'cuda', ...), got {self.device!r}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be a device string ('cpu', 'cuda', ...), got {self.device!r}") from None
        for attr in ("hidden_size", "epochs", "batch_size"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{attr} must be a positive int, got {value!r}")
        for attr in ("calc_size", "seed", "data_seed", "threads"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{attr} must be a non-negative int, got {value!r}")
        for attr in ("lr", "bandwidth", "init_scale", "y_multiplier", "grad_scale"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{attr} must be a finite number > 0, got {value!r}")
        for attr in ("l1", "l2", "momentum", "fluid_init"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{attr} must be a finite number, got {value!r}")
        for attr in ("seed", "data_seed"):
            if getattr(self, attr) >= 2**32:
                raise ValueError(f"{attr} must be below 2**32 (a NumPy seed), got {getattr(self, attr)!r}")
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"l1 and l2 must be >= 0, got l1={self.l1!r}, l2={self.l2!r}")
        if self.model == "cnn" and self.dataset != "mnist":
            raise ValueError(f"model='cnn' needs dataset='mnist', got dataset={self.dataset!r}")
        if self.output == "kaf" and self.loss not in ("mse", "nll"):
            raise ValueError("output='kaf' estimates E[target | index], so it needs loss='mse' or 'nll', "
                             f"got loss={self.loss!r}")
        if self.loss == "nll" and self.output != "kaf":
            raise ValueError("loss='nll' reads the outputs as the K-AF probabilities, so it needs output='kaf', "
                             f"got output={self.output!r}")
        if self.loss == "nll" and self.dataset == "house":
            raise ValueError("loss='nll' needs a classification data set (binary targets), got dataset='house'")
        if self.loss == "cross_entropy" and self.dataset == "house":
            raise ValueError("loss='cross_entropy' needs a classification data set, got dataset='house'")
        for attr in ("bias", "learn_bandwidth"):
            if not isinstance(getattr(self, attr), bool):
                raise ValueError(f"{attr} must be a bool, got {getattr(self, attr)!r}")
        if not isinstance(self.tags, tuple) or not all(isinstance(t, str) for t in self.tags):
            raise ValueError(f"tags must be a tuple of strings, got {self.tags!r}")

    def replace(self, **changes) -> "ExperimentConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_row(self) -> dict:
        """The config as flat columns for the results table (``tags`` joined by ``|``)."""
        row = dataclasses.asdict(self)
        row["tags"] = "|".join(self.tags)
        return row
