"""KernelOutput against the thesis's appendix-B loop, and the estimator against one softmax.

Part 1 -- the thesis's ``Net`` (appendix B), written as faithfully as the source allows:
``fc1`` (no bias) -> ReLU -> ``fc2`` (no bias) gives the batch's indices ``Zw``; the
kernel estimator then loops over the calc points ``j`` in Python, recomputing
``fc2(relu(fc1(x_j)))`` for each, weighting with the Gaussian density
``exp(-u^2/2)/sqrt(2 pi)`` of ``(Xw - Zw)/h``, zeroing ``tmp[j]`` (leave-one-out: the
batch is the training set in order, so row ``j`` of the batch is calc point ``j``) and
accumulating numerator and denominator. ``h`` is a parameter initialised to 1.5.
:class:`kaf.nn.KernelOutput` gets the same two weight matrices and bandwidth, the calc set
equal to the batch (``n = m``) and ``ids = calc_ids = arange(n)``, the same leave-one-out.
One measurement is forward + backward of ``mean((out - Y)^2)``. Both are checked against
the thesis loop run in float64: outputs to 1e-5, gradients of ``fc1``, ``fc2`` and ``h``
to a relative 1e-5. Target: KernelOutput at least 100x faster than the loop.

Part 2 -- :func:`kaf.estimators.nadaraya_watson` forward + backward against one
``torch.softmax`` over a tensor of the same n*m*k entries (the least any estimator that
forms its weights must do), in two regimes: n = m = 1000, k = 3 (the thesis's scale, a
calc set with leave-one-out), and n = m = 128, k = 10 (a training step with the batch as
its own reference set). Target: at most 3x the softmax at n = m = 1000. On the CPU the
estimator runs in its fused kernel (``kaf/_nw_cpu.cpp``); its torch-operations path
(``KAF_NW_BACKEND=eager``, the path on CUDA) is timed beside it, so the gain of the kernel
is a ratio from the same run. ``KAF_NW_BACKEND=eager python benchmarks/bench_kaf_output.py``
measures everything on the eager path.

The two sides of each ratio are timed alternately in one loop (median of ``--repeats``
rounds, each the mean of ``--inner`` calls), so drift hits both.

Usage::

    python benchmarks/bench_kaf_output.py [--device cpu|cuda] [--repeats 7] [--inner 10] [--n 1000] [--threads N]
        [--clock wall|cpu] [--record PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import _record
from kaf import _fused
from kaf.estimators import nadaraya_watson
from kaf.nn import KernelOutput

TARGET_LOOP = 100.0
TARGET_SOFTMAX = 3.0
TOL = 1e-5
D_IN, D_MID, D_OUT = 4, 16, 3


def gauss(u):
    return torch.exp(-(u**2) / 2) / math.sqrt(2 * math.pi)


class ThesisNet(nn.Module):
    """Appendix B's ``Net``: a Python loop over the calc points (the slow baseline)."""

    def __init__(self, Y, X):
        super().__init__()
        self.fc1 = nn.Linear(D_IN, D_MID, bias=False)
        self.fc2 = nn.Linear(D_MID, D_OUT, bias=False)
        self.Y = Y
        self.train_X = X
        self.h = nn.Parameter(torch.tensor(1.5, requires_grad=True))

    def kernel(self, Zw):
        numerator = 0
        denominator = 0
        for j, x_j in enumerate(self.train_X):
            Xw = self.fc2(F.relu(self.fc1(x_j)))
            tmp = gauss((Xw - Zw) / self.h)
            tmp[j] = 0
            denominator += tmp
            numerator += tmp * self.Y[j]
        g = numerator / denominator
        return g

    def forward(self, x):
        xw = F.relu(self.fc1(x))
        xw = self.fc2(xw)
        y = self.kernel(xw)
        return y


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: the clock: wall time (default), or this process's CPU time (``--clock cpu``: steadier on a
#: busy machine with ``--threads 1``, where wall time also counts the time other processes run)
CLOCK = time.perf_counter


def _timed(fn, device):
    _sync(device)
    t0 = CLOCK()
    fn()
    _sync(device)
    return CLOCK() - t0


