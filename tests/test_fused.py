"""The fused CPU kernel of the Gaussian Nadaraya–Watson estimator (kaf/_nw_cpu.cpp via kaf._fused).

References: the obvious float64 double loop for values, and autograd through the plain
float64 formula (weights from a masked softmax) for gradients; neither shares code with the
kernel or with the estimator's hand-written eager backward. The rest of the estimator's
tests (tests/test_nadaraya_watson.py) run with both backends.
"""

import math
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path
from unittest import mock

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from conftest import require_fused
from kaf import _fused
from kaf.estimators import nadaraya_watson
from kaf.nn import KernelOutput

from test_nadaraya_watson import slow_nw


@pytest.fixture(autouse=True)
def _fused_only(monkeypatch):
    require_fused()
    monkeypatch.setenv("KAF_NW_BACKEND", "cpp")


def _has_avx2() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= set(_fused._cpu_signature().split())


@pytest.fixture(params=["native", "portable", "x86-64-v3"])
def build(request, monkeypatch):
    """The kernel built for this CPU (64-byte vectors with AVX-512), a portable build (the
    architecture's baseline: 16-byte SSE2 or NEON vectors) and an AVX2 build (32-byte vectors,
    x86-64 CPUs with AVX2 and FMA), each used by nadaraya_watson in turn (``KAF_NW_ISA``)."""
    if request.param == "x86-64-v3" and not _has_avx2():
        pytest.skip("the x86-64-v3 build needs an x86-64 CPU with AVX2 and FMA")
    if request.param != "native":
        monkeypatch.setattr(_fused, "_lib", _fused._build(request.param))
    return request.param


