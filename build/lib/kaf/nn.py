r"""Modules: the kernel output activation (K-AF), FluidReLU, an activation registry.

The modules here are thin: the kernel estimator itself lives once, in
:func:`kaf.estimators.nadaraya_watson`, and :class:`KernelActivation` /
:class:`KernelOutput` only own its parameters (the bandwidth) and its reference set
(the calc points).

* :class:`KernelActivation` -- the leave-one-out Nadaraya--Watson activation with a
  learnable bandwidth :math:`h` (thesis eq. 3.1).
* :class:`KernelOutput` -- a network ``body`` that computes the single index
  :math:`z = f_\theta(x)` followed by a :class:`KernelActivation` whose reference
  indices are the body's output on the calc points, recomputed at every forward.
* :class:`FluidReLU` -- ReLU with the negative branch :math:`v\,e^{v e^{-a}}` and one
  learnable :math:`a` per channel (the fluid-dynamics paper), with its gradient scaled
  by :math:`\beta` (``grad_scale``).
* :class:`Swish`, :data:`ACTIVATIONS`, :func:`make_activation` -- the baselines by name.
* :func:`param_groups` -- optimiser groups that keep activation-shape parameters out of
  weight decay.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kaf.estimators import KERNELS, _check_seed, nadaraya_watson

__all__ = [
    "FluidReLU",
    "Swish",
    "KernelActivation",
    "KernelOutput",
    "select_calc",
    "ACTIVATIONS",
    "make_activation",
    "param_groups",
]


# --------------------------------------------------------------------------- FluidReLU


def _negative_exponent(v: Tensor, s: Tensor) -> Tensor:
    r""":math:`t = \min(v, 0)\,s`, clamped to the dtype's finite range (a fresh tensor).

    The clamp keeps :math:`t` finite when :math:`v s` overflows (huge :math:`|v|` or
    :math:`a \ll 0`), so that :math:`e^t = 0` and every product with it is an exact 0
    rather than ``inf * 0 = nan``.
    """
    return v.clamp(max=0).mul_(s).clamp_(min=torch.finfo(v.dtype).min)


def _channel_scale(a: Tensor, dtype: torch.dtype, channel_shape) -> Tensor:
    r""":math:`s = e^{-a}` in ``dtype``, capped below the largest finite value, shaped to broadcast.

    The cap keeps :math:`s` (and so :math:`0 \cdot s = 0`) finite when :math:`a` is very
    negative; it is applied to the exponent (at :math:`\log(\text{max}) - 1`, a margin
    that survives rounding in low-precision dtypes) so that ``exp`` itself never returns
    ``inf``.
    """
    cap = math.log(torch.finfo(dtype).max) - 1.0
    return torch.exp((-a.to(dtype)).clamp(max=cap)).view(channel_shape)


def _scaled_gradient(a: Tensor, grad_scale: float) -> Tensor:
    r"""``a`` in value (exactly), with every gradient that flows back through it multiplied by ``grad_scale``.

    :math:`a_\beta = \text{sg}(a) + \beta\,(a - \text{sg}(a))` with :math:`\text{sg}` the
    stop-gradient: :math:`a - \text{sg}(a)` is an exact 0, and its derivative is 1.
    Built from plain differentiable ops, so it composes with every autograd and
    ``torch.func`` transform at every order.
    """
    if grad_scale == 1.0:
        return a
    frozen = a.detach()
    return frozen + (a - frozen) * grad_scale


def _fluid_derivatives(v: Tensor, a: Tensor, channel_shape, variant: str):
    r"""Elementwise :math:`(\partial f/\partial v, \partial f/\partial a)` from differentiable ops.

    The first-order formulas of :class:`FluidReLU` written so that autograd can
    differentiate them again (double backward, ``torch.func``) without ``inf * 0``:

    * where the exponential factor underflows to 0 (:math:`t \ll 0`) both derivatives
      are an exact 0, and :math:`v` is replaced by 0 before any product, so that no
      huge or infinite :math:`t` enters the values or their gradients;
    * :math:`v \ge 0` gives :math:`t = 0` with no gradient (the right-hand derivatives at
      the kink :math:`v = 0`, like ``relu``);
    * :math:`t = v e^{-a}` is formed as :math:`(v\,\text{sg}(s))\,e^{\text{sg}(a) - a}`: the
      same value (the second factor is exactly 1) and the same derivatives of every
      order, but :math:`\partial t/\partial a = -t` is then computed from :math:`t`
      itself, never through :math:`v \cdot v`, which would overflow for huge :math:`|v|`
      where the true second derivatives are finite.
    """
    frozen = a.detach()
    s = _channel_scale(frozen, v.dtype, channel_shape)
    squash = torch.exp if variant == "exp" else torch.sigmoid
    with torch.no_grad():
        t_value = torch.mul(v, s).clamp_max_(0)  # = min(v, 0) s, since s >= 0
        dead = squash(t_value) == 0
        live = (v < 0) & ~dead
    v = torch.where(live, v, 0.0)  # elsewhere df/da = 0 and t = 0: keep huge v out of the products
    shift = torch.exp((frozen - a).to(v.dtype)).view(channel_shape)  # exactly 1, d/da = -1
    t = (v * s) * shift
    r = torch.where(dead, 0.0, squash(t))
    if variant == "exp":
        # df/dv = (1 + t) e^t,  df/da = -v t e^t
        tr = t * r
        return r + tr, -tr * v
    # df/dv = 2 sigma(t) + 2 t sigma(t)(1 - sigma(t)),  df/da = -2 v t sigma(t)(1 - sigma(t))
    tq = t * (r * (1 - r))
    return 2 * (r + tq), (-2 * tq) * v


def _reduce_to(x: Tensor, a: Tensor) -> Tensor:
    """Sum an input-shaped tensor down to the shape of ``a``, per channel (dimension 1) or over all.

    Accumulates in ``a``'s dtype: a half-precision input's per-channel sums (and their
    product with a large ``grad_scale``) would overflow float16.
    """
    if a.dim() and a.shape[0] > 1:
        return x.sum(dim=[d for d in range(x.dim()) if d != 1], dtype=a.dtype)
    return x.sum(dtype=a.dtype).reshape(a.shape)


class _FluidReLUFunction(torch.autograd.Function):
    r"""Fused FluidReLU: saves only the input and :math:`a`, recomputes in backward.

    With :math:`t = \min(v, 0)\,e^{-a}` both variants are a single expression for all
    :math:`v` (:math:`t = 0` gives :math:`e^0 = 2\sigma(0) = 1`), so no mask or
    ``torch.where`` is needed and every step after the first runs in place.

    Backward has two paths. The plain first-order backward (no ``create_graph``, no
    ``torch.func`` transform active) is the fused in-place one above. When the gradient
    must itself be differentiable (``create_graph=True``) or is being computed under a
    ``torch.func`` transform (batched tensors that in-place ops cannot mix), it is
    computed from :func:`_fluid_derivatives`, out of place, with :math:`a` passed through
    :func:`_scaled_gradient` so that :math:`\beta` reaches every higher-order term that
    differentiates with respect to :math:`a`. ``generate_vmap_rule`` lets ``vmap`` batch
    both forward and backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(v: Tensor, a: Tensor, channel_shape, variant: str, grad_scale: float) -> Tensor:
        s = _channel_scale(a, v.dtype, channel_shape)
        # min(v, 0) s == min(v s, 0) as s >= 0; the multiplication comes first and out of place
        # so that the in-place steps below act on a tensor that is batched under vmap whenever
        # v or a is. No finite clamp needed: t = -inf gives exp(t) = sigmoid(t) = 0 and v * 0 = -0.
        out = torch.mul(v, s).clamp_max_(0)
        if variant == "exp":
            out.exp_()
        else:
            out.sigmoid_().mul_(2.0)
        return out.mul_(v)

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, a, channel_shape, variant, grad_scale = inputs
        ctx.save_for_backward(v, a)
        ctx.channel_shape = channel_shape
        ctx.variant = variant
        ctx.grad_scale = grad_scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, a = ctx.saved_tensors
        need_v, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled() or torch._C._are_functorch_transforms_active():
            # Differentiable path (double backward, torch.func).
            df_dv, df_da = _fluid_derivatives(v, _scaled_gradient(a, ctx.grad_scale), ctx.channel_shape, ctx.variant)
            grad_v = df_dv * grad if need_v else None
            grad_a = None
            if need_a:
                grad_a = _reduce_to(df_da * grad, a) * ctx.grad_scale
            return grad_v, grad_a, None, None, None
        s = _channel_scale(a, v.dtype, ctx.channel_shape)
        t = _negative_exponent(v, s)
        if ctx.variant == "exp":
            # df/dv = (1 + t) e^t,  df/da = -v t e^t
            e = torch.exp(t).mul_(grad)
            t.mul_(e)  # t e^t g
            grad_v = e.add_(t) if need_v else None
        else:
            # df/dv = 2 sigma(t) + 2 t sigma(t)(1 - sigma(t)),  df/da = -2 v t sigma(t)(1 - sigma(t))
            r = torch.sigmoid(t)
            t.mul_(r)
            t.addcmul_(t, r, value=-1.0)  # t sigma (1 - sigma)
            t.mul_(grad).mul_(2.0)
            grad_v = r.mul_(grad).mul_(2.0).add_(t) if need_v else None
        grad_a = None
        if need_a:
            t.mul_(v)  # now v * (the a-derivative without its minus sign) * g
            # beta scales the reduced gradient, so it is exactly beta times the unscaled one.
            grad_a = _reduce_to(t, a).neg_().mul_(ctx.grad_scale)
        return grad_v, grad_a, None, None, None


