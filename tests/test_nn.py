"""Registry, param_groups, KernelActivation, KernelOutput and select_calc."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kaf.estimators import nadaraya_watson
from kaf.nn import (
    ACTIVATIONS,
    FluidReLU,
    KernelActivation,
    KernelOutput,
    Swish,
    make_activation,
    param_groups,
    select_calc,
)

EXPECTED_NAMES = {
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "swish",
    "swish_learnable",
    "mish",
    "prelu",
    "fluid_relu",
    "fluid_relu_sigmoid",
    "identity",
}


# --------------------------------------------------------------------------- registry


def test_registry_names():
    assert set(ACTIVATIONS) == EXPECTED_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_activation_builds_and_is_finite(name):
    torch.manual_seed(0)
    act = make_activation(name, num_parameters=3)
    x = 4 * torch.randn(5, 3, 7)
    y = act(x)
    assert y.shape == x.shape
    assert bool(torch.isfinite(y).all())


def test_closed_forms():
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(make_activation("swish").double()(x), x / (1 + torch.exp(-x)), atol=1e-12)
        softplus = torch.log1p(torch.exp(x))
        assert torch.allclose(make_activation("mish").double()(x), x * torch.tanh(softplus), atol=1e-12)
        s2 = Swish(beta=2.5).double()(x)
        assert torch.allclose(s2, x / (1 + torch.exp(-2.5 * x)), atol=1e-12)
        assert torch.equal(make_activation("identity")(x), x)
        assert torch.allclose(make_activation("leaky_relu", negative_slope=0.2).double()(x), torch.where(x > 0, x, 0.2 * x))


def test_channel_aware_activations_take_num_parameters():
    prelu = make_activation("prelu", num_parameters=8)
    assert prelu.weight.shape == (8,)
    fr = make_activation("fluid_relu", num_parameters=8, grad_scale=1e4)
    assert fr.a.shape == (8,) and fr.grad_scale == 1e4 and fr.variant == "exp"
    assert make_activation("fluid_relu_sigmoid").variant == "sigmoid"


def test_swish_learnable_learns_beta():
    act = make_activation("swish_learnable")
    assert isinstance(act.beta, nn.Parameter)
    act(torch.randn(10)).pow(2).sum().backward()
    assert act.beta.grad is not None and float(act.beta.grad) != 0.0
    assert not isinstance(make_activation("swish").beta, nn.Parameter)


def test_registry_errors():
    with pytest.raises(ValueError, match="sigmoid.*tanh|must be one of"):
        make_activation("softmaxx")
    with pytest.raises(ValueError, match="unexpected keyword"):
        make_activation("tanh", slope=2)
    with pytest.raises(ValueError, match="beta"):
        Swish(beta=float("inf"))


# --------------------------------------------------------------------------- param_groups


def test_param_groups_by_module_type():
    calc_x, calc_y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    body = nn.Sequential(
        nn.Linear(4, 8), FluidReLU(8), nn.Linear(8, 8), nn.PReLU(), nn.Linear(8, 8), Swish(learnable=True), nn.Linear(8, 3)
    )
    model = KernelOutput(body, calc_x, calc_y, n_classes=3)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    expected_no_decay = {id(body[1].a), id(body[3].weight), id(body[5].beta), id(model.activation.log_bandwidth)}
    assert {id(p) for p in no_decay["params"]} == expected_no_decay
    linear_ids = {id(p) for i in (0, 2, 4, 6) for p in body[i].parameters()}
    assert {id(p) for p in decay["params"]} == linear_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()


def test_param_groups_fixed_bandwidth_is_not_a_parameter():
    model = KernelOutput(nn.Linear(4, 2), torch.randn(6, 4), torch.randn(6, 2), learn_bandwidth=False)
    decay, no_decay = param_groups(model, 0.1)
    assert no_decay["params"] == []
    assert len(decay["params"]) == 2
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -1.0)


# --------------------------------------------------------------------------- KernelActivation


def test_kernel_activation_calls_the_estimator():
    torch.manual_seed(0)
    z, z_ref, y_ref = torch.randn(7, 2), torch.randn(9, 2), torch.rand(9, 2)
    act = KernelActivation(bandwidth=0.7)
    assert isinstance(act.log_bandwidth, nn.Parameter)
    assert act.bandwidth.item() == pytest.approx(0.7)
    ids_q, ids_r = torch.arange(7), torch.arange(9)
    out = act(z, z_ref, y_ref, query_ids=ids_q, ref_ids=ids_r)
    assert torch.allclose(out, nadaraya_watson(z, z_ref, y_ref, 0.7, query_ids=ids_q, ref_ids=ids_r))
    out.sum().backward()
    assert act.log_bandwidth.grad is not None and float(act.log_bandwidth.grad) != 0.0


def test_kernel_activation_per_unit_bandwidth_and_buffer():
    act = KernelActivation(bandwidth=[0.5, 2.0], kernel="epanechnikov", learn_bandwidth=False)
    assert "log_bandwidth" in dict(act.named_buffers())
    assert act.bandwidth.tolist() == pytest.approx([0.5, 2.0])
    assert "epanechnikov" in repr(act)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), [1.0, -2.0], "wide"])
def test_kernel_activation_rejects_bad_bandwidth(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        KernelActivation(bandwidth=bad)


def test_kernel_activation_rejects_bad_kernel():
    with pytest.raises(ValueError, match="kernel"):
        KernelActivation(kernel="cosine")


# --------------------------------------------------------------------------- KernelOutput


def _small_model(seed=0, m=12, k=3):
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k, bias=False))
    calc_x = torch.randn(m, 4)
    calc_y = torch.randint(0, k, (m,))
    return KernelOutput(body, calc_x, calc_y, n_classes=k, bandwidth=0.8)


def test_integer_labels_are_one_hot():
    model = _small_model()
    assert model.n_classes == 3
    assert model.calc_y.shape == (12, 3) and model.calc_y.dtype == torch.float32
    assert torch.equal(model.calc_y.sum(1), torch.ones(12))
    assert model.calc_ids.dtype == torch.long and torch.equal(model.calc_ids, torch.arange(12))
    reg = KernelOutput(nn.Linear(4, 1), torch.randn(5, 4), torch.randn(5))
    assert reg.calc_y.shape == (5, 1) and reg.n_classes == 0


def test_buffers_in_state_dict_and_round_trip():
    model = _small_model(seed=1)
    sd = model.state_dict()
    for name in ("calc_x", "calc_y", "calc_ids", "activation.log_bandwidth"):
        assert name in sd
    other = _small_model(seed=2, m=20)  # different weights and calc size
    other.load_state_dict(sd)
    x = torch.randn(5, 4)
    assert torch.equal(other(x), model(x))
    assert other.calc_size == 12
    assert torch.equal(other.calc_ids, model.calc_ids)


def test_to_float64():
    model = _small_model().to(torch.float64)
    assert model.calc_x.dtype == torch.float64 and model.calc_y.dtype == torch.float64
    assert model.calc_ids.dtype == torch.long
    out = model(torch.randn(4, 4, dtype=torch.float64), ids=torch.tensor([0, 1, 100, 101]))
    assert out.dtype == torch.float64 and bool(torch.isfinite(out).all())


def test_gradients_flow_through_query_and_calc_sides():
    """Detaching the calc side changes the body's gradient: both sides contribute."""
    model = _small_model(seed=3)
    x, target = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def body_grads(detach_calc: bool):
        model.zero_grad()
        z = model.index(x)
        z_ref = model.index(model.calc_x)
        if detach_calc:
            z_ref = z_ref.detach()
        out = model.activation(z, z_ref, model.calc_y)
        F.nll_loss(out.clamp_min(1e-6).log(), target).backward()
        return torch.cat([p.grad.flatten() for p in model.body.parameters()])

    full = body_grads(False)
    query_only = body_grads(True)
    model.zero_grad()
    z_ref = model.index(model.calc_x)
    out = model.activation(model.index(x).detach(), z_ref, model.calc_y)
    F.nll_loss(out.clamp_min(1e-6).log(), target).backward()
    calc_only = torch.cat([p.grad.flatten() for p in model.body.parameters()])

    assert calc_only.abs().sum() > 0 and query_only.abs().sum() > 0
    assert torch.allclose(full, query_only + calc_only, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(full, query_only, rtol=1e-3, atol=1e-6)
    # and the module's own forward is the full version
    model.zero_grad()
    F.nll_loss(model(x).clamp_min(1e-6).log(), target).backward()
    assert torch.allclose(torch.cat([p.grad.flatten() for p in model.body.parameters()]), full)


def test_leave_one_out_by_hand():
    """A calc point passed with its own id gets the NW average of the other m-1 points."""
    model = _small_model(seed=4).double()
    h = float(model.activation.bandwidth)
    calc_ids = torch.arange(100, 112)
    model.set_calc(model.calc_x, model.calc_y.argmax(1), ids=calc_ids)
    with torch.no_grad():
        z_ref = model.index(model.calc_x)
        out = model(model.calc_x[[3, 7]], ids=calc_ids[[3, 7]])
        for row, i in enumerate((3, 7)):
            for k in range(3):
                num = den = 0.0
                for j in range(12):
                    if j == i:
                        continue
                    w = math.exp(-0.5 * ((float(z_ref[j, k]) - float(z_ref[i, k])) / h) ** 2)
                    num += w * float(model.calc_y[j, k])
                    den += w
                assert float(out[row, k]) == pytest.approx(num / den, rel=1e-10)
        # without ids the point's own target is used, so the answer differs
        assert not torch.allclose(model(model.calc_x[[3, 7]]), out)


def test_link_uses_all_calc_points():
    model = _small_model(seed=5).double()
    grid = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(1).expand(-1, 3)
    with torch.no_grad():
        expected = nadaraya_watson(grid, model.index(model.calc_x), model.calc_y, model.activation.bandwidth)
        assert torch.allclose(model.link(grid), expected)


def test_set_calc_validates_and_keeps_dtype():
    model = _small_model().double()
    model.set_calc(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    assert model.calc_x.dtype == torch.float64 and model.calc_size == 5 and model.n_classes == 3
    with pytest.raises(ValueError, match="x must have shape"):
        model.set_calc(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match=r"^y must have 5 rows like x"):  # set_calc's own argument names
        model.set_calc(torch.randn(5, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^ids must be unique"):
        model.set_calc(torch.randn(3, 4), torch.tensor([0, 1, 2]), ids=torch.tensor([4, 4, 5]))
    with pytest.raises(ValueError, match="output columns"):
        model.set_calc(torch.randn(3, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="at least 2"):
        model.set_calc(torch.randn(1, 4), torch.tensor([0]))


def test_body_output_must_match_targets():
    model = KernelOutput(nn.Linear(4, 2), torch.randn(6, 4), torch.randn(6, 3))
    with pytest.raises(ValueError, match="body must map"):
        model(torch.randn(2, 4))


def test_constructor_errors():
    with pytest.raises(ValueError, match="n_classes"):
        KernelOutput(nn.Linear(4, 3), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), n_classes=3)
    with pytest.raises(ValueError, match="calc_x"):
        KernelOutput(nn.Linear(4, 3), torch.randint(0, 3, (6, 4)), torch.randn(6, 3))
    with pytest.raises(ValueError, match="calc_ids"):
        KernelOutput(nn.Linear(4, 3), torch.randn(6, 4), torch.randn(6, 3), calc_ids=torch.arange(5))


# --------------------------------------------------------------------------- KernelOutput, reference="batch"


class _CountingBody(nn.Module):
    """A body that counts the rows it is given (to see that the calc set is not pushed through it)."""

    def __init__(self, k=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k, bias=False))
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.net(x)


def _batch_model(seed=0, m=12, k=3):
    torch.manual_seed(seed)
    calc_x, calc_y = torch.randn(m, 4), torch.arange(m) % k
    return KernelOutput(_CountingBody(k), calc_x, calc_y, n_classes=k, bandwidth=0.8, reference="batch")


def _loo_by_hand(z, y, h, ids):
    """Leave-one-out Gaussian NW of the batch on itself, as a plain double loop."""
    n, k = z.shape
    out = torch.zeros(n, k, dtype=torch.float64)
    for i in range(n):
        for c in range(k):
            num = den = 0.0
            for j in range(n):
                if ids[j] == ids[i]:
                    continue
                w = math.exp(-0.5 * ((float(z[j, c]) - float(z[i, c])) / h) ** 2)
                num, den = num + w * float(y[j, c]), den + w
            out[i, c] = num / den
    return out


def test_batch_reference_regresses_the_batch_on_itself():
    model = _batch_model().double()
    x = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    ids = torch.tensor([40, 3, 17, 8, 21, 5, 30])
    model.body.rows = 0
    out = model(x, ids=ids, targets=labels)
    assert model.body.rows == 7  # the calc points did not go through the body
    with torch.no_grad():
        expected = _loo_by_hand(model.index(x), F.one_hot(labels, 3), float(model.activation.bandwidth), ids)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-10, atol=1e-12)
    # float targets in calc_y's form give the same answer; the calc set plays no part
    same = model(x, ids=ids, targets=F.one_hot(labels, 3).double())
    model.set_calc(torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    torch.testing.assert_close(model(x, ids=ids, targets=labels), same)
    assert "reference='batch'" in repr(model)


def test_batch_reference_evaluates_with_the_calc_set():
    model = _batch_model(seed=1)
    calc = KernelOutput(model.body, model.calc_x, model.calc_y, calc_ids=model.calc_ids, bandwidth=0.8)
    x = torch.randn(6, 4)
    model.eval()
    torch.testing.assert_close(model(x), calc(x))
    torch.testing.assert_close(model(x, ids=torch.arange(6), targets=torch.zeros(6, dtype=torch.long)),
                               calc(x, ids=torch.arange(6)))
    model.train()
    assert not torch.allclose(model(x, ids=torch.arange(6), targets=torch.arange(6) % 3), calc(x, ids=torch.arange(6)))


def test_batch_of_two_rows_each_predicts_the_other():
    model = _batch_model(seed=2)
    out = model(torch.randn(2, 4), ids=torch.tensor([5, 9]), targets=torch.tensor([0, 2]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))


def test_batch_missing_a_class_gives_a_zero_column_and_finite_gradients():
    model = _batch_model(seed=3)
    labels = torch.tensor([0, 1, 1, 0, 0, 1])  # class 2 absent
    out = model(torch.randn(6, 4), ids=torch.arange(6), targets=labels)
    assert torch.equal(out[:, 2], torch.zeros(6))
    F.mse_loss(out, F.one_hot(labels, 3).float()).backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # the missing class's unit gets no gradient from this batch: its output is flat
    assert torch.equal(model.body.net[2].weight.grad[2], torch.zeros(6))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ids=None), "needs the batch's ids and targets"),
        (dict(targets=None), "needs the batch's ids and targets"),
        (dict(x=torch.randn(1, 4), ids=torch.tensor([0]), targets=torch.tensor([1])), "at least 2 rows"),
        (dict(targets=torch.tensor([0, 1, 2])), "targets must be a tensor of 4 rows"),
        (dict(targets=torch.tensor([0, 1, 3, 1])), "class labels must lie in 0..2"),
        (dict(targets=torch.tensor([0, -1, 2, 1])), "class labels must lie in 0..2"),
        (dict(targets=torch.zeros(4, 2)), "targets must have 3 columns"),
        (dict(targets=torch.zeros(4, 3, dtype=torch.long)), "float targets or 1-D integer class labels"),
        (dict(ids=torch.arange(3)), r"ids must be a 1-D (integer )?tensor"),
        (dict(ids=torch.zeros(4, dtype=torch.long)), "no reference point left"),
    ],
)
def test_batch_reference_bad_input(kwargs, match):
    model = _batch_model(seed=4)
    args = dict(x=torch.randn(4, 4), ids=torch.arange(4), targets=torch.tensor([0, 1, 2, 1]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        model(args["x"], ids=args["ids"], targets=args["targets"])


def test_batch_reference_needs_labels_model_for_labels_and_a_known_reference():
    reg = KernelOutput(nn.Linear(4, 1), torch.randn(5, 4), torch.randn(5), reference="batch")
    with pytest.raises(ValueError, match="calc_y holds float targets"):
        reg(torch.randn(3, 4), ids=torch.arange(3), targets=torch.tensor([0, 1, 0]))
    out = reg(torch.randn(3, 4), ids=torch.arange(3), targets=torch.randn(3))  # (N,) floats: one unit
    assert out.shape == (3, 1)
    with pytest.raises(ValueError, match="reference must be one of"):
        KernelOutput(nn.Linear(4, 1), torch.randn(5, 4), torch.randn(5), reference="epoch")


@pytest.fixture
def one_thread():
    """Tiny problem: one intra-op thread is faster and immune to other processes' load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_iris_training_reaches_high_accuracy(one_thread):
    from sklearn.datasets import load_iris

    data = load_iris()
    X = torch.tensor(data.data, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    calc = select_calc(y, 60, policy="stratified", seed=0)
    body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3, bias=False))
    model = KernelOutput(body, X[calc], y[calc], calc_ids=calc)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ids = torch.arange(150)
    for _ in range(300):
        opt.zero_grad()
        out = model(X, ids=ids)
        loss = F.mse_loss(out, F.one_hot(y, 3).float())
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(X, ids=ids).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    assert model.activation.bandwidth.item() != pytest.approx(1.5)  # the bandwidth was learned


def test_iris_training_with_batch_reference_reaches_high_accuracy(one_thread):
    from sklearn.datasets import load_iris

    data = load_iris()
    X = torch.tensor(data.data, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    calc = select_calc(y, 30, policy="stratified", seed=0)
    body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3, bias=False))
    model = KernelOutput(body, X[calc], y[calc], calc_ids=calc, reference="batch")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        for rows in torch.randperm(150, generator=gen).split(25):
            opt.zero_grad()
            F.mse_loss(model(X[rows], ids=rows, targets=y[rows]), F.one_hot(y[rows], 3).float()).backward()
            opt.step()
    model.eval()  # evaluation: the calc set is the reference set
    with torch.no_grad():
        acc = (model(X).argmax(1) == y).float().mean().item()
    assert acc > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_output_on_cuda_matches_cpu():
    model = _small_model(seed=6)
    x = torch.randn(9, 4)
    ids = torch.arange(9)
    cpu = model(x, ids=ids)
    cpu.sum().backward()
    g_cpu = model.activation.log_bandwidth.grad.clone()
    model.zero_grad()
    model = model.cuda()
    assert model.calc_x.is_cuda and model.calc_ids.is_cuda
    gpu = model(x.cuda(), ids=ids.cuda())
    gpu.sum().backward()
    assert torch.allclose(gpu.cpu(), cpu.detach(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(model.activation.log_bandwidth.grad.cpu(), g_cpu, rtol=1e-3, atol=1e-5)
    assert select_calc(torch.randint(0, 3, (30,), device="cuda"), 6, policy="stratified").is_cuda


# --------------------------------------------------------------------------- select_calc


def test_select_calc_stratified_keeps_proportions():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = select_calc(y, 10, policy="stratified", seed=3)
    assert idx.dtype == torch.long and idx.numel() == 10 and idx.unique().numel() == 10
    assert torch.bincount(y[idx], minlength=3).tolist() == [5, 3, 2]


def test_select_calc_stratified_at_least_one_per_class():
    y = torch.tensor([0] * 97 + [1] * 2 + [2] * 1)
    idx = select_calc(y, 4, policy="stratified")
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert min(counts) >= 1 and sum(counts) == 4


def test_select_calc_seeded_and_random():
    y = torch.randint(0, 4, (200,))
    a = select_calc(y, 30, seed=7)
    assert torch.equal(a, select_calc(y, 30, seed=7))
    assert not torch.equal(a, select_calc(y, 30, seed=8))
    assert a.unique().numel() == 30 and int(a.max()) < 200


def test_select_calc_regression_quantiles():
    y = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    idx = select_calc(y, 10, policy="stratified", seed=1)
    # one row from each decile of the target
    assert sorted((y[idx, 0] // 10).long().tolist()) == list(range(10))


@pytest.mark.parametrize("size", [1, 0, 11, 2.5])
def test_select_calc_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        select_calc(torch.arange(10), size)


def test_select_calc_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        select_calc(torch.arange(10), 3, policy="kmeans")


@pytest.mark.parametrize("reference", ["calc", "batch"])
def test_non_finite_input_or_index_is_named(reference):
    torch.manual_seed(0)
    x, labels = torch.randn(12, 4), torch.arange(12) % 3
    body = nn.Linear(4, 3)
    model = KernelOutput(body, x, labels, n_classes=3, reference=reference)
    kw = dict(ids=torch.arange(12), targets=labels)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains non-finite values"):
        model(bad, **kw)
    with torch.no_grad():
        body.weight[0, 0] = float("inf")  # finite x, non-finite indices
    with pytest.raises(ValueError, match="body mapped finite x to non-finite indices z"):
        model(x, **kw)
