r"""The networks the experiments train.

* :class:`AppendixBBody` — the thesis's appendix-B body
  :math:`z = W_2\,\phi(W_1 x)` (both layers without bias). With ``output="kaf"`` it is
  wrapped in :class:`kaf.nn.KernelOutput`; otherwise a fixed output activation from
  :func:`kaf.nn.make_activation` follows it.
* :class:`PaperCNN` — the FluidReLU paper's MNIST network: 5×5 conv (16 channels) →
  activation → 2×2 max-pool → 5×5 conv (32 channels) → activation → 2×2 max-pool →
  linear classifier. With ``hidden="fluid_relu"`` each conv layer gets one learnable
  :math:`a_i` per channel.
* :class:`Network` — one calling convention ``net(x, ids=None)`` for all of them, so the
  training loop does not care which output it trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kaf import nn as knn

__all__ = ["AppendixBBody", "PaperCNN", "LearnableAffine", "Network", "build_network", "init_weights"]


class AppendixBBody(nn.Module):
    r"""Appendix-B body: ``Linear(d, mid, bias=False)`` → hidden activation → ``Linear(mid, k, bias=False)``.

    .. math:: z = W_2\, \phi(W_1 x)

    (with ``bias=True``: :math:`z = W_2\, \phi(W_1 x + b_1) + b_2`, a departure from appendix B
    used to check how much of a comparison is due to the missing biases).

    Shape:
        - Input: :math:`(N, d)`
        - Output: :math:`(N, k)`, the indices :math:`z` (one per output unit).

    Examples::

        >>> body = AppendixBBody(4, 32, 3)
        >>> body(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_features: int, hidden_size: int, out_features: int, hidden: str = "relu",
                 bias: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_size, bias=bias)
        self.act = knn.make_activation(hidden)
        self.fc2 = nn.Linear(hidden_size, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PaperCNN(nn.Module):
    r"""The FluidReLU paper's MNIST CNN (returns logits).

    ``Conv2d(1, 16, 5, padding=2)`` → act → ``MaxPool2d(2)`` → ``Conv2d(16, 32, 5, padding=2)``
    → act → ``MaxPool2d(2)`` → ``Linear(32·7·7, 10)``. The paper gives the filter sizes,
    channel counts and pooling; padding and the single linear classifier are this
    book's choice (the paper does not say).

    Shape:
        - Input: :math:`(N, 1, 28, 28)`
        - Output: :math:`(N, 10)`

    Args:
        hidden: ``"relu"`` or ``"fluid_relu"`` (one :math:`a_i` per channel).
        grad_scale, fluid_variant, fluid_init: passed to :class:`kaf.nn.FluidReLU`.
    """

    def __init__(self, hidden: str = "relu", *, grad_scale: float = 1.0, fluid_variant: str = "exp",
                 fluid_init: float = 0.0, n_classes: int = 10, side: int = 28):
        super().__init__()

        def act(channels: int) -> nn.Module:
            if hidden == "fluid_relu":
                return knn.FluidReLU(num_parameters=channels, init=fluid_init, grad_scale=grad_scale,
                                     variant=fluid_variant)
            return knn.make_activation(hidden)

        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.act1 = act(16)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.act2 = act(32)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * (side // 4) ** 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))
        x = self.pool(self.act2(self.conv2(x)))
        return self.fc(x.flatten(1))


class LearnableAffine(nn.Module):
    r"""A learnable per-output scale and shift, :math:`y = a \odot x + b` (:math:`a=1, b=0` at start).

    The "learnable scale" remedy for large-scale regression targets.

    Shape:
        - Input: :math:`(N, k)`; Output: :math:`(N, k)`.
    """

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))
        self.shift = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"features={self.scale.shape[0]}"


