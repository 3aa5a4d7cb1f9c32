r"""Stateless functions behind kaf's modules, as :mod:`torch.nn.functional` serves :mod:`torch.nn`.

The modules of :mod:`kaf.nn` own parameters (a bandwidth, FluidReLU's :math:`a`,
Swish's :math:`\beta`) and call these functions with them; a network that keeps its
own parameters, or a computation that needs a value the module hides (FluidReLU's
derivative in :math:`a` point by point), calls them directly.

* :func:`nadaraya_watson` -- the leave-one-out Nadaraya--Watson estimator (K-AF), and
  :func:`kernel_density` -- its denominator as a density (both from
  :mod:`kaf.estimators`, where they are implemented).
* :func:`fluid_relu` -- FluidReLU with a given :math:`a`, and
  :func:`fluid_relu_derivatives` -- its elementwise first derivatives.
* :func:`swish` -- :math:`x\,\sigma(\beta x)`.
* :func:`bernoulli_nll` -- the trimmed binary likelihood of the K-AF loss (from
  :mod:`kaf.estimators`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from kaf.estimators import _check_positive, bernoulli_nll, kernel_density, nadaraya_watson

__all__ = [
    "nadaraya_watson",
    "kernel_density",
    "bernoulli_nll",
    "fluid_relu",
    "fluid_relu_derivatives",
    "swish",
    "FLUID_VARIANTS",
]

#: The two forms of FluidReLU's negative branch: ``"exp"`` (adopted) and ``"sigmoid"``.
FLUID_VARIANTS = ("exp", "sigmoid")

ChannelShape = Tuple[int, ...]


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _check_float_input(input: object) -> None:
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {_describe(input)}")


# --------------------------------------------------------------------------- FluidReLU


def _negative_exponent(v: Tensor, s: Tensor) -> Tensor:
    r""":math:`t = \min(v, 0)\,s`, clamped to the dtype's finite range (a fresh tensor).

    The clamp keeps :math:`t` finite when :math:`v s` overflows (huge :math:`|v|` or
    :math:`a \ll 0`), so that :math:`e^t = 0` and every product with it is an exact 0
    rather than ``inf * 0 = nan``.
    """
    return v.clamp(max=0).mul_(s).clamp_(min=torch.finfo(v.dtype).min)


def _channel_scale(a: Tensor, dtype: torch.dtype, channel_shape: ChannelShape) -> Tensor:
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


def _fluid_derivatives(v: Tensor, a: Tensor, channel_shape: ChannelShape, variant: str) -> Tuple[Tensor, Tensor]:
    r"""Elementwise :math:`(\partial f/\partial v, \partial f/\partial a)` from differentiable ops.

    The first-order formulas of :func:`fluid_relu` written so that autograd can
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
    def forward(v: Tensor, a: Tensor, channel_shape: ChannelShape, variant: str, grad_scale: float) -> Tensor:
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
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        v, a, channel_shape, variant, grad_scale = inputs
        ctx.save_for_backward(v, a)
        ctx.channel_shape = channel_shape
        ctx.variant = variant
        ctx.grad_scale = grad_scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Any, ...]:  # type: ignore[override]
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


def _fluid_channel_shape(input: Tensor, a: Tensor, variant: str) -> ChannelShape:
    """Check ``fluid_relu``'s tensors and variant; the shape ``a`` is viewed as to broadcast over ``input``."""
    _check_float_input(input)
    if not isinstance(a, Tensor) or not a.is_floating_point() or a.dim() > 1:
        raise ValueError(f"a must be a floating-point tensor of shape () or (C,), got {_describe(a)}")
    if variant not in FLUID_VARIANTS:
        raise ValueError(f"variant must be one of {FLUID_VARIANTS}, got {variant!r}")
    channels = a.numel()
    if channels == 1:
        return (1,) * input.dim()
    if input.dim() < 2 or input.shape[1] != channels:
        raise ValueError(
            f"input must have {channels} channels in dimension 1, one per element of a (num_parameters), "
            f"got shape {tuple(input.shape)}"
        )
    return (1, channels) + (1,) * (input.dim() - 2)