@pytest.fixture
def calls(monkeypatch):
    """Counts of the kernel's forward and backward calls."""
    count = {"forward": 0, "backward": 0}
    for name in count:
        original = getattr(_fused, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            count[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_fused, name, spy)
    return count


def plain_float64(z, z_ref, y_ref, h, query_ids=None, ref_ids=None, same=False):
    """Outputs and gradients of sum(out * g) through the plain formula in float64 autograd."""
    z = z.detach().double().requires_grad_(True)
    z_ref = z if same else z_ref.detach().double().requires_grad_(True)
    y_ref = y_ref.detach().double().requires_grad_(True)
    h = torch.as_tensor(h, dtype=torch.float64).detach().clone().requires_grad_(True)
    logw = -((z_ref.unsqueeze(0) - z.unsqueeze(1)) / h) ** 2 / 2  # (n, m, k)
    if query_ids is not None:
        logw = logw.masked_fill((query_ids.unsqueeze(1) == ref_ids.unsqueeze(0)).unsqueeze(2), -math.inf)
    out = (torch.softmax(logw, dim=1) * y_ref.unsqueeze(0)).sum(1)
    return out, (z, z_ref, y_ref, h)


def grads_of(fn, g, *inputs):
    out = fn()
    out.backward(g)
    return out.detach(), [None if t.grad is None else t.grad.detach().clone() for t in inputs]


CASES = [  # n, m, k, same (the batch as its own reference set), ids
    (1000, 1000, 3, False, "calc"),  # the thesis's scale: a calc set with leave-one-out
    (128, 128, 10, True, "batch"),  # a training step, the batch as its own reference set
    (37, 53, 2, False, None),  # no ids: nothing left out
    (9, 4, 1, False, "calc"),  # fewer references than queries
]


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("n,m,k,same,ids", CASES)
def test_values_and_gradients_match_float64(n, m, k, same, ids, dtype, rtol, calls, build):
    g = torch.Generator().manual_seed(n + m + k)
    z = torch.randn(n, k, generator=g, dtype=dtype)
    z_ref = z if same else torch.randn(m, k, generator=g, dtype=dtype) * 1.5
    y_ref = torch.rand(m, k, generator=g, dtype=dtype)
    h = torch.linspace(0.3, 0.9, k, dtype=dtype)
    qid = rid = None
    if ids == "batch":
        qid = rid = torch.arange(n)
    elif ids == "calc":  # queries 0..n-1 are the first of the calc points (ids shifted by a few)
        qid, rid = torch.arange(n) + 3, torch.arange(m)
    up = torch.randn(n, k, generator=g, dtype=dtype)
    up[::5] = 0  # rows without upstream gradient contribute nothing

    zz = z.clone().requires_grad_(True)
    zr = zz if same else z_ref.clone().requires_grad_(True)
    yy, hh = y_ref.clone().requires_grad_(True), h.clone().requires_grad_(True)
    out, grads = grads_of(lambda: nadaraya_watson(zz, zr, yy, hh, query_ids=qid, ref_ids=rid), up,
                          zz, *([] if same else [zr]), yy, hh)
    assert calls == {"forward": 1, "backward": 1}
    assert out.dtype == dtype

    ref_out, ref_inputs = plain_float64(z, z_ref, y_ref, h, qid, rid, same)
    ref_out.backward(up.double())
    ref_inputs = [ref_inputs[0]] + ([] if same else [ref_inputs[1]]) + list(ref_inputs[2:])
    if n * m <= 2000:  # the double loop as well, where it is quick
        np.testing.assert_allclose(ref_out.detach().numpy(),
                                   slow_nw(z, z_ref, y_ref, h.double().numpy(), "gaussian",
                                           None if qid is None else qid.tolist(),
                                           None if rid is None else rid.tolist()), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out.double(), ref_out.detach(), rtol=rtol, atol=rtol)
    for got, ref in zip(grads, ref_inputs):
        scale = ref.grad.abs().max().item()
        torch.testing.assert_close(got.double(), ref.grad, rtol=rtol, atol=rtol * max(scale, 1e-30))


def test_only_the_gradients_asked_for_are_computed():
    z, z_ref, y_ref = torch.randn(20, 2), torch.randn(30, 2), torch.rand(30, 2)
    for wanted in ("z", "z_ref", "y_ref", "h"):
        t = {"z": z.clone(), "z_ref": z_ref.clone(), "y_ref": y_ref.clone(), "h": torch.tensor(0.5)}
        t[wanted].requires_grad_(True)
        nadaraya_watson(t["z"], t["z_ref"], t["y_ref"], t["h"]).sum().backward()
        ref_out, ref_in = plain_float64(z, z_ref, y_ref, torch.tensor(0.5))
        ref_out.sum().backward()
        ref = dict(zip(("z", "z_ref", "y_ref", "h"), ref_in))[wanted].grad
        torch.testing.assert_close(t[wanted].grad.double(), ref, rtol=1e-5, atol=1e-6)
        assert all(v.grad is None for key, v in t.items() if key != wanted)


@pytest.mark.parametrize("ascending", [False, True])
def test_duplicated_ids_leave_out_every_match(calls, ascending, build):
    """Queries that share their id with several reference points (the segment loops); ids in
    any order (found by sorting) or ascending on both sides (found by one merge)."""
    g = torch.Generator().manual_seed(5)
    z_ref = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y_ref = torch.rand(40, 2, generator=g, dtype=torch.float64)
    rid = torch.arange(40) % 7  # ids 0..6, each on 5-6 reference points
    z = z_ref[:10] + 0.05
    qid = torch.tensor([0, 1, 2, 3, 4, 5, 6, 100, 0, 3])  # 100 matches nothing
    if ascending:
        rid, qid = rid.sort().values, qid.sort().values
    zz = z.clone().requires_grad_(True)
    out = nadaraya_watson(zz, z_ref, y_ref, 0.6, query_ids=qid, ref_ids=rid)
    out.sum().backward()
    assert calls["forward"] == 1 and calls["backward"] == 1
    np.testing.assert_allclose(out.detach().numpy(), slow_nw(z, z_ref, y_ref, 0.6, "gaussian", qid.tolist(),
                                                             rid.tolist()), rtol=1e-12)
    ref_out, ref_in = plain_float64(z, z_ref, y_ref, 0.6, qid, rid)
    ref_out.sum().backward()
    torch.testing.assert_close(zz.grad, ref_in[0].grad, rtol=1e-11, atol=1e-12)


def test_query_far_from_every_reference_point_takes_the_shifted_pass(build):
    """A query 50 bandwidths away: its unshifted weights all underflow, the second pass keeps them."""
    z_ref = torch.tensor([[0.0], [0.1], [0.3], [1.0]])
    y_ref = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    z = torch.tensor([[0.05], [20.0], [-30.0]], requires_grad=True)  # h = 0.4: 50 and 75 bandwidths out
    out = nadaraya_watson(z, z_ref, y_ref, 0.4)
    out.sum().backward()
    ref_out, ref_in = plain_float64(z, z_ref, y_ref, torch.tensor(0.4))
    ref_out.sum().backward()
    assert out[1, 0].item() == pytest.approx(4.0, abs=1e-6) and out[2, 0].item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(out.detach().double(), ref_out.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), ref_in[0].grad, rtol=1e-4, atol=1e-6)
    assert bool(torch.isfinite(z.grad).all())


