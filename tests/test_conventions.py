"""Module conventions, in the spirit of PyTorch's own module tests.

Every activation of the registry (:data:`kaf.nn.ACTIVATIONS`), :class:`KernelActivation`
(each kernel) and :class:`KernelOutput` is put through the same checks: dtypes,
``copy.deepcopy``, ``pickle``, a ``state_dict`` saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, ``torch.compile`` against eager, ``gradcheck`` and
``gradgradcheck`` in float64 (inputs and parameters), and ``torch.func.vmap`` against eager.

Every check holds for every case; none is expected to fail. (The Gaussian kernel
estimator's hand-written first-order backward has a differentiable counterpart for
``create_graph=True`` and ``torch.func``, so it is checked like the rest.)
"""

from __future__ import annotations

import copy
import io
import pickle
from dataclasses import dataclass
from typing import Callable, Tuple

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

from kaf.estimators import KERNELS
from kaf.nn import ACTIVATIONS, FluidReLU, KernelActivation, KernelOutput, Swish, make_activation

CHANNELS = 3
# torch.compile / torch.func import parts of torch that still use torch.jit.script internally
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")


@dataclass
class Case:
    """A module under test and how to feed it.

    ``inputs(dtype)`` returns the forward arguments; the first ``n_diff`` are
    floating-point and differentiated by gradcheck. ``vmap_dims`` gives, per argument,
    the dimension ``vmap`` maps over (``None``: shared by every sample).
    """

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.dtype], Tuple[torch.Tensor, ...]]
    n_diff: int
    vmap_dims: Tuple


def _perturbed(module: nn.Module) -> nn.Module:
    """Move every parameter off its default, so the shape parameters matter in the checks."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.linspace(-0.3, 0.4, p.numel()).view_as(p))
    return module


def _activation_inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(2, CHANNELS, 4, generator=g, dtype=torch.float64)
    x = x + 0.2 * torch.sign(x)  # away from the kinks at 0 (relu, prelu, selu, ...)
    return (x.to(dtype),)


def _activation_case(name: str) -> Case:
    return Case(
        name=name,
        build=lambda: _perturbed(make_activation(name, num_parameters=CHANNELS)),
        inputs=_activation_inputs,
        n_diff=1,
        vmap_dims=(0,),
    )


def _nw_inputs(dtype):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2, generator=g, dtype=torch.float64)
    z_ref = torch.randn(8, 2, generator=g, dtype=torch.float64)
    y_ref = torch.rand(8, 2, generator=g, dtype=torch.float64)
    return z.to(dtype), z_ref.to(dtype), y_ref.to(dtype)


def _kernel_activation_case(kernel: str) -> Case:
    # wide enough that every compact window holds reference points
    return Case(
        name=f"KernelActivation[{kernel}]",
        build=lambda: KernelActivation(bandwidth=[0.8, 2.5] if kernel == "gaussian" else [2.5, 3.0], kernel=kernel),
        inputs=_nw_inputs,
        n_diff=3,
        vmap_dims=(0, None, None),
    )


def _kernel_output(kernel: str) -> KernelOutput:
    g = torch.Generator().manual_seed(2)
    body = nn.Linear(4, 2)
    with torch.no_grad():
        body.weight.copy_(0.5 * torch.randn(2, 4, generator=g))
        body.bias.copy_(0.1 * torch.randn(2, generator=g))
    calc_x = torch.randn(10, 4, generator=g)
    calc_y = torch.tensor([0, 1] * 5)
    return KernelOutput(body, calc_x, calc_y, bandwidth=1.5 if kernel == "gaussian" else 4.0, kernel=kernel,
                        calc_ids=torch.arange(3, 13), n_classes=2)


def _kernel_output_inputs(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    ids = torch.arange(6)  # rows 3..5 are calc points: they leave themselves out
    return x.to(dtype), ids


def _kernel_output_case(kernel: str) -> Case:
    return Case(
        name=f"KernelOutput[{kernel}]",
        build=lambda: _kernel_output(kernel),
        inputs=_kernel_output_inputs,
        n_diff=1,
        vmap_dims=(0, 0),
    )


CASES = (
    [_activation_case(name) for name in sorted(ACTIVATIONS)]
    + [_kernel_activation_case(k) for k in KERNELS]
    + [_kernel_output_case(k) for k in ("gaussian", "epanechnikov")]
)


def _cases():
    """pytest params over CASES, named by case."""
    return [pytest.param(c, id=c.name) for c in CASES]


def _outputs_and_grads(module: nn.Module, args):
    """Forward, then backward of a fixed random projection: (output, input grads, parameter grads)."""
    args = [a.detach().clone().requires_grad_() if a.is_floating_point() else a for a in args]
    module.zero_grad(set_to_none=True)
    out = module(*args)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    input_grads = [a.grad for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    param_grads = [p.grad for p in module.parameters()]
    return out.detach(), input_grads, param_grads


def _assert_same(first, second, rtol=1e-6, atol=1e-7):
    out1, in1, par1 = first
    out2, in2, par2 = second
    torch.testing.assert_close(out1, out2, rtol=rtol, atol=atol)
    for a, b in zip(in1 + par1, in2 + par2):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", _cases())
def test_dtype(case, dtype):
    """Output and gradients in the module's dtype, close to the float64 computation."""
    reference = _outputs_and_grads(case.build().double(), case.inputs(torch.float64))
    module = case.build().to(dtype)
    out, in_grads, par_grads = _outputs_and_grads(module, case.inputs(dtype))
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in in_grads + par_grads if g is not None)
    tol = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (5e-2, 5e-2)}[dtype]
    ref_out, ref_in, ref_par = reference
    torch.testing.assert_close(out.double(), ref_out, rtol=tol[0], atol=tol[1])
    for g, r in zip(in_grads + par_grads, ref_in + ref_par):
        assert (g is None) == (r is None)
        if g is not None:
            scale = float(r.abs().max()) + 1.0  # gradients: tolerance relative to their size
            torch.testing.assert_close(g.double(), r, rtol=tol[0], atol=tol[1] * scale * 10)