_FLUID_VARIANTS = ("exp", "sigmoid")


class FluidReLU(nn.Module):
    r"""ReLU whose negative branch bends from slope 0 to slope 1 with a learnable :math:`a`.

    .. math::

        \text{FluidReLU}(v) =
        \begin{cases}
            v, & v \ge 0 \\
            v \, \exp\!\big(v\, e^{-a}\big), & v < 0
        \end{cases}
        \qquad (\texttt{variant="exp"})

    with :math:`k = e^{a}` the paper's "network temperature". As :math:`a \to -\infty`
    the negative branch tends to 0 (ReLU); as :math:`a \to +\infty` it tends to
    :math:`v` (identity). The function is :math:`C^1`: both one-sided slopes at 0 are 1
    (the second derivative jumps from :math:`2e^{-a}` to 0). Derivatives, for
    :math:`v < 0` (both are 0 resp. 1 for :math:`v \ge 0`):

    .. math::

        \frac{\partial f}{\partial v} = \big(1 + v e^{-a}\big)\, e^{v e^{-a}}, \qquad
        \frac{\partial f}{\partial a} = -v^2 e^{-a}\, e^{v e^{-a}}.

    :math:`\partial f / \partial a` is tiny for small :math:`|v|`, so the gradient that
    reaches :math:`a` is multiplied by ``grad_scale`` (the paper's :math:`\beta`,
    10000 in its MNIST experiment); the forward value is unchanged.

    ``variant="sigmoid"`` is the second candidate with the same limits,

    .. math::

        f(v) = 2 v\, \sigma\!\big(v e^{-a}\big) \quad (v < 0), \qquad
        \frac{\partial f}{\partial v} = 2\sigma(t) + 2t\,\sigma(t)\big(1-\sigma(t)\big),
        \quad \frac{\partial f}{\partial a} = -2 v t\, \sigma(t)\big(1-\sigma(t)\big),

    with :math:`t = v e^{-a}`. It is also :math:`C^1` at 0 (slope :math:`2\sigma(0) = 1`
    from the left; the second derivative jumps from :math:`e^{-a}` to 0) and bends half
    as fast near 0 (:math:`2\sigma(t) \approx 1 + t/2` against :math:`e^t \approx 1 + t`).

    One :math:`a` per channel as in :class:`torch.nn.PReLU`: the channel dimension is
    dimension 1 of the input; ``num_parameters=1`` shares one :math:`a` across all
    channels. Inputs with fewer than 2 dimensions have no channel dimension and need
    ``num_parameters=1``.

    **Derivatives of every order.** The first-order backward recomputes from the saved
    input in one fused pass (memory like :class:`torch.nn.PReLU`). When the gradient must
    itself be differentiated (``torch.autograd.grad(..., create_graph=True)``, e.g. a
    gradient penalty) or under ``torch.func`` (``vmap``, ``grad``, ``vjp``, ``jacrev``,
    per-sample gradients, ``jacrev(jacrev(f))`` Hessians), it is built from differentiable
    operations, so second and higher derivatives are those of the formulas above. At the
    kink :math:`v = 0` the second derivatives take their right-hand value 0 (as
    :func:`torch.relu` does). Forward-mode AD (``torch.func.jvp``, ``jacfwd``,
    ``hessian``) is not implemented and raises ``NotImplementedError``.
    ``torch.compile`` and ``torch.export`` trace the module.

    **What** :math:`\beta` **does.** No value changes; every derivative taken *with
    respect to* :math:`a` is multiplied by :math:`\beta`, at every order. Equivalently,
    all derivatives are those of :math:`f(v, \beta b)` with respect to :math:`b`, at
    :math:`b = a/\beta`: the gradient of :math:`a` is :math:`\beta\,\partial L/\partial a`,
    the mixed second derivatives :math:`\partial^2 L / \partial v\,\partial a` are
    multiplied by :math:`\beta` and :math:`\partial^2 L/\partial a^2` by :math:`\beta^2`;
    derivatives with respect to :math:`v` alone are unchanged. A gradient penalty
    :math:`\|\partial L/\partial x\|^2` thus sends :math:`\beta` times its gradient to
    :math:`a`, like any other loss.

    Numerically safe for any finite input and any finite :math:`a`: :math:`v e^{-a}` is
    kept finite, so large :math:`|v|` or very negative :math:`a` give an exact 0 for the
    negative branch and its first and second derivatives instead of NaN.

    Args:
        num_parameters: number of :math:`a` to learn: 1 or the number of channels.
        init: initial value of every :math:`a` (0.0 in the paper).
        grad_scale: :math:`\beta > 0`, the factor applied to the gradient of :math:`a`.
        variant: ``"exp"`` (the adopted form) or ``"sigmoid"`` (the second candidate).

    Shape:
        - Input: :math:`(*)` with :math:`*` any shape; channel dimension 1 when
          ``num_parameters > 1``.
        - Output: same shape as the input.

    Attributes:
        a: the learnable shape parameters, shape ``(num_parameters,)``.

    Examples::

        >>> m = FluidReLU(16, grad_scale=1e4)
        >>> x = torch.randn(8, 16, 28, 28, requires_grad=True)
        >>> y = m(x)
        >>> y.shape
        torch.Size([8, 16, 28, 28])
        >>> (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        >>> gx.square().sum().backward()  # a gradient penalty reaches a (times beta)
        >>> m.a.grad.shape
        torch.Size([16])
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.0, grad_scale: float = 1.0, variant: str = "exp"):
        super().__init__()
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or num_parameters < 1:
            raise ValueError(f"num_parameters must be a positive int, got {num_parameters!r}")
        if not _is_finite_number(init) or not math.isfinite(torch.tensor(float(init)).item()):
            raise ValueError(f"init must be a finite number (in the default dtype's range), got {init!r}")
        if not _is_finite_number(grad_scale) or grad_scale <= 0:
            raise ValueError(f"grad_scale must be a finite number > 0, got {grad_scale!r}")
        if variant not in _FLUID_VARIANTS:
            raise ValueError(f"variant must be one of {_FLUID_VARIANTS}, got {variant!r}")
        self.num_parameters = num_parameters
        self.init = float(init)
        self.grad_scale = float(grad_scale)
        self.variant = variant
        self.a = nn.Parameter(torch.full((num_parameters,), float(init)))

    def forward(self, input: Tensor) -> Tensor:
        _check_float_input(input)
        if self.num_parameters == 1:
            channel_shape = (1,) * input.dim()
        else:
            if input.dim() < 2 or input.shape[1] != self.num_parameters:
                raise ValueError(
                    f"input must have {self.num_parameters} channels in dimension 1 (num_parameters), "
                    f"got shape {tuple(input.shape)}"
                )
            channel_shape = (1, self.num_parameters) + (1,) * (input.dim() - 2)
        return _FluidReLUFunction.apply(input, self.a, channel_shape, self.variant, self.grad_scale)

    def extra_repr(self) -> str:
        return (
            f"num_parameters={self.num_parameters}, init={self.init}, grad_scale={self.grad_scale}, "
            f"variant={self.variant!r}"
        )


def _is_finite_number(x) -> bool:
    """A finite real number: Python or numpy, or a one-element real tensor; not a bool or a string."""
    if isinstance(x, Tensor):
        if x.numel() != 1 or x.is_complex() or x.dtype == torch.bool:
            return False
    elif isinstance(x, bool) or not isinstance(x, numbers.Real):
        return False
    return math.isfinite(float(x))


def _check_float_input(input) -> None:
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {_describe(input)}")


# --------------------------------------------------------------------------- Swish


class Swish(nn.Module):
    r"""Swish, :math:`\text{Swish}(x) = x \, \sigma(\beta x)`, with optional learnable :math:`\beta`.

    :math:`\beta = 1` is SiLU; :math:`\beta \to \infty` tends to ReLU, :math:`\beta = 0`
    to :math:`x/2`.

    Args:
        beta: initial :math:`\beta` (finite).
        learnable: make :math:`\beta` a parameter (otherwise a buffer).

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: same shape as the input.

    Examples::

        >>> m = Swish(learnable=True)
        >>> m(torch.zeros(3))
        tensor([0., 0., 0.], grad_fn=<MulBackward0>)
    """

    def __init__(self, beta: float = 1.0, learnable: bool = False):
        super().__init__()
        if not _is_finite_number(beta):
            raise ValueError(f"beta must be a finite number, got {beta!r}")
        if not isinstance(learnable, bool):
            raise ValueError(f"learnable must be True or False, got {learnable!r}")
        self.learnable = learnable
        b = torch.tensor(float(beta))
        if self.learnable:
            self.beta = nn.Parameter(b)
        else:
            self.register_buffer("beta", b)

    def forward(self, input: Tensor) -> Tensor:
        _check_float_input(input)
        if not self.learnable and float(self.beta) == 1.0:
            return F.silu(input)  # same function, one fused kernel
        return input * torch.sigmoid(self.beta * input)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):g}, learnable={self.learnable}"


# --------------------------------------------------------------------------- K-AF


class KernelActivation(nn.Module):
    r"""Leave-one-out Nadaraya--Watson activation with a learnable bandwidth (K-AF).

    .. math::

        G(z_i)_k = \frac{\sum_{j \in \text{calc},\ j \ne i} K\big((z^{\text{ref}}_{jk} - z_{ik})/h\big)\,
            y^{\text{ref}}_{jk}}{\sum_{j \in \text{calc},\ j \ne i} K\big((z^{\text{ref}}_{jk} - z_{ik})/h\big)}

    applied independently to each output unit :math:`k`. The estimator is
    :func:`kaf.estimators.nadaraya_watson`; this module owns the bandwidth, stored as
    :math:`\log h` so that :math:`h = e^{\log h}` stays positive under any optimiser
    step. Pairs with ``query_ids[i] == ref_ids[j]`` are left out (the thesis's
    ``tmp[j] = 0``); without ids nothing is left out (inference on new data).

    Args:
        bandwidth: initial :math:`h > 0` (1.5 in the thesis): a number, or a 1-D
            sequence/tensor of length :math:`k` for one bandwidth per output unit.
        kernel: one of :data:`kaf.estimators.KERNELS`.
        learn_bandwidth: learn :math:`\log h` (a parameter) or keep it fixed (a buffer).
        chunk_size: passed to :func:`~kaf.estimators.nadaraya_watson`; bounds memory to
            :math:`O(\text{chunk\_size}\cdot m \cdot k)`.

    Shape:
        - z: :math:`(n, k)` query indices.
        - z_ref: :math:`(m, k)` reference (calc) indices.
        - y_ref: :math:`(m, k)` reference targets.
        - query_ids, ref_ids: :math:`(n,)` and :math:`(m,)` integer ids, or ``None``.
        - Output: :math:`(n, k)`.

    Examples::

        >>> act = KernelActivation(bandwidth=0.5)
        >>> z_ref = torch.linspace(-3, 3, 40).unsqueeze(1)
        >>> y_ref = (z_ref > 0).float()
        >>> act(torch.tensor([[-2.0], [2.0]]), z_ref, y_ref).round()
        tensor([[0.],
                [1.]], grad_fn=<RoundBackward0>)
    """

    def __init__(
        self,
        bandwidth: Union[float, Sequence[float], Tensor] = 1.5,
        kernel: str = "gaussian",
        learn_bandwidth: bool = True,
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        try:
            h = torch.as_tensor(bandwidth, dtype=torch.get_default_dtype()).detach().clone()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"bandwidth must be a positive number or 1-D sequence of them, got {bandwidth!r}") from None
        if h.dim() > 1 or h.numel() == 0:
            raise ValueError(f"bandwidth must be a number or a non-empty 1-D sequence, got shape {tuple(h.shape)}")
        if not bool(torch.isfinite(h).all()) or not bool((h > 0).all()):
            raise ValueError(f"bandwidth must be finite and > 0, got {h.tolist()}")
        self.kernel = kernel
        self.chunk_size = chunk_size
        if not isinstance(learn_bandwidth, bool):
            raise ValueError(f"learn_bandwidth must be True or False, got {learn_bandwidth!r}")
        self.learn_bandwidth = learn_bandwidth
        if self.learn_bandwidth:
            self.log_bandwidth = nn.Parameter(h.log())
        else:
            self.register_buffer("log_bandwidth", h.log())

    @property
    def bandwidth(self) -> Tensor:
        r"""The bandwidth :math:`h = e^{\log h}` (differentiable), shape ``()`` or ``(k,)``."""
        return self.log_bandwidth.exp()

    def forward(
        self,
        z: Tensor,
        z_ref: Tensor,
        y_ref: Tensor,
        query_ids: Optional[Tensor] = None,
        ref_ids: Optional[Tensor] = None,
    ) -> Tensor:
        return nadaraya_watson(
            z,
            z_ref,
            y_ref,
            self.bandwidth,
            kernel=self.kernel,
            query_ids=query_ids,
            ref_ids=ref_ids,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        h = self.bandwidth.detach().cpu()
        h_str = f"{h.item():.4g}" if h.dim() == 0 else str([round(v, 4) for v in h.tolist()])
        return (
            f"bandwidth={h_str}, kernel={self.kernel!r}, learn_bandwidth={self.learn_bandwidth}, "
            f"chunk_size={self.chunk_size}"
        )


_CALC_BUFFERS = ("calc_x", "calc_y", "calc_ids")
_REFERENCES = ("calc", "batch")


class KernelOutput(nn.Module):
    r"""A network with the kernel estimator as its output activation (the thesis's ``Net``).

    ``body`` computes the single index per output unit, :math:`z = f_\theta(x)`, and the
    output is the leave-one-out Nadaraya--Watson regression of the calc targets on the
    calc points' indices,

    .. math::

        \hat y_{ik} = G_k(z_{ik}), \qquad z^{\text{ref}} = f_\theta(\text{calc\_x})
        \text{ recomputed at every forward,}

    so gradients reach :math:`\theta` through both the query and the reference
    indices, and the bandwidth is learned with them (:class:`KernelActivation`).

    **A batch as the reference set.** With ``reference="batch"``, in training mode each
    step's reference set is the batch itself: for a batch :math:`B` with targets
    :math:`y_j` and indices :math:`z_j = f_\theta(x_j)`,

    .. math::

        \hat y_{ik} = \frac{\sum_{j \in B,\ \mathrm{id}_j \ne \mathrm{id}_i}
            K\big((z_{jk} - z_{ik})/h\big)\, y_{jk}}
            {\sum_{j \in B,\ \mathrm{id}_j \ne \mathrm{id}_i} K\big((z_{jk} - z_{ik})/h\big)},

    leave-one-out by ``ids``, so no extra pass of the calc points through the body is
    needed (the step costs about what a fixed output activation costs). ``forward``
    then needs ``ids`` and the batch's ``targets``, in the format ``calc_y`` takes
    (integer class labels or float targets). A batch of one row leaves its only row
    nothing to regress on and is an error; a class missing from a batch has an all-zero
    target column there, so that unit's output is exactly 0 on the batch and its
    gradient vanishes for that step (the class is simply not seen in it). In
    evaluation mode (``model.eval()``) the calc set is the reference set, as with
    ``reference="calc"``, so a calc set is still required.

    **Leave-one-out convention.** ``ids`` and ``calc_ids`` are row numbers in one
    training set: ``calc_ids[j]`` is the training row of calc point ``j`` (default
    ``arange(m)``, i.e. the calc points are training rows ``0..m-1``), and
    ``forward(x, ids)`` takes the training row numbers of the batch. A pair with equal
    ids is left out, so a training point that is also a calc point never sees its own
    target. Pass ``ids=None`` for data outside the training set (validation, test):
    nothing is left out. When the calc points are chosen with :func:`select_calc`,
    pass its result as ``calc_ids``.

    **Targets.** ``calc_y`` of shape :math:`(m, k)` holds one-hot floats for
    classification or values for regression (a 1-D float tensor is read as
    :math:`(m, 1)`). A 1-D *integer* tensor is read as class labels and one-hot encoded
    with ``n_classes`` columns (default ``calc_y.max() + 1``; give ``n_classes`` when a
    class may be missing from the calc set); the number is kept in
    :attr:`n_classes` (0 for float targets).

    ``calc_x``, ``calc_y`` and ``calc_ids`` are buffers: they are in ``state_dict``
    (loading one with another calc size resizes them) and follow ``.to(device/dtype)``.

    Args:
        body: module mapping inputs :math:`(N, *)` to indices :math:`(N, k)`.
        calc_x: calc inputs, shape :math:`(m, *)`.
        calc_y: calc targets, :math:`(m, k)`, :math:`(m,)` float, or :math:`(m,)` int labels.
        bandwidth, kernel, learn_bandwidth, chunk_size: see :class:`KernelActivation`.
        calc_ids: training-row ids of the calc points, :math:`(m,)` integers, unique
            (default ``arange(m)``).
        n_classes: number of classes for integer ``calc_y``.
        reference: ``"calc"`` (the thesis's form: the calc set is the reference set) or
            ``"batch"`` (in training mode the batch is; see above).

    Shape:
        - x: :math:`(N, *)`, same trailing shape as ``calc_x``.
        - ids: :math:`(N,)` integers or ``None``.
        - targets: :math:`(N,)` integer labels, :math:`(N, k)` or :math:`(N,)` floats, or
          ``None`` (needed only for ``reference="batch"`` in training mode).
        - Output: :math:`(N, k)`.

    Examples::

        >>> from torch import nn
        >>> X, y = torch.randn(60, 4), torch.randint(0, 3, (60,))
        >>> calc = select_calc(y, 20, policy="stratified")
        >>> body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3, bias=False))
        >>> model = KernelOutput(body, X[calc], y[calc], calc_ids=calc, n_classes=3)
        >>> model(X, ids=torch.arange(60)).shape   # training: leave calc points out
        torch.Size([60, 3])
        >>> batch = KernelOutput(body, X[calc], y[calc], calc_ids=calc, n_classes=3, reference="batch")
        >>> rows = torch.arange(16)
        >>> batch(X[rows], ids=rows, targets=y[rows]).shape   # training: the batch is the reference set
        torch.Size([16, 3])
    """

    def __init__(
        self,
        body: nn.Module,
        calc_x: Tensor,
        calc_y: Tensor,
        *,
        bandwidth: Union[float, Sequence[float], Tensor] = 1.5,
        kernel: str = "gaussian",
        calc_ids: Optional[Tensor] = None,
        learn_bandwidth: bool = True,
        chunk_size: Optional[int] = None,
        n_classes: Optional[int] = None,
        reference: str = "calc",
    ):
        super().__init__()
        if reference not in _REFERENCES:
            raise ValueError(f"reference must be one of {_REFERENCES}, got {reference!r}")
        self.reference = reference
        if not isinstance(body, nn.Module) and not callable(body):
            raise ValueError(f"body must be an nn.Module (or callable) mapping (N, ...) to (N, k), got {type(body).__name__}")
        weight = next((p for p in body.parameters() if p.is_floating_point()), None) if isinstance(body, nn.Module) else None
        if weight is not None and isinstance(calc_x, Tensor) and calc_x.is_floating_point() and calc_x.dtype != weight.dtype:
            raise ValueError(f"calc_x must have the dtype of body's parameters ({weight.dtype}), got {calc_x.dtype}")
        self.body = body
        self.activation = KernelActivation(
            bandwidth=bandwidth, kernel=kernel, learn_bandwidth=learn_bandwidth, chunk_size=chunk_size
        )
        x, y, ids, nc = self._validated_calc(calc_x, calc_y, calc_ids, n_classes, dtype=None, device=None)
        self.n_classes = nc
        self.register_buffer("calc_x", x)
        self.register_buffer("calc_y", y)
        self.register_buffer("calc_ids", ids)

    # -- calc set ---------------------------------------------------------------------

    @staticmethod
    def _validated_calc(calc_x, calc_y, calc_ids, n_classes, dtype, device):
        if not isinstance(calc_x, Tensor) or not calc_x.is_floating_point() or calc_x.dim() < 1:
            raise ValueError(f"calc_x must be a floating-point tensor of shape (m, ...), got {_describe(calc_x)}")
        if not isinstance(calc_y, Tensor) or calc_y.dim() not in (1, 2):
            raise ValueError(f"calc_y must be a tensor of shape (m, k) or (m,), got {_describe(calc_y)}")
        m = calc_x.shape[0]
        if m < 2:
            raise ValueError(f"calc_x must hold at least 2 calc points (leave-one-out needs another), got {m}")
        if calc_y.shape[0] != m:
            raise ValueError(f"calc_y must have {m} rows like calc_x, got shape {tuple(calc_y.shape)}")
        dtype = calc_x.dtype if dtype is None else dtype
        device = calc_x.device if device is None else device
        if not bool(torch.isfinite(calc_x).all()):
            raise ValueError("calc_x contains non-finite values (NaN or inf)")
        nc = 0
        if calc_y.is_floating_point():
            if n_classes is not None:
                raise ValueError("n_classes is only for integer class labels in calc_y, got float calc_y")
            if not bool(torch.isfinite(calc_y).all()):
                raise ValueError("calc_y contains non-finite values (NaN or inf)")
            y = calc_y.unsqueeze(1) if calc_y.dim() == 1 else calc_y
        elif calc_y.dtype != torch.bool and not calc_y.is_complex() and calc_y.dim() == 1:
            if bool((calc_y < 0).any()):
                raise ValueError("calc_y class labels must be >= 0")
            top = int(calc_y.max()) + 1
            nc = top if n_classes is None else n_classes
            if isinstance(nc, bool) or not isinstance(nc, int) or nc < top or nc < 2:
                raise ValueError(f"n_classes must be an int >= 2 and > every label (max label {top - 1}), got {n_classes!r}")
            y = F.one_hot(calc_y.long(), nc)
        else:
            raise ValueError(
                f"calc_y must be float targets (m, k) / (m,) or 1-D integer class labels, got {_describe(calc_y)}"
            )
        if calc_ids is None:
            ids = torch.arange(m)
        else:
            if not isinstance(calc_ids, Tensor):
                calc_ids = torch.as_tensor(calc_ids)
            if calc_ids.dim() != 1 or calc_ids.shape[0] != m:
                raise ValueError(f"calc_ids must be a 1-D tensor of length {m} (one per calc point), got {_describe(calc_ids)}")
            if calc_ids.is_floating_point() or calc_ids.is_complex() or calc_ids.dtype == torch.bool:
                raise ValueError(f"calc_ids must hold integer ids, got dtype {calc_ids.dtype}")
            if torch.unique(calc_ids).numel() != m:
                raise ValueError("calc_ids must be unique (each calc point is one training row)")
            ids = calc_ids
        return (
            calc_x.detach().to(device=device, dtype=dtype).clone(),
            y.detach().to(device=device, dtype=dtype).clone(),
            ids.detach().to(device=device, dtype=torch.long).clone(),
            nc,
        )

    def set_calc(self, x: Tensor, y: Tensor, ids: Optional[Tensor] = None, *, n_classes: Optional[int] = None) -> None:
        """Replace the calc set (same rules as the constructor); keeps the module's device and dtype.

        The number of output units must not change: ``y`` must have as many columns
        (or classes) as the current ``calc_y``.
        """
        if isinstance(x, Tensor) and x.dim() >= 1 and x.shape[1:] != self.calc_x.shape[1:]:
            raise ValueError(f"x must have shape (m, {', '.join(map(str, self.calc_x.shape[1:]))}), got {tuple(x.shape)}")
        if n_classes is None and self.n_classes and isinstance(y, Tensor) and not y.is_floating_point():
            n_classes = self.n_classes
        try:
            cx, cy, cids, nc = self._validated_calc(
                x, y, ids, n_classes, dtype=self.calc_x.dtype, device=self.calc_x.device
            )
        except ValueError as err:  # the constructor's checks, told in this method's argument names
            raise ValueError(re.sub(r"\bcalc_(x|y|ids)\b", r"\1", str(err))) from None
        if cy.shape[1] != self.calc_y.shape[1]:
            raise ValueError(f"y must give {self.calc_y.shape[1]} output columns like the current calc_y, got {cy.shape[1]}")
        self.calc_x, self.calc_y, self.calc_ids, self.n_classes = cx, cy, cids, nc

    @property
    def calc_size(self) -> int:
        """Number of calc points :math:`m`."""
        return self.calc_x.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The calc size is data, not architecture: adopt the saved one.
        for name in _CALC_BUFFERS:
            saved = state_dict.get(prefix + name)
            cur = getattr(self, name)
            if saved is not None and saved.shape != cur.shape:
                setattr(self, name, torch.empty(saved.shape, dtype=cur.dtype, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- forward ----------------------------------------------------------------------

    def index(self, x: Tensor) -> Tensor:
        r"""The single index :math:`z = f_\theta(x)`, shape :math:`(N, k)`."""
        z = self.body(x)
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.calc_y.shape[1]:
            raise ValueError(
                f"body must map (N, ...) to (N, {self.calc_y.shape[1]}) (one index per output unit), "
                f"got {_describe(z)}"
            )
        return z

    def link(self, z: Tensor) -> Tensor:
        r"""The learned link :math:`G` evaluated at index values ``z`` :math:`(n, k)`.

        Uses every calc point (nothing left out): the estimated output-activation curve,
        e.g. on a grid ``torch.linspace(...).unsqueeze(1).expand(-1, k)``.
        """
        return self.activation(z, self.index(self.calc_x), self.calc_y)

    def _check_batch(self, x, ids) -> None:
        trailing = tuple(self.calc_x.shape[1:])
        if not isinstance(x, Tensor) or not x.is_floating_point() or tuple(x.shape[1:]) != trailing or x.dim() < 1:
            raise ValueError(f"x must be a floating-point tensor of shape (N, {', '.join(map(str, trailing))}) like "
                             f"calc_x, got {_describe(x)}")
        if x.dtype != self.calc_x.dtype:
            raise ValueError(f"x must have the calc set's dtype {self.calc_x.dtype}, got {x.dtype}")
        if ids is not None and (
            not isinstance(ids, Tensor) or ids.dim() != 1 or ids.shape[0] != x.shape[0]
            or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool
        ):
            raise ValueError(f"ids must be a 1-D integer tensor with one training-row id per row of x "
                             f"({x.shape[0]}), got {_describe(ids)}")

    def _check_index(self, x: Tensor, z: Tensor) -> None:
        """Non-finite input is reported by name. The check runs on the (N, k) indices, not on the
        (N, ...) input: NaN and inf reach z through the body, and checking the small z costs a
        fraction of checking x, which dominated a training step's overhead."""
        # data-dependent checks cannot run under torch.func transforms (vmap cannot branch on values)
        if torch._C._are_functorch_transforms_active() or bool(torch.isfinite(z).all()):
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains non-finite values (NaN or inf)")
        raise ValueError("the body mapped finite x to non-finite indices z (NaN or inf): check its weights")

    def forward(self, x: Tensor, ids: Optional[Tensor] = None, targets: Optional[Tensor] = None) -> Tensor:
        self._check_batch(x, ids)
        if self.reference == "batch" and self.training:
            if ids is None or targets is None:
                raise ValueError(
                    "reference='batch' needs the batch's ids and targets in training mode (leave-one-out by id, "
                    f"the targets as the reference targets), got ids={_describe(ids)}, targets={_describe(targets)}"
                )
            if x.shape[0] < 2:
                raise ValueError(
                    "reference='batch' needs batches of at least 2 rows in training mode (leave-one-out leaves a "
                    f"single row nothing to regress on), got a batch of {x.shape[0]}"
                )
            z = self.index(x)
            self._check_index(x, z)
            y = self._batch_targets(targets, z)
            return self.activation(z, z, y, query_ids=ids, ref_ids=ids)
        z = self.index(x)
        self._check_index(x, z)
        z_ref = self.index(self.calc_x)
        if ids is None:
            return self.activation(z, z_ref, self.calc_y)
        return self.activation(z, z_ref, self.calc_y, query_ids=ids, ref_ids=self.calc_ids)

    def _batch_targets(self, targets, z: Tensor) -> Tensor:
        """The batch's targets in calc_y's form: (N, k) floats on z's device and dtype."""
        n, k = z.shape
        if not isinstance(targets, Tensor) or targets.dim() not in (1, 2) or targets.shape[0] != n:
            raise ValueError(f"targets must be a tensor of {n} rows (one per batch row), got {_describe(targets)}")
        if targets.device != z.device:
            raise ValueError(f"targets must be on the device of the batch ({z.device}), got {targets.device}")
        if targets.is_floating_point():
            y = targets.unsqueeze(1) if targets.dim() == 1 else targets
            if y.shape[1] != k:
                raise ValueError(f"targets must have {k} columns like calc_y, got shape {tuple(targets.shape)}")
            return y.to(z.dtype)
        if targets.dim() != 1 or targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(f"targets must be float targets or 1-D integer class labels, got {_describe(targets)}")
        if not self.n_classes:
            raise ValueError("targets are class labels but calc_y holds float targets: give float targets "
                             f"of shape ({n}, {k})")
        try:
            return F.one_hot(targets.long(), self.n_classes).to(z.dtype)
        except RuntimeError:  # a label outside 0..n_classes-1
            raise ValueError(f"targets class labels must lie in 0..{self.n_classes - 1} (n_classes), got "
                             f"{targets.min().item()}..{targets.max().item()}") from None

    def extra_repr(self) -> str:
        return f"calc_size={self.calc_size}, n_classes={self.n_classes}, reference={self.reference!r}"


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


