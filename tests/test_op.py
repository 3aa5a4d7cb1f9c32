"""The fused estimator as torch operators (kaf::nw_forward, kaf::nw_backward in kaf._fused).

torch.compile and torch.export must keep the kernel in the graph, with its data-dependent
checks still made at run time; torch.library.opcheck checks the schema, the fake (shapes,
dtypes and strides of every output), the autograd registration and AOT dispatch. Values and
gradients are held against eager calls and against the plain float64 formula (autograd
through a masked softmax, tests/test_fused.py), second derivatives against gradgradcheck's
finite differences. One small torch.compile (module scope) keeps this quick on two cores.
"""

import math
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import require_fused
from kaf import _fused
from kaf.estimators import nadaraya_watson

from test_fused import calls, plain_float64  # noqa: F401  (calls is a fixture)


@pytest.fixture(autouse=True)
def _fused_only(monkeypatch):
    require_fused()
    monkeypatch.setenv("KAF_NW_BACKEND", "cpp")


def layout(n=6, m=7, k=2, same=False, ids=True, dtype=torch.float64, offset=0.0, seed=0):
    """Operator inputs in (k, n) layout: a, b, y, h, query_ids, ref_ids; with ``offset``, every
    other point in a second cluster that far away."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, n, generator=g, dtype=dtype) + offset * (torch.arange(n) % 2)
    b = a if same else torch.randn(k, m, generator=g, dtype=dtype) + offset * (torch.arange(m) % 2)
    y = torch.rand(k, b.shape[1], generator=g, dtype=dtype)
    h = torch.linspace(0.4, 0.9, k, dtype=dtype)
    qid = rid = None
    if ids:
        qid = torch.arange(n)
        rid = qid if same else torch.arange(m) + 2  # queries 2.. are reference points too
    return a, b, y, h, qid, rid


# Each case: (n, m, k, same, ids, dtype, offset). Two clusters 2e5 apart put the scaled index
# range past the kernel's float32 overflow guard (2^16), so the operator's overflow-safe
# branch (safe = True) runs; within a cluster the weights still spread over several points.
OP_CASES = {
    "calc-set-ids": (6, 7, 2, False, True, torch.float64, 0.0),
    "batch-is-reference": (6, 6, 2, True, True, torch.float64, 0.0),
    "no-ids-float32": (5, 4, 3, False, False, torch.float32, 0.0),
    "overflow-safe-branch": (8, 9, 1, False, True, torch.float32, 2e5),
}


@pytest.mark.parametrize("case", OP_CASES)
@pytest.mark.parametrize("need_ab", [True, False])
def test_opcheck_forward(case, need_ab):
    n, m, k, same, ids, dtype, offset = OP_CASES[case]
    a, b, y, h, qid, rid = layout(n, m, k, same, ids, dtype, offset)
    leaves = [t.clone().requires_grad_(need_ab) for t in (a, h)] + [y.clone().requires_grad_()]
    a_, h_, y_ = leaves
    b_ = a_ if same else b.clone().requires_grad_(need_ab)
    torch.library.opcheck(torch.ops.kaf.nw_forward.default, (a_, b_, y_, h_, qid, rid, same, need_ab))


@pytest.mark.parametrize("case", OP_CASES)
@pytest.mark.parametrize("needs", [[True, True, True, True], [False, True, False, True], [False, False, True, False]])
def test_opcheck_backward(case, needs):
    n, m, k, same, ids, dtype, offset = OP_CASES[case]
    a, b, y, h, qid, rid = layout(n, m, k, same, ids, dtype, offset)
    saved = torch.ops.kaf.nw_forward(a, b, y, h, qid, rid, same, True)
    assert bool(saved[5]) == (case == "overflow-safe-branch")
    grad = torch.randn(k, n, dtype=dtype)
    torch.library.opcheck(torch.ops.kaf.nw_backward.default, (a, b, y, h, qid, rid, *saved, grad, needs))


@pytest.mark.parametrize("need_ab", [True, False])
@pytest.mark.parametrize("ids", [True, False])
def test_fake_gives_every_output_its_real_shape_dtype_and_strides(need_ab, ids):
    a, b, y, h, qid, rid = layout(n=5, m=3, k=4, ids=ids, dtype=torch.float32)
    real = torch.ops.kaf.nw_forward(a, b, y, h, qid, rid, False, need_ab)
    grad = torch.randn(4, 5)
    needs = [need_ab, False, True, need_ab]
    real_back = torch.ops.kaf.nw_backward(a, b, y, h, qid, rid, *real, grad, needs)
    with FakeTensorMode() as mode:
        fake_in = [None if t is None else mode.from_tensor(t) for t in (a, b, y, h, qid, rid)]
        fake = torch.ops.kaf.nw_forward(*fake_in, False, need_ab)
        fake_back = torch.ops.kaf.nw_backward(*fake_in, *fake, mode.from_tensor(grad), needs)
    assert len(fake) == len(real) == 6 and len(fake_back) == len(real_back) == 4
    for f, r in zip(fake + fake_back, real + real_back):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride())
    # the shapes themselves: out, oc, lnorm (k, n); dmean (2, k, n) or empty; ycen (k, m); safe ()
    assert [tuple(t.shape) for t in real] == [(4, 5)] * 3 + [(2, 4, 5) if need_ab else (0,), (4, 3), ()]
    assert real[5].dtype == torch.bool
    assert [tuple(t.shape) for t in real_back] == [(4, 5) if need_ab else (0,), (0,), (4, 3), (4,) if need_ab else (0,)]


@pytest.mark.parametrize("case", ["calc-set-ids", "batch-is-reference"])
def test_operator_gradients_pass_gradcheck_and_gradgradcheck(case):
    """First derivatives through kaf::nw_backward, second ones through the plain formula (create_graph)."""
    _, _, k, same, ids, dtype, offset = OP_CASES[case]
    a, b, y, h, qid, rid = layout(4, 4 if same else 5, k, same, ids, dtype, offset)
    inputs = [t.clone().requires_grad_() for t in ((a, y, h) if same else (a, b, y, h))]
    if same:
        fn = lambda a_, y_, h_: torch.ops.kaf.nw_forward(a_, a_, y_, h_, qid, rid, True, True)[0]
    else:
        fn = lambda a_, b_, y_, h_: torch.ops.kaf.nw_forward(a_, b_, y_, h_, qid, rid, False, True)[0]
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_operator_overflow_safe_branch_matches_the_plain_formula():
    a, b, y, h, qid, rid = layout(*OP_CASES["overflow-safe-branch"][:-1], offset=2e5)
    leaves = [t.clone().requires_grad_() for t in (a, b, y, h)]
    out, *_, safe = torch.ops.kaf.nw_forward(*leaves, qid, rid, False, True)
    assert bool(safe)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(up)
    # plain_float64 takes the (n, k) layout
    ref_out, ref_in = plain_float64(a.t(), b.t(), y.t(), h, qid, rid)
    ref_out.backward(up.t().double())
    torch.testing.assert_close(out.double(), ref_out.detach().t(), rtol=1e-6, atol=1e-6)
    for leaf, ref in zip(leaves, ref_in):
        expected = ref.grad.t() if ref.grad.dim() == 2 else ref.grad
        torch.testing.assert_close(leaf.grad.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_operator_double_backward_through_the_safe_branch_is_refused():
    a, b, y, h, qid, rid = layout(*OP_CASES["overflow-safe-branch"][:-1], offset=2e5)
    a.requires_grad_()
    out = torch.ops.kaf.nw_forward(a, b, y, h, qid, rid, False, True)[0]
    with pytest.raises(ValueError, match="double backward through nadaraya_watson is not supported"):
        torch.autograd.grad(out.sum(), a, create_graph=True)


def test_operator_raises_the_estimators_errors_at_run_time():
    a, b, y, h, qid, rid = layout(4, 5, 1, ids=True)
    with pytest.raises(ValueError, match="h must be finite and > 0"):
        torch.ops.kaf.nw_forward(a, b, y, -h, qid, rid, False, False)
    with pytest.raises(ValueError, match="z_ref contains non-finite"):
        torch.ops.kaf.nw_forward(a, b.index_fill(1, torch.tensor([2]), math.nan), y, h, qid, rid, False, False)
    with pytest.raises(ValueError, match="query 0 has no reference point left"):
        torch.ops.kaf.nw_forward(a, b, y, h, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long),
                                 False, False)


# --------------------------------------------------------------------------- torch.compile, torch.export

N, K = 24, 2  # one compiled graph for this module: every call below has these shapes


def _loss(z, y, h, ids):
    """A training step's estimator use: the batch as its own reference set, leave-one-out by ids."""
    out = nadaraya_watson(z, z, y, h, query_ids=ids, ref_ids=ids)
    return out, (out - y).square().mean()