def fluid_relu(input: Tensor, a: Tensor, grad_scale: float = 1.0, variant: str = "exp") -> Tensor:
    r"""FluidReLU with the shape parameter ``a``: ReLU whose negative branch bends from slope 0 to 1.

    .. math::

        \text{fluid\_relu}(v) =
        \begin{cases}
            v, & v \ge 0 \\
            v \, \exp\!\big(v\, e^{-a}\big), & v < 0
        \end{cases}
        \qquad (\texttt{variant="exp"}),

    and :math:`2 v\, \sigma(v e^{-a})` for :math:`v < 0` with ``variant="sigmoid"``. As
    :math:`a \to -\infty` the negative branch tends to 0 (ReLU); as
    :math:`a \to +\infty` it tends to :math:`v` (identity). See
    :class:`kaf.nn.FluidReLU` for the derivatives, their higher orders and
    ``torch.func``; :func:`fluid_relu_derivatives` returns the first ones elementwise.

    ``grad_scale`` (:math:`\beta > 0`) changes no value: every derivative taken with
    respect to :math:`a` is multiplied by :math:`\beta` (at every order), the gradient
    of :math:`a` included.

    Any finite input and finite :math:`a` give a finite output and finite derivatives.

    Args:
        input: :math:`v`, a floating-point tensor.
        a: the shape parameters: one element (shared by every entry), or :math:`C`
            elements, one per channel (dimension 1 of ``input``), as the weight of
            :func:`torch.nn.functional.prelu`. Used in ``input``'s dtype.
        grad_scale: :math:`\beta > 0`, the factor applied to the derivatives in :math:`a`.
        variant: ``"exp"`` or ``"sigmoid"`` (:data:`FLUID_VARIANTS`).

    Shape:
        - input: :math:`(*)`, any shape; :math:`(N, C, *)` when ``a`` has :math:`C > 1`
          elements.
        - a: :math:`()`, :math:`(1,)` or :math:`(C,)`.
        - Output: same shape as the input.

    Examples::

        >>> v = torch.tensor([-2.0, -0.5, 0.0, 1.5])
        >>> fluid_relu(v, torch.tensor(0.0))  # v e^v below 0
        tensor([-0.2707, -0.3033,  0.0000,  1.5000])
        >>> x = torch.randn(8, 3, 5)
        >>> a = torch.zeros(3, requires_grad=True)  # one a per channel
        >>> fluid_relu(x, a, grad_scale=1e4).sum().backward()
        >>> a.grad.shape
        torch.Size([3])
    """
    channel_shape = _fluid_channel_shape(input, a, variant)
    beta = _check_positive("grad_scale", grad_scale)
    return _FluidReLUFunction.apply(input, a, channel_shape, variant, beta)


def fluid_relu_derivatives(input: Tensor, a: Tensor, variant: str = "exp") -> Tuple[Tensor, Tensor]:
    r"""The first derivatives of :func:`fluid_relu` at each entry, :math:`\partial f/\partial v` and :math:`\partial f/\partial a`.

    With :math:`t = v e^{-a}`, for :math:`v < 0`:

    .. math::

        \texttt{"exp"}:\quad \frac{\partial f}{\partial v} = (1 + t)\, e^{t}, \qquad
        \frac{\partial f}{\partial a} = -v\, t\, e^{t};

        \texttt{"sigmoid"}:\quad \frac{\partial f}{\partial v} = 2\sigma(t) + 2t\,\sigma(t)\big(1-\sigma(t)\big),
        \qquad \frac{\partial f}{\partial a} = -2 v t\, \sigma(t)\big(1-\sigma(t)\big);

    and 1 and 0 for :math:`v \ge 0` (the right-hand derivatives at the kink). The
    derivative in :math:`a` is per entry (not summed over a channel) and unscaled (no
    :math:`\beta`): what :func:`fluid_relu`'s backward sums and scales. Both are built
    from differentiable operations, so they can be differentiated again.

    Args:
        input: :math:`v`, a floating-point tensor.
        a: one element, or one per channel (dimension 1 of ``input``).
        variant: ``"exp"`` or ``"sigmoid"``.

    Shape:
        - input: :math:`(*)`; :math:`(N, C, *)` when ``a`` has :math:`C > 1` elements.
        - Output: two tensors of the input's shape.

    Examples::

        >>> v = torch.tensor([-1.0, 2.0], dtype=torch.float64)
        >>> df_dv, df_da = fluid_relu_derivatives(v, torch.tensor(0.0, dtype=torch.float64))
        >>> df_dv.tolist(), df_da.tolist()  # (1 + v) e^v and -v^2 e^v at v = -1
        ([0.0, 1.0], [-0.36787944117144233, -0.0])
    """
    channel_shape = _fluid_channel_shape(input, a, variant)
    return _fluid_derivatives(input, a, channel_shape, variant)


# --------------------------------------------------------------------------- Swish


def swish(input: Tensor, beta: Union[float, Tensor] = 1.0) -> Tensor:
    r"""Swish, :math:`\text{swish}(x) = x\,\sigma(\beta x)`.

    :math:`\beta = 1` is SiLU (computed by :func:`torch.nn.functional.silu`);
    :math:`\beta \to \infty` tends to ReLU, :math:`\beta = 0` to :math:`x/2`.

    Args:
        input: a floating-point tensor.
        beta: :math:`\beta`, a number or a tensor that broadcasts against ``input`` (a
            learnable :math:`\beta` gets its gradient).

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: same shape as the input.

    Examples::

        >>> swish(torch.tensor([-1.0, 0.0, 2.0]), beta=0.0)
        tensor([-0.5000,  0.0000,  1.0000])
    """
    _check_float_input(input)
    if isinstance(beta, Tensor):
        return input * torch.sigmoid(beta * input)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number or a tensor, got {beta!r}")
    if beta == 1.0:
        return F.silu(input)  # same function, one fused kernel
    return input * torch.sigmoid(beta * input)