@pytest.mark.parametrize("h", [1e-19, 1e-20, 1e-25])
def test_tiny_float32_bandwidth_gives_the_eager_gradients(h, monkeypatch):
    """A float32 bandwidth so small that 1/(2 h^2) overflows float32: the bandwidth gradient of
    coincident points is 0, as on the eager path (the kernel once gave NaN for h <= 1e-20)."""
    z, z_ref, y_ref = torch.ones(3, 1), torch.ones(4, 1), torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    grads = {}
    for mode in ("cpp", "eager"):
        monkeypatch.setenv("KAF_NW_BACKEND", mode)
        bw = torch.tensor(h, requires_grad=True)
        nadaraya_watson(z, z_ref, y_ref, bw).sum().backward()
        grads[mode] = bw.grad
    assert bool(torch.isfinite(grads["cpp"]))
    torch.testing.assert_close(grads["cpp"], grads["eager"])


def test_one_and_two_threads_agree():
    """Above the size where the kernel splits its work over threads, the result does not depend on them."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(600, 1, generator=g).requires_grad_(True)
    y = torch.rand(600, 1, generator=g)
    ids = torch.arange(600)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            z.grad = None
            out = nadaraya_watson(z, z, y, 0.2, query_ids=ids, ref_ids=ids)
            out.square().sum().backward()
            results.append((out.detach(), z.grad.clone()))
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


def test_kernel_output_with_the_batch_as_reference_uses_the_kernel(calls):
    torch.manual_seed(0)
    body = torch.nn.Linear(4, 3)
    x, labels = torch.randn(32, 4), torch.arange(32) % 3
    out = KernelOutput(body, x, labels, n_classes=3, reference="batch")(x, ids=torch.arange(32), targets=labels)
    out.sum().backward()
    assert calls == {"forward": 1, "backward": 1}
    assert body.weight.grad is not None and bool(torch.isfinite(body.weight.grad).all())


def test_eager_backend_does_not_call_the_kernel(calls, monkeypatch):
    monkeypatch.setenv("KAF_NW_BACKEND", "eager")
    z = torch.randn(10, 1, requires_grad=True)
    nadaraya_watson(z, z, torch.rand(10, 1), 0.5).sum().backward()
    assert calls == {"forward": 0, "backward": 0}


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("KAF_NW_BACKEND", "fortran")
    with pytest.raises(ValueError, match="KAF_NW_BACKEND must be one of"):
        nadaraya_watson(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2, 1), 1.0)


def test_double_backward_differentiates_the_plain_formula(calls):
    """create_graph=True: the forward runs in the kernel, the backward as plain operations (exact second derivatives)."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(12, 1, generator=g, dtype=torch.float64)
    y = torch.rand(12, 1, generator=g, dtype=torch.float64)
    ids = torch.arange(12)
    zz = z.clone().requires_grad_(True)
    out = nadaraya_watson(zz, zz, y, 0.5, query_ids=ids, ref_ids=ids)
    (gz,) = torch.autograd.grad(out.sum(), zz, create_graph=True)
    gz.square().sum().backward()
    assert calls == {"forward": 1, "backward": 0}
    ref_out, ref_in = plain_float64(z, None, y, 0.5, ids, ids, same=True)
    (ref_gz,) = torch.autograd.grad(ref_out.sum(), ref_in[0], create_graph=True)
    ref_gz.square().sum().backward()
    torch.testing.assert_close(gz, ref_gz, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(zz.grad, ref_in[0].grad, rtol=1e-10, atol=1e-12)


def test_without_a_compiler_auto_warns_once_and_cpp_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_fused, "_lib", None)
    monkeypatch.setattr(_fused, "_failure", None)
    monkeypatch.setattr(_fused, "_warned", False)
    monkeypatch.setattr(_fused, "_compiler", lambda: None)
    monkeypatch.setenv("KAF_CACHE_DIR", str(tmp_path))
    z, y = torch.randn(20, 1), torch.rand(20, 1)
    monkeypatch.setenv("KAF_NW_BACKEND", "eager")
    expected = nadaraya_watson(z, z, y, 0.5)

    monkeypatch.setenv("KAF_NW_BACKEND", "auto")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        first = nadaraya_watson(z, z, y, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not on every call
        second = nadaraya_watson(z, z, y, 0.5)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)

    monkeypatch.setenv("KAF_NW_BACKEND", "cpp")
    with pytest.raises(_fused.FusedUnavailable, match="no C\\+\\+ compiler found"):
        nadaraya_watson(z, z, y, 0.5)