@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    yield torch.compile(_loss, fullgraph=True)
    torch._dynamo.reset()


def _batch(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, K, generator=g, dtype=dtype), torch.rand(N, K, generator=g, dtype=dtype),
            torch.tensor(0.6, dtype=dtype), torch.arange(N))


def test_compile_fullgraph_matches_eager_in_values_and_gradients(compiled, calls):
    """The case of issue 21: it failed with 'Could not guard on data-dependent expression'."""
    z, y, h, ids = _batch(1)
    results = []
    for fn in (compiled, _loss):
        zz, yy, hh = (t.clone().requires_grad_() for t in (z, y, h))
        out, loss = fn(zz, yy, hh, ids)
        results.append((out.detach(), *torch.autograd.grad(loss, (zz, yy, hh))))
    assert calls == {"forward": 2, "backward": 2}  # the kernel ran in the compiled graph as well
    for got, eager in zip(*results):
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    # and both against the plain formula in float64 (an independent reference)
    ref_out, (rz, _, ry, rh) = plain_float64(z, None, y, h, ids, ids, same=True)
    ((ref_out - ry).square().mean()).backward()
    for got, ref in zip(results[0], (ref_out.detach(), rz.grad, ry.grad, rh.grad)):
        torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=1e-6)


def test_compiled_graph_still_checks_values_at_run_time(compiled):
    z, y, h, ids = _batch(2)
    z[3, 1] = math.nan
    with pytest.raises(ValueError, match="z contains non-finite"):
        compiled(z, y, h, ids)
    z, y, h, ids = _batch(2)
    with pytest.raises(ValueError, match="h must be finite and > 0"):
        compiled(z, y, -h, ids)
    with pytest.raises(ValueError, match="has no reference point left"):
        compiled(z[:, :1].expand(N, K).contiguous() * 0, y, h, torch.zeros(N, dtype=torch.long))