def run(model, X, Y, ids):
    """One forward + backward; returns the output."""
    model.zero_grad(set_to_none=True)
    out = model(X) if ids is None else model(X, ids=ids)
    F.mse_loss(out, Y).backward()
    return out.detach()


def side_by_side(a, b, device, repeats, inner_a, inner_b):
    """Median seconds of ``a`` and ``b``, timed alternately (each round: the mean of its inner calls)."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(sum(_timed(a, device) for _ in range(inner_a)) / inner_a)
        tb.append(sum(_timed(b, device) for _ in range(inner_b)) / inner_b)
    return statistics.median(ta), statistics.median(tb)


def machine(device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _record.machine()
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def thesis_vs_kaf(n, device, repeats, inner):
    torch.manual_seed(0)
    X = torch.randn(n, D_IN, device=device)
    labels = (X[:, 0] > 0.5).long() + (X[:, 1] > 0).long()  # three classes from a rule
    Y = F.one_hot(labels, D_OUT).float()
    reference = ThesisNet(Y, X).to(device)
    body = nn.Sequential(nn.Linear(D_IN, D_MID, bias=False), nn.ReLU(), nn.Linear(D_MID, D_OUT, bias=False))
    body.load_state_dict({"0.weight": reference.fc1.weight.detach(), "2.weight": reference.fc2.weight.detach()})
    ids = torch.arange(n, device=device)
    fast = KernelOutput(body, X, Y, bandwidth=1.5, calc_ids=ids).to(device)

    # correctness: the float32 KernelOutput against the thesis loop in float64
    exact = ThesisNet(Y.double(), X.double()).to(device).double()
    exact.load_state_dict(reference.state_dict())
    out64 = run(exact, X.double(), Y.double(), None)
    out32 = run(fast, X, Y, ids)
    max_out = (out32.double() - out64).abs().max().item()
    h = fast.activation.bandwidth.detach()
    pairs = [
        ("fc1", exact.fc1.weight.grad, body[0].weight.grad),
        ("fc2", exact.fc2.weight.grad, body[2].weight.grad),
        ("h", exact.h.grad, fast.activation.log_bandwidth.grad / h),  # d/d(log h) = h d/dh
    ]
    ok = max_out <= TOL
    print(f"[1] KernelOutput vs the thesis's loop, n = m = {n}, k = {D_OUT}")
    print(f"    max |out - out_float64| = {max_out:.2e}  (tolerance {TOL:g})  {'OK' if max_out <= TOL else 'DIFFERENT'}")
    for name, a, b in pairs:
        rel = ((a - b.double()).norm() / a.norm().clamp_min(1e-30)).item()
        ok &= rel <= TOL
        print(f"    grad {name:>3}: relative difference to float64 {rel:.2e}  (tolerance {TOL:g})  "
              f"{'OK' if rel <= TOL else 'DIFFERENT'}")

    # warm both, then time them alternately; the fast model is the mean of `inner` consecutive
    # calls per round (a single few-millisecond call right after the 100+ ms loop mostly
    # measures the caches that loop left cold)
    run(reference, X, Y, None)
    run(fast, X, Y, ids)
    t_ref, t_fast = side_by_side(lambda: run(reference, X, Y, None), lambda: run(fast, X, Y, ids), device,
                                 repeats, 1, inner)
    ratio = t_ref / t_fast
    print(f"    thesis loop  : {1e3 * t_ref:9.2f} ms")
    print(f"    KernelOutput : {1e3 * t_fast:9.2f} ms")
    verdict = "PASS" if ratio >= TARGET_LOOP and ok else "MISS"
    print(f"    speed-up loop/KernelOutput = {ratio:.0f}x  (target >= {TARGET_LOOP:g}x with equal outputs and "
          f"gradients)  {verdict}")
    return ratio, ok


def estimator_vs_softmax(n, m, k, same, device, repeats, inner):
    """Median seconds of the estimator (the path nadaraya_watson takes here), of its eager
    torch-operations path (``KAF_NW_BACKEND=eager``), and of the softmax, timed in turn."""
    g = torch.Generator(device="cpu").manual_seed(1)
    z = torch.randn(n, k, generator=g).to(device).requires_grad_(True)
    z_ref = z if same else torch.randn(m, k, generator=g).to(device).requires_grad_(True)
    y_ref = torch.rand(m, k, generator=g).to(device)
    h = torch.tensor(1.5, device=device, requires_grad=True)
    ids = torch.arange(n, device=device)
    ref_ids = ids if same else torch.arange(m, device=device)
    logits = torch.randn(k, n, m, generator=g).to(device)

    def estimator():
        out = nadaraya_watson(z, z_ref, y_ref, h, query_ids=ids, ref_ids=ref_ids)
        out.backward(torch.ones_like(out))

    def eager():
        with backend("eager"):
            estimator()

    def softmax():
        torch.softmax(logits, dim=-1)

    for _ in range(3):
        estimator()
        eager()
        softmax()
    t_nw, t_eager = side_by_side(estimator, eager, device, repeats, inner, inner)
    t_nw2, t_sm = side_by_side(estimator, softmax, device, repeats, inner, inner)
    return min(t_nw, t_nw2), t_eager, t_sm


@contextlib.contextmanager
def backend(name):
    """``KAF_NW_BACKEND`` set to ``name`` inside the block."""
    old = os.environ.get("KAF_NW_BACKEND")
    os.environ["KAF_NW_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["KAF_NW_BACKEND"]
        else:
            os.environ["KAF_NW_BACKEND"] = old


def estimator_path(device) -> str:
    probe = torch.zeros(1, 1, device=device)
    if _fused.applies(probe):
        return "the fused CPU kernel (kaf/_nw_cpu.cpp)"
    return "torch operations (the eager path)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=10, help="calls averaged per round on the fast side")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--n", type=int, default=1000, help="training points = calc points (n = m)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or process CPU time (for a busy machine, with --threads 1)")
    _record.add_argument(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.inner < 1 or args.n < 2:
        parser.error("--repeats and --inner must be >= 1 and --n >= 2")
    device = torch.device(args.device)
    if args.clock == "cpu":
        if device.type == "cuda":
            parser.error("--clock cpu measures CPU time; use the wall clock on CUDA")
        global CLOCK
        CLOCK = time.process_time
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(_record.header())
    print(f"device {device}: {machine(device)}; torch {torch.__version__}; {args.clock} clock")
    if device.type == "cpu" and os.getloadavg()[0] > os.cpu_count():
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} > {os.cpu_count()} cores: timings are noisy")

    ratio_loop, equal = thesis_vs_kaf(args.n, device, args.repeats, args.inner)
    results = {"clock": args.clock, "loop_over_kernel_output": ratio_loop, "equal_to_float64": equal,
               "target_loop": TARGET_LOOP, "target_softmax": TARGET_SOFTMAX}

    print(f"[2] nadaraya_watson forward + backward vs one softmax over n*m*k entries; the estimator runs in "
          f"{estimator_path(device)}, 'eager' is its torch-operations path")
    for n, k, same, label in ((args.n, 3, False, "calc set, leave-one-out"),
                              (128, 10, True, "training step, the batch as its own reference set")):
        t_nw, t_eager, t_sm = estimator_vs_softmax(n, n, k, same, device, args.repeats, args.inner)
        ratio = t_nw / t_sm
        target = f"(target <= {TARGET_SOFTMAX:g}: {'PASS' if ratio <= TARGET_SOFTMAX else 'MISS'})" if n == args.n else ""
        results[f"n{n}_k{k}"] = {"estimator_ms": 1e3 * t_nw, "eager_ms": 1e3 * t_eager, "softmax_ms": 1e3 * t_sm,
                                 "estimator_over_softmax": ratio, "eager_over_estimator": t_eager / t_nw}
        print(f"    n = m = {n:4d}, k = {k:2d} ({label}):")
        print(f"        estimator {1e3 * t_nw:7.3f} ms, eager {1e3 * t_eager:7.3f} ms ({t_eager / t_nw:4.2f}x the "
              f"estimator), softmax {1e3 * t_sm:7.3f} ms; estimator / softmax = {ratio:4.2f} {target}")
    _record.write(args.record, "bench_kaf_output", results)


if __name__ == "__main__":
    main()