def test_build_is_cached_by_source_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("KAF_CACHE_DIR", str(tmp_path))
    lib = _fused._build()
    built = sorted(tmp_path.glob("nw_cpu-*"))
    assert len(built) == 1 and lib.path == built[0]
    stamp = built[0].stat().st_mtime_ns
    _fused._build()
    assert sorted(tmp_path.glob("nw_cpu-*")) == built and built[0].stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p not in built]  # no temporary file left behind


def test_subnormal_scales_keep_their_values(build):
    """Indices and a bandwidth near float32's smallest normal numbers, and subnormal targets: the
    kernel flushes subnormal results, so these go to the exact path and keep their values."""
    g = torch.Generator().manual_seed(6)
    z_ref = torch.randn(6, 1, generator=g, dtype=torch.float64)
    y_ref = torch.rand(6, 1, generator=g, dtype=torch.float64)
    z = torch.randn(4, 1, generator=g, dtype=torch.float64)
    expected = slow_nw(z, z_ref, y_ref, 0.7)
    scale_z, scale_y = 1e-36, 1e-41  # 1e-41 is subnormal in float32
    out = nadaraya_watson((z * scale_z).float(), (z_ref * scale_z).float(), (y_ref * scale_y).float(),
                          torch.tensor(0.7 * scale_z, dtype=torch.float32))
    np.testing.assert_allclose(out.double().numpy() / scale_y, expected, rtol=2e-2)  # subnormals hold few digits
    out = nadaraya_watson((z * scale_z).float(), (z_ref * scale_z).float(), y_ref.float(),
                          torch.tensor(0.7 * scale_z, dtype=torch.float32))
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-4)


def _eager(fn):
    with mock.patch.dict(os.environ, {"KAF_NW_BACKEND": "eager"}):
        return fn()