# --------------------------------------------------------------------------- copies and serialisation


@pytest.mark.parametrize("case", _cases())
def test_deepcopy_is_equal_and_independent(case):
    module = case.build()
    clone = copy.deepcopy(module)
    args = case.inputs(torch.float32)
    _assert_same(_outputs_and_grads(module, args), _outputs_and_grads(clone, args), rtol=0, atol=0)
    for p, q in zip(module.parameters(), clone.parameters()):
        assert p is not q and p.data_ptr() != q.data_ptr()
    with torch.no_grad():
        for q in clone.parameters():
            q.add_(1.0)
    if any(True for _ in clone.parameters()):
        with torch.no_grad():
            assert not torch.equal(module(*args), clone(*args))


@pytest.mark.parametrize("case", _cases())
def test_pickle_round_trip(case):
    module = case.build()
    restored = pickle.loads(pickle.dumps(module))
    assert type(restored) is type(module) and repr(restored) == repr(module)
    args = case.inputs(torch.float32)
    _assert_same(_outputs_and_grads(module, args), _outputs_and_grads(restored, args), rtol=0, atol=0)


@pytest.mark.parametrize("case", _cases())
def test_state_dict_round_trip_with_weights_only_load(case):
    module = case.build()
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = case.build()
    with torch.no_grad():  # make sure the load is what makes them equal
        for p in fresh.parameters():
            p.mul_(-2.0).add_(0.5)
    fresh.load_state_dict(state)
    assert set(state) == set(module.state_dict())
    args = case.inputs(torch.float32)
    _assert_same(_outputs_and_grads(module, args), _outputs_and_grads(fresh, args), rtol=0, atol=0)


# --------------------------------------------------------------------------- torch.compile, torch.export


@pytest.mark.parametrize("case", _cases())
def test_compile_matches_eager(case):
    """torch.compile through AOT autograd (forward and backward graphs) equals eager.

    ``aot_eager`` traces exactly what inductor receives but skips code generation, which
    keeps this module fast on two cores; FluidReLU also goes through inductor below.
    """
    torch._dynamo.reset()
    module = case.build()
    args = case.inputs(torch.float32)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter)
    _assert_same(_outputs_and_grads(module, args), _outputs_and_grads(compiled, args))
    # something was compiled, not a silent eager fallback (Identity has no operation to compile)
    assert counter.frame_count >= 1 or isinstance(module, nn.Identity)


