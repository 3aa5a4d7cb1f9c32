"""What the torch operator costs over a direct ctypes call of the fused estimator kernel.

:func:`kaf.estimators.nadaraya_watson` reaches the fused CPU kernel through the torch
operators ``kaf::nw_forward`` / ``kaf::nw_backward`` (:mod:`kaf._fused`), so that
torch.compile and torch.export see it. This script measures, in one run, what that route
costs over the route it replaced, an ``autograd.Function`` that calls the ctypes wrappers
:func:`kaf._fused.forward` / :func:`kaf._fused.backward` itself. Both get the same
prepared (k, n)-layout inputs and make the same kernel calls; the bare kernel calls (no
autograd) are timed alongside, so each route's overhead is its time minus theirs.

One thread, CPU time of this thread (``time.thread_time_ns``), the routes interleaved
round by round; medians over rounds, and the 10th-90th percentile range over rounds of the
paired difference operator - ctypes.

    python benchmarks/bench_nw_dispatch.py [--n 128] [--m 128] [--k 10] [--rounds 40] [--calls 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kaf import _fused


class _CtypesRoute(torch.autograd.Function):
    """The route before the operator: ctypes calls straight from an autograd.Function."""

    @staticmethod
    def forward(ctx, a, b, y, h, query_ids, ref_ids, same, need_ab):
        leave_out = _fused.excluded(query_ids, ref_ids)
        status, _, out, oc, lnorm, dmean, ycen = _fused.forward(a, b, y, h, leave_out, same, need_ab)
        assert status == 0
        ctx.leave_out = leave_out
        ctx.save_for_backward(a, b, h, oc, lnorm, dmean, ycen)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, h, oc, lnorm, dmean, ycen = ctx.saved_tensors
        grads = _fused.backward(a, b, ycen, h, ctx.leave_out, oc, lnorm, dmean, g.contiguous(),
                                ctx.needs_input_grad[:4])
        return grads + (None,) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=50, help="calls per route per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _fused.library()

    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.k, args.n, generator=g)
    same = args.n == args.m  # the batch as its own reference set, as in a training step
    b = a if same else torch.randn(args.k, args.m, generator=g)
    y = torch.rand(args.k, args.m, generator=g)
    h = torch.full((args.k,), 0.5)
    qid = torch.arange(args.n)
    rid = qid if same else torch.arange(args.m) + args.n // 2
    leaves = [t.clone().requires_grad_() for t in (a, y, h)]
    al, yl, hl = leaves
    bl = al if same else b.clone().requires_grad_()
    up = torch.ones(args.k, args.n)

    def bare():
        leave_out = _fused.excluded(qid, rid)
        _, _, out, oc, lnorm, dmean, ycen = _fused.forward(a, b, y, h, leave_out, same, True)
        _fused.backward(a, b, ycen, h, leave_out, oc, lnorm, dmean, up, (True, not same, True, True))

    def ctypes_route():
        _CtypesRoute.apply(al, bl, yl, hl, qid, rid, same, True).backward(up)

    def operator_route():
        _fused.nw_forward(al, bl, yl, hl, qid, rid, same, True)[0].backward(up)

    def ctypes_forward():
        with torch.no_grad():
            _CtypesRoute.apply(a, b, y, h, qid, rid, same, False)

    def operator_forward():
        with torch.no_grad():
            _fused.nw_forward(a, b, y, h, qid, rid, same, False)

    routes = {"bare kernel calls (fwd+bwd)": bare, "ctypes route (fwd+bwd)": ctypes_route,
              "operator route (fwd+bwd)": operator_route, "ctypes route (fwd, no_grad)": ctypes_forward,
              "operator route (fwd, no_grad)": operator_forward}
    for fn in routes.values():  # warm-up: allocator, dispatcher caches
        for _ in range(args.calls):
            fn()
    times = {name: [] for name in routes}
    for r in range(args.rounds):
        names = list(routes) if r % 2 == 0 else list(reversed(routes))
        for name in names:
            t0 = time.thread_time_ns()
            for _ in range(args.calls):
                routes[name]()
            times[name].append((time.thread_time_ns() - t0) / args.calls / 1e3)
        for leaf in (al, bl, yl, hl):
            leaf.grad = None

    print(f"n = {args.n}, m = {args.m}, k = {args.k}, float32, leave-one-out ids, one thread, "
          f"CPU time per call, median of {args.rounds} rounds x {args.calls} calls")
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, v in med.items():
        print(f"  {name:32s} {v:9.1f} us")
    for what, op, ct in (("fwd+bwd", "operator route (fwd+bwd)", "ctypes route (fwd+bwd)"),
                         ("fwd, no_grad", "operator route (fwd, no_grad)", "ctypes route (fwd, no_grad)")):
        diff = sorted(o - c for o, c in zip(times[op], times[ct]))
        lo, hi = diff[len(diff) // 10], diff[(9 * len(diff)) // 10]
        print(f"  operator - ctypes, {what:13s} median {statistics.median(diff):+7.1f} us "
              f"(10-90%: {lo:+.1f} .. {hi:+.1f}), ratio {med[op] / med[ct]:.3f}")


if __name__ == "__main__":
    main()