@st.composite
def far_problems(draw):
    """Reference points on a grid of half bandwidths around a centre (repeated points: exact
    ties), queries up to 10^4 (float32) or 10^8 (float64) bandwidths away, some ids."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    k, m, n = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    h = draw(st.floats(0.1, 3.0))
    centre = draw(st.floats(-50, 50))
    grid = draw(st.lists(st.lists(st.integers(-6, 6), min_size=k, max_size=k), min_size=m, max_size=m))
    top = 4.0 if dtype == torch.float32 else 8.0
    far = draw(st.lists(st.lists(st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(-1.0, top)), min_size=k,
                                 max_size=k), min_size=n, max_size=n))
    z_ref = torch.tensor([[centre + 0.5 * h * j for j in row] for row in grid], dtype=torch.float64)
    z = torch.tensor([[centre + sign * h * 10.0**e for sign, e in row] for row in far], dtype=torch.float64)
    hundredths = st.integers(-200, 200).map(lambda v: v / 100)  # targets not so tiny that the kernel declines
    y_ref = torch.tensor(draw(st.lists(st.lists(hundredths, min_size=k, max_size=k), min_size=m, max_size=m)),
                         dtype=torch.float64)
    g = torch.tensor(draw(st.lists(st.lists(hundredths, min_size=k, max_size=k), min_size=n, max_size=n)),
                     dtype=torch.float64)
    qid = rid = None
    if draw(st.booleans()):
        rid = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=m, max_size=m)))
        qid = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
        assume(all(bool((rid != q).any()) for q in qid))  # every query keeps a reference point
    return dtype, z.to(dtype), z_ref.to(dtype), y_ref.to(dtype), torch.tensor(h, dtype=dtype), g.to(dtype), qid, rid


def _values_and_grads(z, z_ref, y_ref, h, g, qid, rid):
    leaves = [t.detach().clone().requires_grad_(True) for t in (z, z_ref, y_ref, h)]
    out = nadaraya_watson(*leaves, query_ids=qid, ref_ids=rid)
    out.backward(g)
    return out.detach(), [t.grad for t in leaves]


def exact_values_and_grads(z, z_ref, y_ref, h, g, qid, rid):
    """Outputs and the gradients of sum(out * g) by their closed forms in 60-digit arithmetic
    (mpmath), from the inputs' exact values: the reference for queries so far out that a
    float64 formula loses digits to cancellation (sum_j w d y - o sum_j w d, d ~ 10^8)."""
    with mpmath.workdps(60):
        mp = lambda t: [[mpmath.mpf(float(v)) for v in row] for row in t.double().tolist()]  # noqa: E731
        zs, rs, ys, gs, hh = mp(z), mp(z_ref), mp(y_ref), mp(g), mpmath.mpf(float(h))
        n, m, k = len(zs), len(rs), len(zs[0])
        inv = 1 / (mpmath.sqrt(2) * hh)
        out = [[0] * k for _ in range(n)]
        ga, gb, gy, gh = [[0] * k for _ in range(n)], [[0] * k for _ in range(m)], [[0] * k for _ in range(m)], 0
        for c in range(k):
            for i in range(n):
                kept = [j for j in range(m) if qid is None or int(qid[i]) != int(rid[j])]
                d = {j: (rs[j][c] - zs[i][c]) * inv for j in kept}
                top = max(-d[j] ** 2 for j in kept)
                e = {j: mpmath.exp(-d[j] ** 2 - top) for j in kept}
                total = sum(e.values())
                w = {j: e[j] / total for j in kept}
                o = sum(w[j] * ys[j][c] for j in kept)
                out[i][c] = o
                gi = gs[i][c]
                ga[i][c] = gi * 2 * inv * sum(w[j] * d[j] * (ys[j][c] - o) for j in kept)
                gh += gi * 2 / hh * sum(w[j] * d[j] ** 2 * (ys[j][c] - o) for j in kept)
                for j in kept:
                    gb[j][c] -= gi * 2 * inv * w[j] * d[j] * (ys[j][c] - o)
                    gy[j][c] += gi * w[j]
        as_tensor = lambda x: torch.tensor([[float(v) for v in row] for row in x], dtype=torch.float64)  # noqa: E731
        return as_tensor(out), [as_tensor(ga), as_tensor(gb), as_tensor(gy), torch.tensor(float(gh), dtype=torch.float64)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(far_problems())
def test_far_queries_agree_with_eager_and_exact(problem):
    """However far a query lies from the reference points, the fused backward rebuilds the
    forward's weights (once it broke from about 20 bandwidths out: NaN, or y's gradient 0.96
    or 4.5 instead of 1). Values and y's gradient agree with the eager path, and all four
    gradients with their closed forms in exact arithmetic; the eager path's own index and
    bandwidth gradients lose digits to cancellation that far out, even in float64."""
    dtype, z, z_ref, y_ref, h, g, qid, rid = problem
    statuses = []
    original = _fused.forward

    def spy(*args):
        result = original(*args)
        statuses.append(result[0])
        return result

    with mock.patch.object(_fused, "forward", spy):
        out, grads = _values_and_grads(z, z_ref, y_ref, h, g, qid, rid)
    assert statuses == [0]  # the kernel computed it
    eager_out, eager_grads = _eager(lambda: _values_and_grads(z, z_ref, y_ref, h, g, qid, rid))
    ref_out, ref_grads = exact_values_and_grads(z, z_ref, y_ref, h, g, qid, rid)
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, eager_out, rtol=tol, atol=tol)
    torch.testing.assert_close(grads[2], eager_grads[2], rtol=tol, atol=tol)
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    for got, ref in zip(grads, ref_grads):
        assert bool(torch.isfinite(got).all())
        scale = max(ref.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * scale)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 5), st.integers(0, 2**31), st.booleans())
def test_left_out_pairs_are_stored_as_runs_in_linear_memory(n, m, ids, seed, ascending):
    """Whatever the ids, the leave-one-out lists hold at most 2(n + m) numbers, and they leave
    out exactly the pairs whose ids are equal."""
    g = torch.Generator().manual_seed(seed)
    qid, rid = torch.randint(0, ids, (n,), generator=g), torch.randint(0, ids, (m,), generator=g)
    if ascending:
        qid, rid = qid.sort().values, rid.sort().values
    index, runs = _fused.excluded(qid, rid)
    assert index.numel() + runs.numel() <= 2 * (n + m)
    mask = torch.zeros(n, m, dtype=torch.bool)
    for i in range(n):
        for lo, hi in runs[index[i, 0]:index[i, 1]].tolist():
            assert lo < hi and not bool(mask[i, lo:hi].any())
            mask[i, lo:hi] = True
    torch.testing.assert_close(mask, qid.unsqueeze(1) == rid.unsqueeze(0))


def test_duplicated_ids_cost_linear_memory():
    """n = m = 6000, every query leaving out all but one reference point (36M pairs, once 288 MB
    of lists): the kernel is handed O(n + m) numbers and keeps the one point per query."""
    n = m = 6000
    rid = torch.zeros(m, dtype=torch.int64)
    rid[1234] = 1
    qid = torch.zeros(n, dtype=torch.int64)
    z = torch.linspace(-1, 1, n).unsqueeze(1).requires_grad_(True)
    y = torch.rand(m, 1)
    with mock.patch.object(_fused, "forward", wraps=_fused.forward) as fused_forward:
        out = nadaraya_watson(z, z.detach(), y, 0.3, query_ids=qid, ref_ids=rid)
        out.sum().backward()
    index, runs = fused_forward.call_args.args[4]
    assert index.numel() + runs.numel() <= 2 * (n + m)
    assert bool((index == index[0]).all())  # one list, shared by every query
    assert runs[index[0, 0]:index[0, 1]].tolist() == [[0, 1234], [1235, m]]
    torch.testing.assert_close(out.detach(), y[1234].expand(n, 1))
    assert bool(torch.isfinite(z.grad).all())


def test_isa_choice_is_validated_and_named_by_the_build(monkeypatch):
    monkeypatch.setenv("KAF_NW_ISA", "avx9")
    with pytest.raises(ValueError, match="KAF_NW_ISA must be one of"):
        _fused.isa()
    portable = _fused._build("portable")
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert portable.isa.startswith("sse2") and "-march" not in " ".join(portable.flags)
    if _has_avx2():
        assert _fused._build("x86-64-v3").isa.startswith("avx2+fma")


def _cross_compile(cxx: str, flags, tmp_path):
    if shutil.which(cxx) is None:
        reason = f"{cxx} is not installed (Debian: apt-get install g++-aarch64-linux-gnu)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must check the build for that target", pytrace=False)
        pytest.skip(reason)
    target = tmp_path / "nw_cpu.so"
    proc = subprocess.run([cxx, *flags, "-o", str(target), str(_fused._SOURCE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target.read_bytes()


def test_kernel_compiles_for_aarch64(tmp_path):
    """The portable build for ARM (NEON vectors), with the cross compiler: an aarch64 shared library."""
    elf = _cross_compile("aarch64-linux-gnu-g++", _fused._flag_sets("portable")[0], tmp_path)
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64


def test_kernel_compiles_for_avx512(tmp_path):
    """The 64-byte loops, which only run on CPUs with AVX-512: they compile here too."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 target")
    elf = _cross_compile(_fused._compiler() or "c++", _fused._BASE_FLAGS + ["-march=x86-64-v4", "-fopenmp"], tmp_path)
    assert elf[:4] == b"\x7fELF"


