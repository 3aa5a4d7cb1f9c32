"""kaf.functional against closed forms, finite differences (gradcheck) and the modules that delegate to it."""

import math

import pytest
import torch
from torch import nn

import kaf.estimators
from kaf import functional as kf
from kaf.nn import FluidReLU, KernelActivation, KernelOutput, Swish

VARIANTS = ("exp", "sigmoid")


def closed_form(v: float, a: float, variant: str):
    """(f, df/dv, df/da) of one entry, in Python floats, from the definitions."""
    if v >= 0:
        return v, 1.0, 0.0
    s = math.exp(-a)
    t = v * s
    if variant == "exp":
        return v * math.exp(t), (1 + t) * math.exp(t), -v * v * s * math.exp(t)
    sig = 1 / (1 + math.exp(-t))
    return 2 * v * sig, 2 * sig + 2 * t * sig * (1 - sig), -2 * v * t * sig * (1 - sig)


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    return x + 0.1 * torch.sign(x)  # away from the kink at 0, where finite differences straddle it


# --------------------------------------------------------------------------- fluid_relu


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("a_shape", [(), (1,), (3,)])
def test_fluid_relu_and_its_derivatives_match_the_closed_forms(variant, a_shape):
    x = _inputs((4, 3, 5), 0)
    a = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)[: (3 if a_shape == (3,) else 1)].reshape(a_shape)
    y = kf.fluid_relu(x, a, variant=variant)
    df_dv, df_da = kf.fluid_relu_derivatives(x, a, variant=variant)
    assert y.shape == df_dv.shape == df_da.shape == x.shape
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in x.shape)).tolist():
        v = float(x[tuple(idx)])
        a_i = float(a.flatten()[idx[1] if a.numel() == 3 else 0])
        f, dv, da = closed_form(v, a_i, variant)
        assert float(y[tuple(idx)]) == pytest.approx(f, rel=1e-12, abs=1e-300)
        assert float(df_dv[tuple(idx)]) == pytest.approx(dv, rel=1e-10, abs=1e-14)
        assert float(df_da[tuple(idx)]) == pytest.approx(da, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_fluid_relu_gradcheck_and_gradgradcheck(variant, channels):
    """First and second derivatives in input and a against finite differences (a of shape (), (1,), (3,))."""
    x = _inputs((3, 3, 2), 1).requires_grad_()
    g = torch.Generator().manual_seed(2)
    shape = () if channels == 0 else (channels,)
    a = (0.5 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()

    def f(x, a):
        return kf.fluid_relu(x, a, variant=variant)

    assert torch.autograd.gradcheck(f, (x, a), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, (x, a), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fluid_relu_derivatives_are_differentiable(variant):
    """The derivatives' own derivatives against finite differences of the derivatives."""
    x = _inputs((2, 3), 3).requires_grad_()
    a = torch.tensor([0.3, -0.4, 1.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: kf.fluid_relu_derivatives(x, a, variant=variant), (x, a),
                                    eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_scale_is_the_derivative_in_a_over_beta(variant):
    """With grad_scale = beta the gradient of a is that of f(v, beta * b) in b at b = a / beta
    (finite differences of the unscaled function), and the values and input gradient are unchanged."""
    beta = 250.0
    x = _inputs((5, 2, 3), 4).requires_grad_()
    a = torch.tensor([-0.7, 0.9], dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    scaled = kf.fluid_relu(x, a, grad_scale=beta, variant=variant)
    gx, ga = torch.autograd.grad((w * scaled).sum(), (x, a))
    eps = 1e-7
    for c in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[c] = eps
        b = a.detach() / beta
        plus = (w * kf.fluid_relu(x.detach(), beta * (b + step), variant=variant)).sum()
        minus = (w * kf.fluid_relu(x.detach(), beta * (b - step), variant=variant)).sum()
        assert float(ga[c]) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-5)
    plain = kf.fluid_relu(x, a, variant=variant)
    (gx_plain,) = torch.autograd.grad((w * plain).sum(), x)
    assert torch.equal(scaled, plain) and torch.equal(gx, gx_plain)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fluid_relu_module_delegates_to_the_function(variant):
    m = FluidReLU(3, init=0.4, grad_scale=30.0, variant=variant).double()
    x = _inputs((2, 3, 4), 6)
    xm, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = m.a.detach().clone().requires_grad_()
    ym, yf = m(xm), kf.fluid_relu(xf, a, 30.0, variant)
    assert torch.equal(ym, yf)
    ym.sum().backward()
    yf.sum().backward()
    assert torch.equal(xm.grad, xf.grad) and torch.equal(m.a.grad, a.grad)


def test_fluid_relu_bad_arguments_name_the_argument():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="input must be a floating-point"):
        kf.fluid_relu(torch.arange(3), torch.zeros(1))
    with pytest.raises(ValueError, match="a must be a floating-point tensor"):
        kf.fluid_relu(x, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a must be a floating-point tensor"):
        kf.fluid_relu(x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="a must be a floating-point tensor"):
        kf.fluid_relu(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="3 channels in dimension 1"):
        kf.fluid_relu(torch.randn(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="3 channels in dimension 1"):
        kf.fluid_relu(torch.randn(3), torch.zeros(3))
    for beta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="grad_scale"):
            kf.fluid_relu(x, torch.zeros(1), grad_scale=beta)
    with pytest.raises(ValueError, match="variant"):
        kf.fluid_relu(x, torch.zeros(1), variant="tanh")
    with pytest.raises(ValueError, match="variant"):
        kf.fluid_relu_derivatives(x, torch.zeros(1), variant="tanh")


# --------------------------------------------------------------------------- factory keyword arguments


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fluid_relu_module_takes_dtype(dtype):
    m = FluidReLU(4, init=0.25, dtype=dtype)
    assert m.a.dtype == dtype and m.a.device.type == "cpu"
    assert m.a.tolist() == [0.25] * 4  # 0.25 is exact in every floating dtype
    x = -torch.rand(3, 4, 2, dtype=dtype) - 0.5
    y = m(x)
    assert y.dtype == dtype
    ref = torch.tensor([[[closed_form(float(v), 0.25, "exp")[0] for v in row] for row in b] for b in x.double().tolist()])
    assert torch.allclose(y.double(), ref.double(), rtol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    y.sum().backward()
    assert m.a.grad.dtype == dtype


def test_fluid_relu_module_dtype_is_checked():
    with pytest.raises(ValueError, match="dtype"):
        FluidReLU(dtype=torch.long)
    with pytest.raises(ValueError, match="init"):
        FluidReLU(init=1e5, dtype=torch.float16)  # beyond float16's range
    m = FluidReLU(init=1e5, dtype=torch.float32)
    assert m.a.item() == 1e5
    m.a.data.fill_(3.0)
    m.reset_parameters()
    assert m.a.item() == 1e5


def test_factory_kwargs_of_the_other_modules():
    s = Swish(beta=0.5, learnable=True, dtype=torch.float64)
    assert s.beta.dtype == torch.float64 and isinstance(s.beta, nn.Parameter)
    assert Swish(dtype=torch.float64).beta.dtype == torch.float64
    k = KernelActivation(bandwidth=[0.5, 2.0], dtype=torch.float64)
    assert k.log_bandwidth.dtype == torch.float64
    assert k.bandwidth.tolist() == pytest.approx([0.5, 2.0], rel=1e-15)
    assert KernelActivation(learn_bandwidth=False, dtype=torch.float64).log_bandwidth.dtype == torch.float64
    body = nn.Linear(4, 2, bias=False).double()
    calc_x = torch.randn(6, 4)  # float32, stored as float64
    model = KernelOutput(body, calc_x, torch.tensor([0, 1, 0, 1, 1, 0]), dtype=torch.float64)
    assert model.calc_x.dtype == model.calc_y.dtype == model.activation.log_bandwidth.dtype == torch.float64
    assert model(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="dtype of body's parameters"):
        KernelOutput(nn.Linear(4, 2), calc_x, torch.tensor([0, 1, 0, 1, 1, 0]), dtype=torch.float64)
    for build in (lambda: Swish(dtype=torch.int32), lambda: KernelActivation(dtype=torch.int64)):
        with pytest.raises(ValueError, match="dtype"):
            build()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
def test_device_keyword_on_cuda_matches_cpu(variant):
    x = _inputs((4, 3, 6), 7)
    results = []
    for device in ("cpu", "cuda"):
        m = FluidReLU(3, init=0.2, grad_scale=10.0, variant=variant, device=device, dtype=torch.float64)
        assert m.a.device.type == device
        xi = x.to(device).requires_grad_()
        m(xi).square().sum().backward()
        results.append((m(xi).detach().cpu(), xi.grad.cpu(), m.a.grad.cpu()))
        k = KernelActivation(bandwidth=[0.5, 1.0], device=device)
        assert k.log_bandwidth.device.type == device
    for c, d in zip(*results):
        assert torch.allclose(c, d, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- swish, re-exports


def test_swish_matches_its_definition_and_silu():
    x = _inputs((7,), 8)
    for beta in (0.0, 0.5, 1.0, 3.0):
        ref = torch.tensor([v / (1 + math.exp(-beta * v)) for v in x.tolist()], dtype=torch.float64)
        assert torch.allclose(kf.swish(x, beta), ref, rtol=1e-14, atol=0)
    assert torch.equal(kf.swish(x, 1.0), torch.nn.functional.silu(x))
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kf.swish, (x.clone().requires_grad_(), beta))
    with pytest.raises(ValueError, match="beta"):
        kf.swish(x, float("nan"))
    with pytest.raises(ValueError, match="input"):
        kf.swish(torch.arange(3), 1.0)


def test_swish_module_delegates_to_the_function():
    x = _inputs((5,), 9)
    assert torch.equal(Swish(beta=0.5)(x), kf.swish(x, 0.5))
    m = Swish(beta=0.5, learnable=True, dtype=torch.float64)
    assert torch.equal(m(x), kf.swish(x, m.beta))


def test_estimators_are_re_exported_not_copied():
    for name in ("nadaraya_watson", "kernel_density", "bernoulli_nll"):
        assert getattr(kf, name) is getattr(kaf.estimators, name)
    assert set(kf.__all__) <= set(dir(kf))