_CALC_POLICIES = ("random", "stratified")


def select_calc(y: Tensor, size: int, *, policy: str = "random", seed: int = 0) -> Tensor:
    r"""Choose ``size`` calc points among ``n`` training rows; returns their row indices.

    * ``"random"``: a uniform sample without replacement.
    * ``"stratified"``, integer class labels ``y`` :math:`(n,)`: class proportions are
      kept (largest-remainder rounding of ``size * n_c / n``), with at least one point
      per class when ``size >= `` the number of classes present.
    * ``"stratified"``, float targets ``y`` :math:`(n,)` or :math:`(n, k)`: quantile
      strata of the first column: the rows sorted by target are cut into ``size``
      groups of (almost) equal count and one row is drawn from each, so the calc set
      spans the target's range.

    Deterministic for a given ``seed`` (its own :class:`torch.Generator`; the global RNG
    is untouched).

    Args:
        y: training targets: 1-D integer labels, or float values.
        size: number of calc points, :math:`2 \le \text{size} \le n`.
        policy: ``"random"`` or ``"stratified"``.
        seed: seed of the generator.

    Returns:
        ``LongTensor`` of ``size`` distinct row indices, sorted, on ``y``'s device.

    Examples::

        >>> y = torch.tensor([0] * 80 + [1] * 20)
        >>> idx = select_calc(y, 10, policy="stratified")
        >>> torch.bincount(y[idx]).tolist()
        [8, 2]
    """
    if not isinstance(y, Tensor) or y.dim() not in (1, 2) or y.shape[0] == 0 or y.is_complex():
        raise ValueError(f"y must be a non-empty real tensor of shape (n,) or (n, k), got {_describe(y)}")
    n = y.shape[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size > n:
        raise ValueError(f"size must be an int with 2 <= size <= n = {n} (leave-one-out needs 2), got {size!r}")
    if policy not in _CALC_POLICIES:
        raise ValueError(f"policy must be one of {_CALC_POLICIES}, got {policy!r}")
    gen = torch.Generator().manual_seed(_check_seed("seed", seed))
    y_cpu = y.detach().cpu()
    if policy == "random":
        idx = torch.randperm(n, generator=gen)[:size]
    elif not y_cpu.is_floating_point():
        if y_cpu.dim() != 1:
            raise ValueError(f"integer y must be 1-D class labels for stratified selection, got shape {tuple(y.shape)}")
        idx = _stratified_classes(y_cpu.long(), size, gen)
    else:
        col = y_cpu if y_cpu.dim() == 1 else y_cpu[:, 0]
        order = torch.argsort(col, stable=True)
        bounds = torch.linspace(0, n, size + 1).round().long()
        picks = []
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            picks.append(order[lo + int(torch.randint(hi - lo, (1,), generator=gen))])
        idx = torch.stack(picks)
    return torch.sort(idx).values.to(y.device)


def _stratified_classes(y: Tensor, size: int, gen: torch.Generator) -> Tensor:
    classes, counts = torch.unique(y, return_counts=True)
    n = y.shape[0]
    quota = counts.double() * size / n
    take = quota.floor().long()
    if size >= classes.numel():
        take = take.clamp(min=1)
    take = torch.minimum(take, counts)
    remainder = quota - take.double()
    # Largest-remainder adjustment, one point at a time (the number of classes is small).
    while int(take.sum()) < size:
        room = take < counts
        score = torch.where(room, remainder, torch.full_like(remainder, -math.inf))
        c = int(torch.argmax(score))
        take[c] += 1
        remainder[c] -= 1
    while int(take.sum()) > size:
        floor = 1 if size >= classes.numel() else 0
        score = torch.where(take > floor, remainder, torch.full_like(remainder, math.inf))
        c = int(torch.argmin(score))
        take[c] -= 1
        remainder[c] += 1
    picks = []
    for c, t in zip(classes.tolist(), take.tolist()):
        rows = torch.nonzero(y == c).squeeze(1)
        picks.append(rows[torch.randperm(rows.numel(), generator=gen)[:t]])
    return torch.cat(picks)


# --------------------------------------------------------------------------- registry


def _prelu(num_parameters: int = 1, init: float = 0.25) -> nn.Module:
    return nn.PReLU(num_parameters=num_parameters, init=init)


def _plain(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Factory for a channel-free activation; ``num_parameters`` is accepted and unused."""

    def factory(num_parameters: Optional[int] = None, **kwargs) -> nn.Module:
        return cls(**kwargs)

    factory.__signature__ = inspect.Signature(
        [inspect.Parameter("num_parameters", inspect.Parameter.KEYWORD_ONLY, default=None)]
        + [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(cls).parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
    )
    factory.__doc__ = f"Build :class:`{cls.__module__}.{cls.__qualname__}` (``num_parameters`` ignored)."
    return factory


ACTIVATIONS: Dict[str, Callable[..., nn.Module]] = {
    "sigmoid": _plain(nn.Sigmoid),
    "tanh": _plain(nn.Tanh),
    "relu": _plain(nn.ReLU),
    "leaky_relu": _plain(nn.LeakyReLU),
    "elu": _plain(nn.ELU),
    "selu": _plain(nn.SELU),
    "swish": _plain(lambda beta=1.0: Swish(beta=beta, learnable=False)),
    "swish_learnable": _plain(lambda beta=1.0: Swish(beta=beta, learnable=True)),
    "mish": _plain(nn.Mish),
    "prelu": _prelu,
    "fluid_relu": lambda num_parameters=1, init=0.0, grad_scale=1.0: FluidReLU(num_parameters, init, grad_scale, "exp"),
    "fluid_relu_sigmoid": lambda num_parameters=1, init=0.0, grad_scale=1.0: FluidReLU(
        num_parameters, init, grad_scale, "sigmoid"
    ),
    "identity": _plain(nn.Identity),
}
"""Activation name -> factory returning a fresh module.

Every factory accepts ``num_parameters`` (channels); only ``prelu``, ``fluid_relu`` and
``fluid_relu_sigmoid`` use it, the others ignore it so a model builder can pass it
uniformly."""


def make_activation(name: str, **kwargs) -> nn.Module:
    """Build the activation called ``name`` (a key of :data:`ACTIVATIONS`).

    Keyword arguments go to the factory, e.g. ``make_activation("prelu",
    num_parameters=32)`` or ``make_activation("fluid_relu", num_parameters=32,
    grad_scale=1e4)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the names) or a keyword the
            activation does not take.

    Examples::

        >>> make_activation("swish")
        Swish(beta=1, learnable=False)
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"name must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    factory = ACTIVATIONS[name]
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad keyword arguments for activation {name!r}: {err}") from None
    for key, value in kwargs.items():  # the torch modules check none of these themselves
        default = signature.parameters[key].default
        if value is None and default is None:
            continue
        if key == "num_parameters":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"num_parameters must be a positive int, got {value!r}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be True or False, got {value!r}")
        elif isinstance(default, (int, float)) and not _is_finite_number(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
    return factory(**kwargs)


# --------------------------------------------------------------------------- optimiser groups


def _shape_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Parameters that set an activation's shape, found by module type."""
    found = []
    for module in model.modules():
        if isinstance(module, KernelActivation):
            candidates = [module.log_bandwidth]
        elif isinstance(module, FluidReLU):
            candidates = [module.a]
        elif isinstance(module, nn.PReLU):
            candidates = [module.weight]
        elif isinstance(module, Swish):
            candidates = [module.beta]
        else:
            continue
        found.extend(p for p in candidates if isinstance(p, nn.Parameter))
    return found


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    r"""Two optimiser parameter groups: weights with decay, activation shapes without.

    The no-decay group holds the parameters that set an activation's *shape* rather
    than a weight: :class:`KernelActivation`'s :math:`\log h`, :class:`FluidReLU`'s
    :math:`a`, :class:`torch.nn.PReLU`'s slope and a learnable :class:`Swish`
    :math:`\beta`; they are found by module type. Decaying them would pull the shape
    toward an arbitrary point (:math:`h = 1`, :math:`a = 0`, slope 0) instead of
    regularising the fit. Every other parameter is in the first group.

    Args:
        model: the module whose parameters are grouped (shared parameters once).
        weight_decay: decay of the first group, finite and :math:`\ge 0`.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``
        (a group may be empty).

    Examples::

        >>> model = nn.Sequential(nn.Linear(3, 4), FluidReLU(), nn.Linear(4, 1))
        >>> opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1)
        >>> [len(g["params"]) for g in opt.param_groups]
        [4, 1]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not _is_finite_number(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    shape_ids = {id(p) for p in _shape_parameters(model)}
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if id(p) in shape_ids else decay).append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