@pytest.mark.parametrize("variant", ["exp", "sigmoid"])
def test_fluid_relu_compiles_with_inductor_in_one_graph(variant, tmp_path):
    torch._dynamo.reset()
    module = _perturbed(make_activation("fluid_relu" if variant == "exp" else "fluid_relu_sigmoid",
                                       num_parameters=CHANNELS, grad_scale=100.0))
    args = _activation_inputs(torch.float32)
    # A private code cache: inductor's on-disk cache does not key on ATEN_CPU_CAPABILITY, and
    # kernels cached by a run under another capability fail to build (at::vec undeclared).
    with temporary_cache_dir(str(tmp_path)):
        compiled = torch.compile(module, fullgraph=True)  # default backend: inductor
        _assert_same(_outputs_and_grads(module, args), _outputs_and_grads(compiled, args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fluid_relu", "fluid_relu_sigmoid"])
def test_fluid_relu_exports(name):
    module = _perturbed(make_activation(name, num_parameters=CHANNELS))
    (x,) = _activation_inputs(torch.float32)
    program = torch.export.export(module, (x,))
    other = 3 * torch.randn(*x.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for inp in (x, other):
            torch.testing.assert_close(program.module()(inp), module(inp), rtol=0, atol=0)
    assert torch.equal(program.state_dict["a"], module.a.detach())


# --------------------------------------------------------------------------- gradcheck


def _functional(case: Case, module: nn.Module, args):
    """(f, diff_args): f(*diff_inputs, *params) runs the module with those parameters."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    diff = [a.detach().clone().requires_grad_() for a in args[: case.n_diff]]
    rest = list(args[case.n_diff :])

    def f(*flat):
        inputs, ps = flat[: case.n_diff], flat[case.n_diff :]
        return torch.func.functional_call(module, dict(zip(names, ps)), tuple(inputs) + tuple(rest))

    return f, tuple(diff + params)


@pytest.mark.parametrize("case", _cases())
def test_gradcheck_inputs_and_parameters(case):
    module = case.build().double()
    f, args = _functional(case, module, case.inputs(torch.float64))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("case", _cases())
def test_gradgradcheck_inputs_and_parameters(case):
    module = case.build().double()
    f, args = _functional(case, module, case.inputs(torch.float64))
    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("case", _cases())
def test_vmap_matches_eager(case):
    module = case.build().double()
    args = case.inputs(torch.float64)
    dims = case.vmap_dims

    def one(*sample):
        batched = [s.unsqueeze(0) if d is not None else s for s, d in zip(sample, dims)]
        return module(*batched).squeeze(0)

    with torch.no_grad():
        expected = module(*args)
    got = torch.func.vmap(one, in_dims=dims)(*args)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", _cases())
def test_per_sample_gradients_match_eager(case):
    """vmap(grad): each sample's gradient (first input and parameters) against a loop in eager mode."""
    module = case.build().double()
    args = case.inputs(torch.float64)
    dims = case.vmap_dims
    params = {n: p.detach() for n, p in module.named_parameters()}

    def batch_of_one(x0, rest):
        return (x0,) + tuple(r.unsqueeze(0) if d is not None else r for r, d in zip(rest, dims[1:]))

    def sample_loss(ps, x0, *rest):
        return torch.func.functional_call(module, ps, batch_of_one(x0.unsqueeze(0), rest)).square().sum()

    got_params, got_x = torch.func.vmap(torch.func.grad(sample_loss, argnums=(0, 1)), in_dims=(None,) + dims)(
        params, *args
    )
    for i in range(args[0].shape[0]):
        x0 = args[0][i : i + 1].clone().requires_grad_()
        rest = [r[i] if d is not None else r for r, d in zip(args[1:], dims[1:])]
        ps = {k: v.clone().requires_grad_() for k, v in params.items()}
        loss = torch.func.functional_call(module, ps, batch_of_one(x0, rest)).square().sum()
        ref = torch.autograd.grad(loss, [x0] + list(ps.values()))
        torch.testing.assert_close(got_x[i], ref[0][0], rtol=1e-10, atol=1e-12)
        for k, r in zip(ps, ref[1:]):
            torch.testing.assert_close(got_params[k][i], r, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- factory keyword arguments


def _kaf_module_builders():
    """Every module class of kaf.nn that creates a parameter or buffer, built with factory kwargs."""
    calc_x, calc_y = torch.randn(6, 4), torch.tensor([0, 1] * 3)
    return {
        "FluidReLU": lambda **kw: FluidReLU(3, init=0.5, **kw),
        "Swish": lambda **kw: Swish(beta=0.5, learnable=True, **kw),
        "Swish[fixed]": lambda **kw: Swish(beta=0.5, **kw),
        "KernelActivation": lambda **kw: KernelActivation(bandwidth=[0.5, 2.0], **kw),
        "KernelActivation[fixed]": lambda **kw: KernelActivation(learn_bandwidth=False, **kw),
        "KernelOutput": lambda **kw: KernelOutput(nn.Linear(4, 2, bias=False, **kw), calc_x, calc_y, **kw),
    }


@pytest.mark.parametrize("name", list(_kaf_module_builders()))
def test_factory_kwargs_place_every_tensor(name):
    """Like torch.nn's modules: device= and dtype= decide where and in what dtype each tensor the
    module creates lives (the meta device: nothing is computed or allocated), and the values
    are those of a default build converted afterwards."""
    build = _kaf_module_builders()[name]
    default = build()
    on_meta = build(device="meta", dtype=torch.float64)
    in_double = build(dtype=torch.float64)
    tensors = {key: t for key, t in [*default.named_parameters(), *default.named_buffers()]
               if not key.startswith("body.")}  # KernelOutput's body is built by the caller
    assert tensors, "the module creates no tensor"
    for key, ref in tensors.items():
        meta = on_meta.get_parameter(key) if key in dict(on_meta.named_parameters()) else on_meta.get_buffer(key)
        double = in_double.get_parameter(key) if key in dict(in_double.named_parameters()) else in_double.get_buffer(key)
        assert meta.device.type == "meta" and double.device.type == "cpu"
        if ref.is_floating_point():
            assert meta.dtype == double.dtype == torch.float64
            torch.testing.assert_close(double.float(), ref, rtol=1e-6, atol=0)
        else:
            assert torch.equal(double, ref)
