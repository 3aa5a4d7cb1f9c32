"""Nadaraya–Watson with m = 60,000 reference points (Ichimura's full MNIST sample size).

Measures, in one run, forward+backward time and peak resident memory of
:func:`kaf.estimators.nadaraya_watson` with a chunked query loop, against the memory an
unchunked evaluation would need (n·m·k floats for the weights alone). Each
configuration runs in a fresh subprocess, and its peak memory is the growth of the
process's maximum resident set size (``ru_maxrss``) over the baseline measured after
the inputs were created: that is what the operating system had to provide, allocator
overheads included.

On the CPU it runs twice: on the path ``nadaraya_watson`` takes there (the fused kernel,
whose memory is O((n + m) k) without chunks) and on its torch-operations path with
``chunk_size`` (``KAF_NW_BACKEND=eager``, the path on CUDA).

Target: peak < 2 GiB at m = 60,000, k = 10.

    python benchmarks/bench_nw_chunked.py [--n 2000] [--m 60000] [--k 10] [--chunk 128] [--device cpu] [--record PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

GIB = 2**30


def child(args) -> dict:
    import resource
    import time

    import torch

    from kaf.estimators import nadaraya_watson

    torch.manual_seed(0)
    dev = torch.device(args.device)
    z = torch.randn(args.n, args.k, device=dev, requires_grad=True)
    z_ref = torch.randn(args.m, args.k, device=dev, requires_grad=True)
    y_ref = torch.rand(args.m, args.k, device=dev)
    ids = torch.arange(args.n, device=dev)
    ref_ids = torch.arange(args.m, device=dev)
    h = torch.tensor(1.5, device=dev, requires_grad=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = nadaraya_watson(z, z_ref, y_ref, h, query_ids=ids, ref_ids=ref_ids, chunk_size=args.chunk)
    out.sum().backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    from kaf import _fused

    path = "fused CPU kernel" if _fused.applies(z.detach()) else "torch operations"
    return {"seconds": wall, "peak_bytes": peak, "path": path,
            "finite": bool(torch.isfinite(out).all() and torch.isfinite(z_ref.grad).all())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="queries (a large batch)")
    p.add_argument("--m", type=int, default=60_000, help="reference (calc) points")
    p.add_argument("--k", type=int, default=10, help="output units")
    p.add_argument("--chunk", type=int, default=128, help="queries per chunk")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--record", default=None, metavar="PATH", help="also write the results as a JSON record to PATH")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    import _record  # the parent only: the children measure their memory from a clean start

    print(_record.header())
    cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--m", str(args.m), "--k", str(args.k),
           "--chunk", str(args.chunk), "--device", args.device]
    # on the CPU: the path nadaraya_watson takes (the fused kernel, which needs no chunks), and
    # its torch-operations path with chunk_size, each in a fresh process
    paths = [("default", None)] + ([("eager, chunked", "eager")] if args.device == "cpu" else [])
    unchunked = args.n * args.m * args.k * 4
    print(f"nadaraya_watson forward+backward, n={args.n} queries, m={args.m} references, k={args.k}, "
          f"chunk_size={args.chunk}, device={args.device}")
    print(f"weights alone, unchunked: {unchunked / GIB:.3f} GiB")
    ok = True
    results = {"n": args.n, "m": args.m, "k": args.k, "chunk": args.chunk, "unchunked_weights_bytes": unchunked,
               "target_peak_bytes": 2 * GIB, "paths": {}}
    for label, backend in paths:
        env = dict(os.environ)
        if backend is not None:
            env["KAF_NW_BACKEND"] = backend
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        print(f"  {label:15s} ({res['path']}): {res['seconds']:6.2f} s ({res['seconds'] / args.n * 1e3:.2f} ms per "
              f"query), peak {res['peak_bytes'] / GIB:.3f} GiB ({unchunked / max(res['peak_bytes'], 1):.0f}x below "
              f"the unchunked weights), outputs and gradients finite: {res['finite']}")
        ok &= res["peak_bytes"] < 2 * GIB and res["finite"]
        results["paths"][label] = res
    print(f"target peak < 2 GiB on every path: {'PASS' if ok else 'MISS'}")
    results["met"] = bool(ok)
    _record.write(args.record, "bench_nw_chunked", results)

if __name__ == "__main__":
    main()