class Network(nn.Module):
    """One calling convention for every model: ``net(x, ids=None, targets=None)``.

    ``ids`` are the training-row ids of the batch; the K-AF output uses them for
    leave-one-out, the others ignore them. :meth:`index` returns the pre-activation
    :math:`z` of the output layer and :meth:`link` applies the output activation to a
    given :math:`z` (for K-AF: the kernel regression on the current calc indices).
    """

    def __init__(self, body: nn.Module, output: str, *, kernel_output: nn.Module | None = None,
                 activation: nn.Module | None = None, affine: nn.Module | None = None):
        super().__init__()
        if (kernel_output is None) == (activation is None):
            raise ValueError("exactly one of kernel_output and activation must be given")
        self.output = output
        self.kernel_output = kernel_output
        self.body = kernel_output.body if kernel_output is not None else body
        self.activation = activation
        self.affine = affine

    @property
    def is_kaf(self) -> bool:
        return self.kernel_output is not None

    def index(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def link(self, z: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        r"""Output activation applied to indices ``z`` of shape (N, k) (before the affine map).

        For K-AF the calc indices are computed without gradient: the link is the curve
        :math:`z \mapsto G(z)` for the current, fixed reference set.
        """
        if self.is_kaf:
            ko = self.kernel_output
            with torch.no_grad():
                z_ref = ko.index(ko.calc_x)
            if ids is None:
                return ko.activation(z, z_ref, ko.calc_y)
            return ko.activation(z, z_ref, ko.calc_y, ids, ko.calc_ids)
        return self.activation(z)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """``targets``: the batch's targets as the network regresses them (used only by a K-AF
        output with ``reference="batch"`` in training mode)."""
        if self.is_kaf:
            out = self.kernel_output(x, ids, targets)
        else:
            out = self.activation(self.body(x))
        return self.affine(out) if self.affine is not None else out

    def bandwidth(self) -> float | None:
        """Mean K-AF bandwidth :math:`h` (``None`` for a fixed output activation)."""
        if not self.is_kaf:
            return None
        return float(self.kernel_output.activation.bandwidth.detach().float().mean().cpu())


def init_weights(module: nn.Module, scheme: str, scale: float, generator: torch.Generator | None = None) -> None:
    r"""Re-initialise the weights of every ``Linear``/``Conv2d`` in ``module`` (in place).

    Schemes (``fan_in`` = inputs per unit; every scheme is multiplied by ``scale``):

    * ``default`` — PyTorch's own initialisation, times ``scale``;
    * ``normal`` — :math:`\mathcal N(0, \text{scale}^2/\text{fan\_in})` (LeCun normal);
    * ``uniform`` — :math:`U(\pm \text{scale}\sqrt{3/\text{fan\_in}})` (same variance);
    * ``xavier`` — Glorot normal with gain ``scale``;
    * ``kaiming`` — He normal (ReLU gain), times ``scale``;
    * ``orthogonal`` — orthogonal with gain ``scale``.

    Biases (the CNN's) are set to zero except under ``default``.
    """
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        w = layer.weight
        fan_in = w[0].numel()
        with torch.no_grad():
            if scheme == "default":
                w.mul_(scale)
            elif scheme == "normal":
                w.normal_(0.0, scale / math.sqrt(fan_in), generator=generator)
            elif scheme == "uniform":
                bound = scale * math.sqrt(3.0 / fan_in)
                w.uniform_(-bound, bound, generator=generator)
            elif scheme == "xavier":
                nn.init.xavier_normal_(w, gain=scale, generator=generator)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
                w.mul_(scale)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(w, gain=scale, generator=generator)
            else:
                raise ValueError(f"scheme must be one of the kaf.experiments.INITS, got {scheme!r}")
            if layer.bias is not None and scheme != "default":
                layer.bias.zero_()


def build_network(config, *, n_features: int, n_outputs: int, calc_x=None, calc_y=None, calc_ids=None) -> Network:
    """Build the :class:`Network` a config asks for (weights initialised with the current torch RNG).

    ``calc_x``, ``calc_y`` (targets as the network regresses them) and ``calc_ids``
    (training-row ids) are required for ``output="kaf"``.
    """
    if config.model == "cnn":
        body = PaperCNN(config.hidden, grad_scale=config.grad_scale, fluid_variant=config.fluid_variant,
                        fluid_init=config.fluid_init, n_classes=n_outputs)
    else:
        body = AppendixBBody(n_features, config.hidden_size, n_outputs, config.hidden, bias=config.bias)
    init_weights(body, config.init, config.init_scale)
    affine = LearnableAffine(n_outputs) if config.target_transform == "learnable" and config.dataset == "house" else None
    if config.output == "kaf":
        if calc_x is None or calc_y is None:
            raise ValueError("output='kaf' needs calc_x and calc_y")
        ko = knn.KernelOutput(body, calc_x, calc_y, bandwidth=config.bandwidth, kernel=config.kernel,
                              calc_ids=calc_ids, learn_bandwidth=config.learn_bandwidth,
                              reference=getattr(config, "reference", "calc"))
        return Network(body, "kaf", kernel_output=ko, affine=affine)
    return Network(body, config.output, activation=knn.make_activation(config.output), affine=affine)