@pytest.mark.parametrize("torch_bytes", [16, 32, 64])
def test_auto_takes_the_kernel_only_where_its_vectors_are_as_wide_as_torchs(monkeypatch, torch_bytes):
    """On an AVX2 CPU the portable build (16-byte vectors) measured between 5% slower and 14%
    faster than the eager path, the AVX2 build about twice as fast: auto compares the widths,
    cpp always takes the kernel."""
    monkeypatch.setattr(_fused, "torch_vector_bytes", lambda: torch_bytes)
    kernel = _fused.library()
    probe = torch.zeros(2, 1)
    monkeypatch.setenv("KAF_NW_BACKEND", "auto")
    assert _fused.applies(probe) == (kernel.vector_bytes >= torch_bytes)
    assert (_fused.describe()["nw_path"] == "fused kernel") == (kernel.vector_bytes >= torch_bytes)
    monkeypatch.setenv("KAF_NW_BACKEND", "cpp")
    assert _fused.applies(probe)


def _check_program(cxx: str, flags, tmp_path):
    """tests/nw_cpu_check.cpp (the kernel against the closed forms, in C++) built with ``cxx``."""
    target = tmp_path / "nw_cpu_check"
    source = Path(__file__).with_name("nw_cpu_check.cpp")
    proc = subprocess.run([cxx, *flags, f'-DKAF_NW_SOURCE="{_fused._SOURCE}"', "-o", str(target), str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def test_kernel_matches_the_closed_forms_in_cpp(tmp_path):
    """The C++ check, built for this CPU: values and the four gradients within tolerance."""
    program = _check_program(_fused._compiler() or "c++", ["-O3", "-std=c++17", "-ffp-contract=off", "-march=native",
                                                           "-pthread"], tmp_path)
    proc = subprocess.run([str(program)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_kernel_runs_on_aarch64_under_qemu(tmp_path):
    """The NEON loops run (qemu-user) and match the closed forms."""
    for tool, package in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user")):
        if shutil.which(tool) is None:
            reason = f"{tool} is not installed (Debian: apt-get install {package})"
            if os.environ.get("CI"):
                pytest.fail(f"{reason}; CI must run the kernel for aarch64", pytrace=False)
            pytest.skip(reason)
    program = _check_program("aarch64-linux-gnu-g++", ["-O3", "-std=c++17", "-ffp-contract=off", "-pthread",
                                                       "-static"], tmp_path)
    proc = subprocess.run(["qemu-aarch64", str(program)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "neon, 16-byte vectors" in proc.stdout