def test_compiled_far_apart_indices_take_the_overflow_safe_branch(compiled):
    z, y, h, ids = _batch(3)
    z = z + 2e5 * (torch.arange(N) % 2).unsqueeze(1)  # two clusters: past the kernel's float32 range
    out, _ = compiled(z, y, h, ids)
    torch.testing.assert_close(out, _loss(z, y, h, ids)[0])
    ref_out, _ = plain_float64(z, None, y, h, ids, ids, same=True)
    torch.testing.assert_close(out.double(), ref_out.detach(), rtol=1e-6, atol=1e-7)


def test_export_keeps_the_operator_in_the_graph():
    class Step(torch.nn.Module):
        def forward(self, z, y, h, ids):
            return _loss(z, y, h, ids)[0]

    z, y, h, ids = _batch(4)
    program = torch.export.export(Step(), (z, y, h, ids))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.kaf.nw_forward.default in targets
    torch.testing.assert_close(program.module()(z, y, h, ids), _loss(z, y, h, ids)[0])


# --------------------------------------------------------------------------- the routes eager calls keep


def test_eager_calls_keep_the_direct_kernel_call_and_double_backward_its_plain_formula(calls, monkeypatch):
    ops = []
    original = _fused.nw_forward
    monkeypatch.setattr(_fused, "nw_forward", lambda *args: ops.append(1) or original(*args))
    z, y, h, ids = _batch(5, torch.float64)
    zz = z.clone().requires_grad_()
    out, _ = _loss(zz, y, h, ids)
    (gz,) = torch.autograd.grad(out.sum(), zz, create_graph=True)
    gz.square().sum().backward()
    assert ops == [] and calls == {"forward": 1, "backward": 0}
    ref_out, (rz, *_) = plain_float64(z, None, y, h, ids, ids, same=True)
    (ref_gz,) = torch.autograd.grad(ref_out.sum(), rz, create_graph=True)
    ref_gz.square().sum().backward()
    torch.testing.assert_close(zz.grad, rz.grad, rtol=1e-10, atol=1e-12)


def test_torch_func_keeps_the_plain_formula(calls):
    from torch.func import grad

    z, y, h, ids = _batch(6, torch.float64)
    g = grad(lambda t: _loss(t, y, h, ids)[0].sum())(z)
    assert calls == {"forward": 0, "backward": 0}
    ref_out, (rz, *_) = plain_float64(z, None, y, h, ids, ids, same=True)
    ref_out.sum().backward()
    torch.testing.assert_close(g, rz.grad, rtol=1e-10, atol=1e-12)


def test_the_constant_mark_is_the_one_assume_constant_result_sets():
    """kaf marks its trace-time decision constant by hand (importing the decorator imports
    torch._dynamo); the decorator must still set that flag and nothing else."""
    from kaf import estimators

    def probe():
        return True

    torch.compiler.assume_constant_result(probe)
    assert probe.__dict__ == {"_dynamo_marked_constant": True}
    assert estimators._fused_applies.__dict__ == probe.__dict__


def test_import_kaf_does_not_import_dynamo():
    done = subprocess.run([sys.executable, "-c", "import sys, kaf; print('torch._dynamo' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
