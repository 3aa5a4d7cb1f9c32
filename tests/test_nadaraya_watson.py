"""Tests of the Nadaraya–Watson core against independent references."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from kaf.estimators import KERNELS, nadaraya_watson


@pytest.fixture(autouse=True)
def _both_backends(nw_backend):
    """Every test here runs with the fused CPU kernel and with the torch-operations path."""


def slow_nw(z, z_ref, y_ref, h, kernel="gaussian", query_ids=None, ref_ids=None):
    """The obvious double loop in float64 numpy: the independent reference."""
    z, z_ref, y_ref = (np.asarray(t, dtype=np.float64) for t in (z, z_ref, y_ref))
    n, k = z.shape
    h = np.broadcast_to(np.asarray(h, dtype=np.float64), (k,))
    kern = {
        "gaussian": lambda u: math.exp(-u * u / 2) / math.sqrt(2 * math.pi),
        "epanechnikov": lambda u: 0.75 * (1 - u * u) if abs(u) <= 1 else 0.0,
        "triangular": lambda u: 1 - abs(u) if abs(u) <= 1 else 0.0,
        "uniform": lambda u: 0.5 if abs(u) <= 1 else 0.0,
    }[kernel]
    out = np.zeros((n, k))
    for i in range(n):
        for c in range(k):
            num = den = 0.0
            for j in range(z_ref.shape[0]):
                if query_ids is not None and query_ids[i] == ref_ids[j]:
                    continue
                w = kern((z_ref[j, c] - z[i, c]) / h[c])
                num += w * y_ref[j, c]
                den += w
            out[i, c] = num / den
    return out


def data(n=7, m=9, k=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=dtype)
    z_ref = torch.randn(m, k, generator=g, dtype=dtype)
    y_ref = torch.rand(m, k, generator=g, dtype=dtype)
    return z, z_ref, y_ref


@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_slow_loop(kernel):
    z, z_ref, y_ref = data()
    h = 2.5 if kernel != "gaussian" else 0.7  # wide enough that every compact window holds points
    out = nadaraya_watson(z, z_ref, y_ref, h, kernel=kernel)
    np.testing.assert_allclose(out.numpy(), slow_nw(z, z_ref, y_ref, h, kernel), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_leave_one_out_matches_slow_loop(kernel):
    z_ref = data(m=9)[1]
    y_ref = data(m=9)[2]
    z = z_ref[2:7] + 0.01  # queries are calc points 2..6
    qid = torch.arange(2, 7)
    rid = torch.arange(9)
    h = torch.tensor([0.8, 1.3], dtype=torch.float64) if kernel == "gaussian" else 3.0
    out = nadaraya_watson(z, z_ref, y_ref, h, kernel=kernel, query_ids=qid, ref_ids=rid)
    ref = slow_nw(z, z_ref, y_ref, h.numpy() if torch.is_tensor(h) else h, kernel, qid.tolist(), rid.tolist())
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_matches_statsmodels_kernelreg():
    from statsmodels.nonparametric.kernel_regression import KernelReg

    rng = np.random.default_rng(3)
    x = rng.normal(size=80)
    y = np.sin(x) + 0.1 * rng.normal(size=80)
    xq = np.linspace(-2, 2, 25)
    h = 0.35
    sm = KernelReg(y, x, var_type="c", reg_type="lc", bw=[h]).fit(xq)[0]
    ours = nadaraya_watson(
        torch.tensor(xq).unsqueeze(1), torch.tensor(x).unsqueeze(1), torch.tensor(y).unsqueeze(1), h
    )
    np.testing.assert_allclose(ours[:, 0].numpy(), sm, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("with_ids", [False, True])
def test_gradcheck_gaussian(chunk_size, with_ids):
    z, z_ref, y_ref = data(n=5, m=6, k=2)
    h = torch.tensor([0.9, 1.4], dtype=torch.float64, requires_grad=True)
    for t in (z, z_ref, y_ref):
        t.requires_grad_(True)
    kw = {}
    if with_ids:
        kw = dict(query_ids=torch.tensor([0, 1, 7, 3, 9]), ref_ids=torch.arange(6))
    f = lambda a, b, c, d: nadaraya_watson(a, b, c, d, chunk_size=chunk_size, **kw)
    assert torch.autograd.gradcheck(f, (z, z_ref, y_ref, h))


def test_gradcheck_scalar_bandwidth():
    z, z_ref, y_ref = data(n=4, m=5, k=3)
    h = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, d: nadaraya_watson(a, z_ref, y_ref, d), (z, h))


@pytest.mark.parametrize("kernel", ["epanechnikov", "triangular"])
def test_gradcheck_compact(kernel):
    z, z_ref, y_ref = data(n=4, m=6, k=2, seed=5)
    h = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    for t in (z, z_ref, y_ref):
        t.requires_grad_(True)
    f = lambda a, b, c, d: nadaraya_watson(a, b, c, d, kernel=kernel)
    assert torch.autograd.gradcheck(f, (z, z_ref, y_ref, h))


def test_chunked_equals_unchunked_values_and_grads():
    z, z_ref, y_ref = data(n=23, m=17, k=3, dtype=torch.float32)
    qid, rid = torch.arange(23), torch.arange(5, 22)
    results = []
    for chunk in (None, 4):
        zz, zr, yr = (t.clone().requires_grad_(True) for t in (z, z_ref, y_ref))
        h = torch.tensor(0.8, requires_grad=True)
        out = nadaraya_watson(zz, zr, yr, h, query_ids=qid, ref_ids=rid, chunk_size=chunk)
        (out * torch.linspace(-1, 1, 3)).sum().backward()
        results.append([out.detach(), zz.grad, zr.grad, yr.grad, h.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gaussian_gradients_match_plain_autograd_float32():
    # The hand-written backward against autograd through the obvious formula.
    z, z_ref, y_ref = data(n=30, m=40, k=2, dtype=torch.float32, seed=9)
    h0 = torch.tensor([0.6, 1.7])
    grads = []
    for fast in (True, False):
        zz, zr, yr = (t.clone().requires_grad_(True) for t in (z, z_ref, y_ref))
        h = h0.clone().requires_grad_(True)
        if fast:
            out = nadaraya_watson(zz, zr, yr, h)
        else:
            logw = -((zr.unsqueeze(0) - zz.unsqueeze(1)) / h).square() / 2
            w = torch.softmax(logw, dim=1)
            out = (w * yr.unsqueeze(0)).sum(1)
        out.pow(2).sum().backward()
        grads.append([out.detach(), zz.grad, zr.grad, yr.grad, h.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- properties

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    zq=arrays(np.float64, (4, 2), elements=finite),
    zr=arrays(np.float64, (6, 2), elements=finite),
    yr=arrays(np.float64, (6, 2), elements=finite),
    h=st.floats(0.01, 100),
    kernel=st.sampled_from(KERNELS),
)
def test_output_within_target_range(zq, zr, yr, h, kernel):
    out = nadaraya_watson(torch.tensor(zq), torch.tensor(zr), torch.tensor(yr), h, kernel=kernel)
    assert torch.isfinite(out).all()
    lo, hi = yr.min(0), yr.max(0)
    assert (out.numpy() >= lo - 1e-9 * (1 + abs(lo))).all() and (out.numpy() <= hi + 1e-9 * (1 + abs(hi))).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), kernel=st.sampled_from(KERNELS))
def test_permuting_the_reference_set_changes_nothing(seed, kernel):
    z, z_ref, y_ref = data(n=5, m=8, k=2, seed=seed)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
    rid = torch.arange(8)
    qid = torch.tensor([0, 3, 8, 9, 5])
    a = nadaraya_watson(z, z_ref, y_ref, 1.5, kernel=kernel, query_ids=qid, ref_ids=rid)
    b = nadaraya_watson(z, z_ref[perm], y_ref[perm], 1.5, kernel=kernel, query_ids=qid, ref_ids=rid[perm])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), new_y=st.floats(-1e3, 1e3), new_z=st.floats(-5, 5))
def test_left_out_pair_has_no_influence(seed, new_y, new_z):
    z, z_ref, y_ref = data(n=1, m=6, k=1, seed=seed)
    qid, rid = torch.tensor([2]), torch.arange(6)
    before = nadaraya_watson(z, z_ref, y_ref, 0.9, query_ids=qid, ref_ids=rid)
    z_ref2, y_ref2 = z_ref.clone(), y_ref.clone()
    z_ref2[2], y_ref2[2] = new_z, new_y
    after = nadaraya_watson(z, z_ref2, y_ref2, 0.9, query_ids=qid, ref_ids=rid)
    # equal up to float64 rounding: the indices are centred on their mean before use
    torch.testing.assert_close(before, after, rtol=1e-12, atol=1e-12)
    # and the excluded point would matter if it were not excluded
    full_before = nadaraya_watson(z, z_ref, y_ref, 0.9)
    full_after = nadaraya_watson(z, z_ref2, y_ref2, 0.9)
    if abs(new_y - float(y_ref[2])) > 1e-3 and abs(new_z - float(z[0])) < 2:
        assert not torch.allclose(full_before, full_after, rtol=1e-9, atol=1e-9)


def test_huge_bandwidth_gives_leave_one_out_mean():
    z, z_ref, y_ref = data(n=6, m=6, k=2)
    ids = torch.arange(6)
    out = nadaraya_watson(z_ref, z_ref, y_ref, 1e6, query_ids=ids, ref_ids=ids)
    loo_mean = (y_ref.sum(0, keepdim=True) - y_ref) / 5
    torch.testing.assert_close(out, loo_mean, rtol=1e-9, atol=1e-9)
    for kernel in ("epanechnikov", "triangular", "uniform"):
        out = nadaraya_watson(z_ref, z_ref, y_ref, 1e6, kernel=kernel, query_ids=ids, ref_ids=ids)
        torch.testing.assert_close(out, loo_mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_tiny_bandwidth_gives_nearest_neighbour(kernel):
    z, z_ref, y_ref = data(n=10, m=12, k=2, seed=4)
    out = nadaraya_watson(z, z_ref, y_ref, 1e-4, kernel=kernel)
    nearest = (z_ref.unsqueeze(0) - z.unsqueeze(1)).abs().argmin(1)  # (n, k)
    torch.testing.assert_close(out, torch.gather(y_ref, 0, nearest))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", KERNELS)
def test_far_apart_indices_are_finite(dtype, kernel):
    z_ref = torch.tensor([[0.0], [1.0], [1e6]], dtype=dtype)
    y_ref = torch.tensor([[1.0], [2.0], [3.0]], dtype=dtype)
    z = torch.tensor([[-1e6], [5e5 + 1], [2e6], [0.2]], dtype=dtype, requires_grad=True)
    h = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    out = nadaraya_watson(z, z_ref, y_ref, h, kernel=kernel)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:3, 0], torch.tensor([1.0, 3.0, 3.0], dtype=dtype))
    out.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(h.grad).all()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(z=torch.zeros(3)), "z must be a 2-D"),
        (dict(z_ref=torch.zeros(4, 3)), "z_ref must have shape"),
        (dict(y_ref=torch.zeros(5, 2)), "y_ref must have the shape"),
        (dict(h=0.0), "h must be finite and > 0"),
        (dict(h=-1.0), "h must be finite and > 0"),
        (dict(h=float("nan")), "h must be finite"),
        (dict(h=torch.ones(3)), "h must be a scalar or a tensor of shape"),
        (dict(z_ref=torch.zeros(0, 2), y_ref=torch.zeros(0, 2)), "empty reference set"),
        (dict(z=torch.tensor([[0.0, float("nan")]])), "z contains non-finite"),
        (dict(y_ref=torch.full((4, 2), float("inf"))), "y_ref contains non-finite"),
        (dict(kernel="cosine"), "kernel must be one of"),
        (dict(query_ids=torch.arange(2)), "given together"),
        (dict(query_ids=torch.arange(2), ref_ids=torch.arange(4)), "query_ids must be a 1-D tensor of length 3"),
        (dict(query_ids=torch.arange(3), ref_ids=torch.arange(5)), "ref_ids must be a 1-D tensor of length 4"),
        (dict(query_ids=torch.zeros(3), ref_ids=torch.arange(4)), "integer ids"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(z=torch.zeros(3, 2, dtype=torch.float64)), "one dtype"),
        (dict(z=torch.zeros(3, 2, dtype=torch.long)), "floating-point"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(z=torch.zeros(3, 2), z_ref=torch.randn(4, 2), y_ref=torch.rand(4, 2), h=1.0)
    args.update(kwargs)
    extra = {key: args.pop(key) for key in ("kernel", "query_ids", "ref_ids", "chunk_size") if key in args}
    with pytest.raises(ValueError, match=match):
        nadaraya_watson(args["z"], args["z_ref"], args["y_ref"], args["h"], **extra)


def test_query_with_nothing_left_is_an_error():
    with pytest.raises(ValueError, match="no reference point left"):
        nadaraya_watson(
            torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), 1.0,
            query_ids=torch.tensor([4]), ref_ids=torch.tensor([4]),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("kernel", KERNELS)
def test_cuda_matches_cpu(kernel):
    z, z_ref, y_ref = data(n=50, m=40, k=3, dtype=torch.float32)
    qid, rid = torch.arange(50), torch.arange(40)
    cpu = nadaraya_watson(z, z_ref, y_ref, 2.0, kernel=kernel, query_ids=qid, ref_ids=rid, chunk_size=16)
    gpu = nadaraya_watson(
        z.cuda(), z_ref.cuda(), y_ref.cuda(), torch.tensor(2.0, device="cuda"), kernel=kernel,
        query_ids=qid.cuda(), ref_ids=rid.cuda(), chunk_size=16,
    )
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_duplicated_reference_ids_leave_out_every_match():
    # two reference rows share id 3 (e.g. a calc point listed twice): both are left out
    z, z_ref, y_ref = data(n=4, m=6, k=1, seed=8)
    rid = torch.tensor([0, 3, 1, 3, 2, 5])
    qid = torch.tensor([3, 1, 7, 5])
    out = nadaraya_watson(z, z_ref, y_ref, 0.9, query_ids=qid, ref_ids=rid)
    ref = slow_nw(z, z_ref, y_ref, 0.9, "gaussian", qid.tolist(), rid.tolist())
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)
    with pytest.raises(ValueError, match="no reference point left"):
        nadaraya_watson(z[:1], z_ref[:2], y_ref[:2], 0.9, query_ids=torch.tensor([4]), ref_ids=torch.tensor([4, 4]))


# ----------------------------------------------------------------------------- second order, torch.func

import kaf.estimators as est  # noqa: E402


def dense_nw(z, z_ref, y_ref, h, query_ids=None, ref_ids=None):
    """The obvious formula in plain autograd operations (an independent reference)."""
    h = torch.as_tensor(h, dtype=z.dtype)
    logw = -((z_ref.unsqueeze(0) - z.unsqueeze(1)) / h).square() / 2  # (n, m, k)
    if query_ids is not None:
        logw = logw.masked_fill((query_ids.unsqueeze(1) == ref_ids.unsqueeze(0)).unsqueeze(2), float("-inf"))
    return (torch.softmax(logw, dim=1) * y_ref.unsqueeze(0)).sum(1)


def _case(same, ids, k=2, seed=0, n=5, m=6):
    z, z_ref, y_ref = data(n=n, m=m, k=k, seed=seed)
    h = torch.tensor([0.9, 1.4][:k], dtype=torch.float64)
    if same:
        z_ref, y_ref = z, y_ref[:n]
    qid = torch.tensor([0, 1, 7, 3, 9])[:n] if ids else None
    rid = (qid if same else torch.arange(m)) if ids else None
    return z, z_ref, y_ref, h, qid, rid


@pytest.mark.parametrize(
    "same, ids, chunk_size",
    [(False, False, None), (False, True, 2), (True, True, None), (True, True, 2)],
    ids=["calc-set", "calc-set-leave-one-out-chunked", "batch-is-reference", "batch-is-reference-chunked"],
)
def test_gradcheck_and_gradgradcheck(same, ids, chunk_size):
    # per-unit bandwidths; leave-one-out with some queries among the reference points
    z, z_ref, y_ref, h, qid, rid = _case(same, ids, n=4, m=5)
    y_ref = y_ref.clone().requires_grad_(True)
    h.requires_grad_(True)
    z.requires_grad_(True)
    if same:
        f = lambda a, c, d: nadaraya_watson(a, a, c, d, query_ids=qid, ref_ids=rid, chunk_size=chunk_size)
        args = (z, y_ref, h)
    else:
        z_ref.requires_grad_(True)
        f = lambda a, b, c, d: nadaraya_watson(a, b, c, d, query_ids=qid, ref_ids=rid, chunk_size=chunk_size)
        args = (z, z_ref, y_ref, h)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_gradient_penalty_matches_plain_autograd():
    # d/d(theta) of ||dL/dz||^2, the second-order term a gradient penalty needs
    z, z_ref, y_ref, h, qid, rid = _case(False, True)
    grads = []
    for fn in (nadaraya_watson, dense_nw):
        zz, zr, hh = (t.clone().requires_grad_(True) for t in (z, z_ref, h))
        out = fn(zz, zr, y_ref, hh, query_ids=qid, ref_ids=rid)
        (gz,) = torch.autograd.grad((out * torch.linspace(-1, 2, 2, dtype=out.dtype)).sum(), zz, create_graph=True)
        grads.append(torch.autograd.grad(gz.square().sum(), (zr, hh)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_torch_func_transforms_match_eager():
    from torch.func import grad, hessian, jacfwd, jacrev, vmap

    z, z_ref, y_ref, h, qid, rid = _case(False, True)
    f = lambda zz: nadaraya_watson(zz, z_ref, y_ref, h, query_ids=qid, ref_ids=rid)
    zz = z.clone().requires_grad_(True)
    f(zz).sum().backward()
    torch.testing.assert_close(grad(lambda t: f(t).sum())(z), zz.grad)
    jac = torch.autograd.functional.jacobian(f, z)
    torch.testing.assert_close(jacrev(f)(z), jac)
    torch.testing.assert_close(jacfwd(f)(z), jac)
    # per-row evaluation under vmap equals the batched call (no ids: rows are independent)
    rows = vmap(lambda t: nadaraya_watson(t.unsqueeze(0), z_ref, y_ref, h))(z).squeeze(1)
    torch.testing.assert_close(rows, nadaraya_watson(z, z_ref, y_ref, h))
    hess = hessian(lambda hh: nadaraya_watson(z, z_ref, y_ref, hh, query_ids=qid, ref_ids=rid).sum())(h)
    ref = torch.autograd.functional.hessian(lambda hh: dense_nw(z, z_ref, y_ref, hh, qid, rid).sum(), h)
    torch.testing.assert_close(hess, ref)


@pytest.mark.parametrize("kernel", KERNELS)
def test_vmap_over_queries_with_their_ids_matches_the_batched_call(kernel):
    from torch.func import vmap

    z, z_ref, y_ref, h, qid, rid = _case(False, True)
    h = 2.5 if kernel != "gaussian" else h
    rows = vmap(lambda t, i: nadaraya_watson(t.unsqueeze(0), z_ref, y_ref, h, kernel=kernel,
                                             query_ids=i.unsqueeze(0), ref_ids=rid))(z, qid).squeeze(1)
    torch.testing.assert_close(rows, nadaraya_watson(z, z_ref, y_ref, h, kernel=kernel, query_ids=qid, ref_ids=rid))


def test_forward_mode_ad_matches_jacobian():
    import torch.autograd.forward_ad as fwAD

    z, z_ref, y_ref, h, qid, rid = _case(False, True)
    tangent = torch.randn_like(z)
    with fwAD.dual_level():
        out = nadaraya_watson(fwAD.make_dual(z, tangent), z_ref, y_ref, h, query_ids=qid, ref_ids=rid)
        jvp = fwAD.unpack_dual(out).tangent
    jac = torch.autograd.functional.jacobian(lambda t: dense_nw(t, z_ref, y_ref, h, qid, rid), z)
    torch.testing.assert_close(jvp, torch.einsum("nkij,ij->nk", jac, tangent))


def test_backward_twice_with_retain_graph():
    z, z_ref, y_ref, h, qid, rid = _case(False, True)
    zz, hh = z.clone().requires_grad_(True), h.clone().requires_grad_(True)
    out = nadaraya_watson(zz, z_ref, y_ref, hh, query_ids=qid, ref_ids=rid).sum()
    first = torch.autograd.grad(out, (zz, hh), retain_graph=True)
    second = torch.autograd.grad(out, (zz, hh))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- paths that must agree


@pytest.mark.parametrize("same", [False, True])
def test_blocks_and_sorted_leave_out_agree_with_dense(monkeypatch, same):
    # small blocks and the binary-search leave-one-out against one block and the dense mask
    g = torch.Generator().manual_seed(2)
    n, m, k = 40, 40 if same else 55, 3
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    z_ref = z if same else torch.randn(m, k, generator=g, dtype=torch.float64)
    y_ref = torch.rand(m, k, generator=g, dtype=torch.float64)
    qid = torch.randperm(60, generator=g)[:n]
    rid = qid if same else torch.randperm(70, generator=g)[:m]
    h = torch.tensor([0.4, 0.9, 2.0], dtype=torch.float64)
    results = []
    for block, dense in ((1 << 30, 1 << 30), (7 * m * k, 0), (5 * m * k, 1 << 30)):
        monkeypatch.setattr(est, "_BLOCK", block)
        monkeypatch.setattr(est, "_DENSE_MASK_MAX", dense)
        zz = z.clone().requires_grad_(True)
        zr = zz if same else z_ref.clone().requires_grad_(True)
        yr, hh = y_ref.clone().requires_grad_(True), h.clone().requires_grad_(True)
        out = nadaraya_watson(zz, zr, yr, hh, query_ids=qid, ref_ids=rid)
        (out * torch.linspace(-1, 1, k, dtype=out.dtype)).sum().backward()
        results.append([out.detach(), zz.grad, yr.grad, hh.grad] + ([] if same else [zr.grad]))
    ref = dense_nw(z, z_ref, y_ref, h, qid, rid)
    torch.testing.assert_close(results[0][0], ref, rtol=1e-12, atol=1e-12)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_batch_as_its_own_reference_equals_a_copy():
    z, _, y_ref, h, _, _ = _case(False, False)
    y = y_ref[:5]
    ids = torch.arange(5)
    grads = []
    for same in (True, False):
        zz = z.clone().requires_grad_(True)
        out = nadaraya_watson(zz, zz if same else zz * 1.0, y, h, query_ids=ids, ref_ids=ids)
        out.square().sum().backward()
        grads.append((out.detach(), zz.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    z, z_ref, y_ref = data(n=6, m=8, k=2, dtype=torch.float32, seed=3)
    low = [t.to(dtype) for t in (z, z_ref, y_ref)]
    out = nadaraya_watson(*low, 0.7)
    assert out.dtype == dtype
    ref = nadaraya_watson(*(t.float() for t in low), 0.7)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- accuracy and overflow


def _value_and_grads(fn, z, z_ref, y_ref, h, qid=None, rid=None, weights=None):
    zz, zr, yr, hh = (t.clone().requires_grad_(True) for t in (z, z_ref, y_ref, h))
    out = fn(zz, zr, yr, hh, query_ids=qid, ref_ids=rid)
    w = torch.linspace(-1, 1, out.shape[1], dtype=out.dtype) if weights is None else weights
    (out * w).sum().backward()
    return [out.detach(), zz.grad, zr.grad, yr.grad, hh.grad]


def _close_to_float64(z, z_ref, y_ref, h, qid=None, rid=None, rtol=1e-5):
    """float32 result and gradients against the float64 dense reference of the same numbers."""
    got = _value_and_grads(nadaraya_watson, z, z_ref, y_ref, h, qid, rid)
    ref = _value_and_grads(dense_nw, *(t.double() for t in (z, z_ref, y_ref, h)), qid, rid)
    for name, a, b in zip(("out", "z", "z_ref", "y_ref", "h"), got, ref):
        assert torch.isfinite(a).all(), name
        scale = b.abs().max().clamp_min(1e-30)
        assert float((a.double() - b).abs().max() / scale) <= rtol, name


def test_indices_far_from_zero_keep_float32_accuracy():
    # every index near 1e4 with O(h) gaps: exact differences, no cancellation in the gradients
    g = torch.Generator().manual_seed(5)
    z_ref = 1e4 + torch.randn(30, 2, generator=g)
    z = 1e4 + torch.randn(12, 2, generator=g)
    _close_to_float64(z, z_ref, torch.rand(30, 2, generator=g), torch.tensor([0.5, 1.0]))


def test_clusters_far_apart_keep_float32_accuracy():
    # reference points in two clusters 600 bandwidths apart, queries inside them
    g = torch.Generator().manual_seed(6)
    z_ref = torch.cat([torch.randn(10, 1, generator=g) - 300, torch.randn(10, 1, generator=g) + 300])
    z = torch.cat([torch.randn(4, 1, generator=g) - 300, torch.randn(4, 1, generator=g) + 300])
    _close_to_float64(z, z_ref, torch.rand(20, 1, generator=g), torch.tensor([1.0]),
                      torch.arange(8), torch.arange(20))


def test_queries_far_from_every_reference_point():
    # Queries hundreds of bandwidths from every reference point. In float32 the log-weight
    # -d^2 of such a query carries a rounding error of about eps * d^2 (relative), which
    # decides between two nearly equidistant far points: outputs are compared in float32,
    # gradients in float64.
    g = torch.Generator().manual_seed(6)
    z_ref = torch.cat([torch.randn(10, 1, generator=g) - 300, torch.randn(10, 1, generator=g) + 300])
    y_ref = torch.rand(20, 1, generator=g)
    z = torch.tensor([[-1000.0], [0.0], [1000.0], [-299.5], [301.0]])
    h = torch.tensor([1.0])
    out = nadaraya_watson(z, z_ref, y_ref, h)
    torch.testing.assert_close(out.double(), dense_nw(z.double(), z_ref.double(), y_ref.double(), h.double()),
                               rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out[[0, 2], 0], y_ref[[z_ref.argmin(), z_ref.argmax()], 0])
    got = _value_and_grads(nadaraya_watson, *(t.double() for t in (z, z_ref, y_ref, h)))
    ref = _value_and_grads(dense_nw, *(t.double() for t in (z, z_ref, y_ref, h)))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scale, h", [(1e20, 1.0), (1.0, 1e-30), (1.0, 1e30), (1e30, 1e-8), (1e-30, 1e-30),
                                      (1e-30, 1e-40)])
def test_extreme_magnitudes_float32_match_float64(scale, h):
    # squares of scaled gaps overflow float32 (or h is tiny/huge): the overflow-safe path
    g = torch.Generator().manual_seed(7)
    z_ref = scale * torch.randn(9, 2, generator=g)
    z = torch.cat([z_ref[:3] * 1.001, scale * torch.randn(4, 2, generator=g)])
    ids = torch.arange(7)
    _close_to_float64(z, z_ref, torch.rand(9, 2, generator=g), torch.tensor(h), ids, torch.arange(9))


def test_huge_targets_float32_match_float64():
    z, z_ref, _ = data(n=6, m=8, k=2, dtype=torch.float32, seed=8)
    y_ref = 1e30 * torch.rand(8, 2, generator=torch.Generator().manual_seed(8))
    _close_to_float64(z, z_ref, y_ref, torch.tensor(0.8))


def test_float64_extremes_are_finite_and_nearest_neighbour():
    z_ref = torch.tensor([[-1e200], [0.0], [3e200]], dtype=torch.float64)
    y_ref = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    z = torch.tensor([[-2e200], [1e199], [2e200]], dtype=torch.float64, requires_grad=True)
    h = torch.tensor(1e-200, dtype=torch.float64, requires_grad=True)
    out = nadaraya_watson(z, z_ref, y_ref, h)
    torch.testing.assert_close(out.detach()[:, 0], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(h.grad).all()


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    zq=arrays(np.float32, (3, 1), elements=finite32),
    zr=arrays(np.float32, (4, 1), elements=finite32),
    yr=arrays(np.float32, (4, 1), elements=finite32),
    log_h=st.floats(-44, 38),
)
def test_finite_input_never_gives_nan(zq, zr, yr, log_h):
    z, z_ref = torch.tensor(zq, requires_grad=True), torch.tensor(zr, requires_grad=True)
    y_ref = torch.tensor(yr, requires_grad=True)
    h = torch.tensor(10.0**log_h, dtype=torch.float32)
    if not (torch.isfinite(h) and h > 0):
        return
    h.requires_grad_(True)
    out = nadaraya_watson(z, z_ref, y_ref, h, query_ids=torch.tensor([0, 1, 9]), ref_ids=torch.arange(4))
    assert not torch.isnan(out).any()
    lo, hi = float(y_ref.detach().min()), float(y_ref.detach().max())
    tol = 1e-5 * max(abs(lo), abs(hi))  # a weighted mean of the targets, up to float32 rounding
    assert (out >= lo - tol).all() and (out <= hi + tol).all()
    out.sum().backward()
    for t in (z, z_ref, y_ref, h):
        assert not torch.isnan(t.grad).any()
