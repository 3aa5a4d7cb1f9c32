"""FluidReLU against closed forms, a slow elementwise reference, gradcheck and its limits."""

import math

import pytest
import torch

from kaf.nn import FluidReLU

VARIANTS = ("exp", "sigmoid")


def slow_reference(v: float, a: float, variant: str) -> float:
    """The definition, one scalar at a time, in Python floats."""
    if v >= 0:
        return v
    t = v * math.exp(-a)
    if variant == "exp":
        return v * math.exp(t)
    return 2 * v / (1 + math.exp(-t))


def slow_derivatives(v: float, a: float, variant: str):
    """(df/dv, df/da) from the closed forms in the docstring."""
    if v >= 0:
        return 1.0, 0.0
    s = math.exp(-a)
    t = v * s
    if variant == "exp":
        return (1 + t) * math.exp(t), -v * v * s * math.exp(t)
    sig = 1 / (1 + math.exp(-t))
    return 2 * sig + 2 * t * sig * (1 - sig), -2 * v * t * sig * (1 - sig)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_slow_reference_per_channel(variant):
    torch.manual_seed(0)
    m = FluidReLU(3, variant=variant).double()
    a = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    m.a.data.copy_(a)
    x = (3 * torch.randn(4, 3, 5, dtype=torch.float64)).requires_grad_()
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    for n in range(4):
        for c in range(3):
            for l in range(5):
                v = float(x.detach()[n, c, l])
                assert float(y.detach()[n, c, l]) == pytest.approx(slow_reference(v, float(a[c]), variant), rel=1e-12, abs=1e-300)
                dv, _ = slow_derivatives(v, float(a[c]), variant)
                assert float(x.grad[n, c, l]) == pytest.approx(float(g[n, c, l]) * dv, rel=1e-10, abs=1e-14)
    expected_a = [
        sum(
            float(g[n, c, l]) * slow_derivatives(float(x.detach()[n, c, l]), float(a[c]), variant)[1]
            for n in range(4)
            for l in range(5)
        )
        for c in range(3)
    ]
    assert m.a.grad.tolist() == pytest.approx(expected_a, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_parameters", [1, 3])
def test_gradcheck_input_and_a(variant, num_parameters):
    torch.manual_seed(1)
    x = (2 * torch.randn(5, 3, 4, dtype=torch.float64)).requires_grad_()
    a = (0.5 * torch.randn(num_parameters, dtype=torch.float64)).requires_grad_()
    m = FluidReLU(num_parameters, variant=variant).double()

    assert torch.autograd.gradcheck(lambda x, a: _apply(m, x, a), (x, a), eps=1e-6, atol=1e-7)


def _apply(m: FluidReLU, x, a):
    """Run the module with ``a`` substituted for its parameter (so gradcheck can vary it)."""
    return torch.func.functional_call(m, {"a": a}, (x,))


@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_scale_scales_only_the_gradient_of_a(variant):
    torch.manual_seed(2)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    g = torch.randn_like(x)
    outs, grads_a, grads_x = [], [], []
    for beta in (1.0, 10000.0):
        m = FluidReLU(4, init=0.3, grad_scale=beta, variant=variant).double()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        outs.append(y.detach())
        grads_a.append(m.a.grad.clone())
        grads_x.append(xi.grad.clone())
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads_x[0], grads_x[1])
    assert torch.equal(grads_a[1], 10000.0 * grads_a[0])
    assert bool((grads_a[0] != 0).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_limits_relu_and_identity(variant):
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    relu_like = FluidReLU(init=-30.0, variant=variant).double()
    identity_like = FluidReLU(init=30.0, variant=variant).double()
    with torch.no_grad():
        assert torch.allclose(relu_like(x), torch.relu(x), atol=1e-9)
        assert torch.allclose(identity_like(x), x, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("a", [-2.0, 0.0, 1.5])
def test_c1_at_zero(variant, a):
    """Both one-sided finite-difference slopes at 0 are 1 (the derivative is continuous)."""
    m = FluidReLU(init=a, variant=variant).double()
    eps = 1e-7
    with torch.no_grad():
        f0 = m(torch.zeros(1, dtype=torch.float64))
        left = (f0 - m(torch.tensor([-eps], dtype=torch.float64))) / eps
        right = (m(torch.tensor([eps], dtype=torch.float64)) - f0) / eps
    assert float(left) == pytest.approx(1.0, abs=1e-5)
    assert float(right) == pytest.approx(1.0, abs=1e-12)
    x = torch.tensor([-1e-12, 0.0, 1e-12], dtype=torch.float64, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)


def test_exp_variant_curvature_jump_is_twice_the_sigmoid_one():
    """Second derivative at 0-: 2 e^{-a} (exp) against e^{-a} (sigmoid), 0 at 0+."""
    a = 0.4
    eps = 1e-4
    v = torch.tensor([-2 * eps, -eps, 0.0], dtype=torch.float64)
    second = {}
    for variant in VARIANTS:
        with torch.no_grad():
            f = FluidReLU(init=a, variant=variant).double()(v)
        second[variant] = float((f[2] - 2 * f[1] + f[0]) / eps**2)
    assert second["exp"] == pytest.approx(2 * math.exp(-a), rel=1e-3)
    assert second["sigmoid"] == pytest.approx(math.exp(-a), rel=1e-3)


@pytest.mark.parametrize("shape", [(7, 4), (7, 4, 9), (7, 4, 5, 5)])
def test_per_channel_shapes(shape):
    m = FluidReLU(4)
    with torch.no_grad():
        m.a.copy_(torch.tensor([-3.0, -1.0, 1.0, 3.0]))
    x = -torch.rand(shape) - 0.5  # negative inputs, where a matters
    x.requires_grad_()
    y = m(x)
    assert y.shape == x.shape
    for c in range(4):
        ref = FluidReLU(init=float(m.a.detach()[c]))(x[:, c].detach())
        assert torch.allclose(y[:, c], ref, rtol=1e-6, atol=1e-7)
    y.sum().backward()
    assert m.a.grad.shape == (4,)


def test_shared_parameter_accepts_any_shape():
    m = FluidReLU()
    for shape in [(), (5,), (2, 3), (2, 3, 4, 5)]:
        x = torch.randn(shape, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape
        y.sum().backward()
    assert m.a.grad.shape == (1,)


def test_wrong_channel_count_raises():
    m = FluidReLU(4)
    with pytest.raises(ValueError, match="num_parameters"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="num_parameters"):
        m(torch.randn(4))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values_are_finite(variant, dtype):
    big = torch.finfo(dtype).max / 10
    m = FluidReLU(3, variant=variant).to(dtype)
    with torch.no_grad():
        m.a.copy_(torch.tensor([-1e4, 0.0, 1e4]))
    x = torch.tensor([[-big, -big, -big], [-1e-30, -1e-30, -1e-30], [big, big, big], [0.0, 0.0, 0.0]], dtype=dtype)
    x.requires_grad_()
    y = m(x)
    y.sum().backward()
    for t in (y, x.grad, m.a.grad):
        assert bool(torch.isfinite(t).all())
    assert float(y[0, 0]) == 0.0  # a -> -inf: ReLU even for a huge negative input


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_parameters"):
        FluidReLU(0)
    with pytest.raises(ValueError, match="grad_scale"):
        FluidReLU(grad_scale=0.0)
    with pytest.raises(ValueError, match="init"):
        FluidReLU(init=float("nan"))
    with pytest.raises(ValueError, match="variant"):
        FluidReLU(variant="tanh")
    with pytest.raises(ValueError, match="floating"):
        FluidReLU()(torch.arange(3))


def test_repr_and_no_input_grad():
    m = FluidReLU(2, init=0.5, grad_scale=100.0, variant="sigmoid")
    assert "grad_scale=100.0" in repr(m) and "variant='sigmoid'" in repr(m)
    x = torch.randn(3, 2)  # input needs no gradient: only a gets one
    m(x).sum().backward()
    assert m.a.grad is not None and bool(torch.isfinite(m.a.grad).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_matches_cpu(variant):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 6, 6)
    g = torch.randn_like(x)
    results = []
    for device in ("cpu", "cuda"):
        m = FluidReLU(3, init=0.2, grad_scale=10.0, variant=variant).to(device)
        xi = x.to(device).requires_grad_()
        y = m(xi)
        y.backward(g.to(device))
        results.append((y.detach().cpu(), xi.grad.cpu(), m.a.grad.cpu()))
    for c, d in zip(*results):
        assert torch.allclose(c, d, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- higher order, torch.func


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_parameters", [1, 3])
def test_gradgradcheck_input_and_a(variant, num_parameters):
    torch.manual_seed(4)
    x = (2 * torch.randn(3, 3, 4, dtype=torch.float64)).requires_grad_()
    a = (0.5 * torch.randn(num_parameters, dtype=torch.float64)).requires_grad_()
    m = FluidReLU(num_parameters, variant=variant).double()
    assert torch.autograd.gradgradcheck(lambda x, a: _apply(m, x, a), (x, a), eps=1e-6, atol=1e-6)


def _penalised_weight_gradient(variant, grad_scale, weight, bias, a, x, r):
    """dP/d(weight, bias, a) for P = ||dL/dx||^2, L = sum(r * FluidReLU(conv(x)))."""
    m = FluidReLU(a.numel(), grad_scale=grad_scale, variant=variant).double()
    xi = x.clone().requires_grad_()

    def penalty(weight, bias, a):
        out = _apply(m, torch.nn.functional.conv2d(xi, weight, bias), a)
        (gx,) = torch.autograd.grad((r * out).sum(), xi, create_graph=True)
        return gx.square().sum()

    return penalty, torch.autograd.grad(penalty(weight, bias, a), (weight, bias, a))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_penalty_through_conv_matches_finite_differences(variant):
    """The issue's case: ||dL/dx||^2 through conv -> FluidReLU, its gradient w.r.t. the conv
    weights (and a) against central finite differences of the penalty itself."""
    torch.manual_seed(5)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    weight = (0.7 * torch.randn(3, 2, 3, 3, dtype=torch.float64)).requires_grad_()
    bias = (0.3 * torch.randn(3, dtype=torch.float64)).requires_grad_()
    a = torch.tensor([-0.5, 0.2, 1.0], dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    penalty, grads = _penalised_weight_gradient(variant, 1.0, weight, bias, a, x, r)
    eps = 1e-6
    for param, grad in zip((weight, bias, a), grads):
        numeric = torch.empty_like(param)
        flat = param.detach().view(-1)
        for i in range(flat.numel()):
            args = [weight.detach(), bias.detach(), a.detach()]
            idx = [p is param for p in (weight, bias, a)].index(True)
            plus, minus = args[idx].clone(), args[idx].clone()
            plus.view(-1)[i] += eps
            minus.view(-1)[i] -= eps
            args[idx] = plus
            f_plus = float(penalty(*args))
            args[idx] = minus
            f_minus = float(penalty(*args))
            numeric.view(-1)[i] = (f_plus - f_minus) / (2 * eps)
        assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-6), (grad - numeric).abs().max()
    # beta multiplies only the gradient that reaches a, also for the penalty
    _, scaled = _penalised_weight_gradient(variant, 100.0, weight, bias, a, x, r)
    assert torch.allclose(scaled[0], grads[0], rtol=1e-12, atol=0)
    assert torch.allclose(scaled[1], grads[1], rtol=1e-12, atol=0)
    assert torch.allclose(scaled[2], 100.0 * grads[2], rtol=1e-12, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_scale_at_second_order_is_the_derivative_in_a_over_beta(variant):
    """With grad_scale = beta, every derivative is that of f(v, beta * b) in b at b = a / beta:
    the (v, a) Hessian block gets one factor beta, the (a, a) block beta squared. Checked
    for torch.func (jacrev of jacrev) and for eager double backward (Hessian-vector product)."""
    torch.manual_seed(6)
    beta = 7.0
    x = 2 * torch.randn(3, 3, 4, dtype=torch.float64)
    a = 0.5 * torch.randn(3, dtype=torch.float64)
    scaled = FluidReLU(3, grad_scale=beta, variant=variant).double()
    plain = FluidReLU(3, variant=variant).double()

    def loss(m):
        return lambda x, a: _apply(m, x, a).pow(3).sum()

    def reference(x, b):
        return loss(plain)(x, beta * b)

    hess = torch.func.jacrev(torch.func.jacrev(loss(scaled), argnums=(0, 1)), argnums=(0, 1))(x, a)
    ref = torch.func.jacrev(torch.func.jacrev(reference, argnums=(0, 1)), argnums=(0, 1))(x, a / beta)
    for i in range(2):
        for j in range(2):
            assert torch.allclose(hess[i][j], ref[i][j], rtol=1e-10, atol=1e-12)
    unscaled_aa = torch.func.jacrev(torch.func.jacrev(loss(plain), argnums=1), argnums=1)(x, a)
    assert torch.allclose(hess[1][1], beta**2 * unscaled_aa, rtol=1e-10, atol=1e-12)

    xe, ae = x.clone().requires_grad_(), a.clone().requires_grad_()
    gx, ga = torch.autograd.grad(loss(scaled)(xe, ae), (xe, ae), create_graph=True)
    wx, wa = torch.randn_like(gx), torch.randn_like(ga)
    hx, ha = torch.autograd.grad((gx * wx).sum() + (ga * wa).sum(), (xe, ae))
    n = x.numel()
    ref_hx = ref[0][0].reshape(n, n) @ wx.flatten() + ref[0][1].reshape(n, 3) @ wa
    ref_ha = ref[1][0].reshape(3, n) @ wx.flatten() + ref[1][1] @ wa
    assert torch.allclose(hx.flatten(), ref_hx, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ha, ref_ha, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_parameters", [1, 3])
def test_torch_func_equals_eager(variant, num_parameters):
    torch.manual_seed(7)
    m = FluidReLU(num_parameters, grad_scale=10.0, variant=variant).double()
    x = 2 * torch.randn(4, 3, 5, dtype=torch.float64)
    a = 0.5 * torch.randn(num_parameters, dtype=torch.float64)

    def f(x, a):
        return _apply(m, x, a)

    xe, ae = x.clone().requires_grad_(), a.clone().requires_grad_()
    y = f(xe, ae)
    # vmap over the batch dimension (each sample a batch of one)
    per_sample = torch.func.vmap(lambda xi: f(xi.unsqueeze(0), a).squeeze(0))(x)
    assert torch.allclose(per_sample, y.detach(), rtol=1e-14, atol=0)
    # grad
    gx, ga = torch.autograd.grad(y.square().sum(), (xe, ae), retain_graph=True)
    fx, fa = torch.func.grad(lambda x, a: f(x, a).square().sum(), argnums=(0, 1))(x, a)
    assert torch.allclose(fx, gx, rtol=1e-12, atol=0) and torch.allclose(fa, ga, rtol=1e-12, atol=0)
    # jacrev against the eager Jacobian (row by row)
    jx, ja = torch.func.jacrev(f, argnums=(0, 1))(x, a)
    rows = [torch.autograd.grad(y.flatten()[i], (xe, ae), retain_graph=True) for i in range(y.numel())]
    assert torch.allclose(jx.reshape(y.numel(), -1), torch.stack([r[0].flatten() for r in rows]), rtol=1e-12, atol=0)
    assert torch.allclose(ja.reshape(y.numel(), -1), torch.stack([r[1] for r in rows]), rtol=1e-12, atol=0)
    # per-sample gradients of a: vmap(grad)
    ps = torch.func.vmap(torch.func.grad(lambda xi, a: f(xi.unsqueeze(0), a).square().sum(), argnums=1),
                         in_dims=(0, None))(x, a)
    for i in range(x.shape[0]):
        (ref,) = torch.autograd.grad(f(x[i : i + 1], ae).square().sum(), ae)
        assert torch.allclose(ps[i], ref, rtol=1e-12, atol=0)
    # vmap over a (several parameter settings at once)
    a_batch = torch.stack([a, a + 1.0, a - 2.0])
    outs = torch.func.vmap(f, in_dims=(None, 0))(x, a_batch)
    for i in range(3):
        assert torch.allclose(outs[i], f(x, a_batch[i]), rtol=1e-14, atol=0)


# torch.func.jvp imports its decompositions through torch.jit.script, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_is_a_clear_error():
    m = FluidReLU()
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jvp(m, (torch.randn(3),), (torch.ones(3),))


@pytest.mark.parametrize("variant", VARIANTS)
def test_extreme_values_second_order_and_torch_func(variant):
    """Huge |v|, tiny |v|, very negative and very positive a: values, first and second
    derivatives (double backward and torch.func) stay finite, and float32 agrees with
    float64 wherever the float64 value fits in float32."""
    vs = [-3e37, -1e19, -1e10, -1.0, -1e-30, 0.0, 1e-30, 1.0, 3e37]
    for a0 in (-1e30, -1e4, -80.0, -1.0, 0.0, 1.0, 40.0, 80.0, 1e4, 1e30):
        results = []
        for dtype in (torch.float32, torch.float64):
            m = FluidReLU(1, init=a0, grad_scale=1e4, variant=variant).to(dtype)
            x = torch.tensor(vs, dtype=dtype, requires_grad=True)
            y = m(x)
            gx, ga = torch.autograd.grad(y, (x, m.a), torch.full_like(y, 3.0), create_graph=True)
            hx, ha = torch.autograd.grad(gx.square().sum() + ga.square().sum(), (x, m.a))
            fx, fa = torch.func.grad(lambda x, a: _apply(m, x, a).sum(), argnums=(0, 1))(x.detach(), m.a.detach())
            for name, t in (("y", y), ("gx", gx), ("ga", ga), ("hx", hx), ("ha", ha), ("fx", fx), ("fa", fa)):
                assert bool(torch.isfinite(t).all()), (a0, dtype, name, t)
            assert torch.allclose(3.0 * fx, gx.detach(), rtol=1e-6, atol=0)
            assert torch.allclose(3.0 * fa, ga.detach(), rtol=1e-6, atol=0)
            results.append([t.detach().double() for t in (y, gx, ga, hx, ha)])
        for single, double in zip(*results):
            fits = double.abs() < torch.finfo(torch.float32).max
            assert torch.allclose(single[fits], double[fits], rtol=1e-4, atol=1e-30), (a0, single, double)
