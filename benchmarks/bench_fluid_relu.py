"""FluidReLU against torch.nn.PReLU: forward + backward time and peak memory, side by side.

Both activations get the same input of shape (64, 32, 28, 28) (a CNN feature map; one
learnable parameter per channel, 32 channels) and the same upstream gradient; one
measurement is ``out = act(x); out.backward(g)``. Time: the median over ``--repeats``
runs, the two activations measured alternately in the same loop so that drift of the
machine (other processes, clock boost) hits both alike.

Peak memory is the largest number of bytes held by the allocator above what was held
before the run (input, upstream gradient and parameters excluded), i.e. the output, the
saved tensors, the temporaries of forward and backward and the gradients:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the caching
  allocator's own count).
* CPU: every allocation and free made by PyTorch's CPU allocator during the run is
  recorded by ``torch.profiler`` (``profile_memory=True``); each record carries its
  signed size, and the running sum of the records in time order is the live-bytes curve
  whose maximum is the peak. This counts tensor storage exactly (no RSS noise from the
  interpreter, libraries or the OS) and sees temporaries that are freed inside an op.

Targets: FluidReLU / PReLU <= 1.0 in time (a drop-in replacement costs no more than
PReLU; the fused first-order backward is what is timed, the differentiable one used for
double backward and ``torch.func`` is not) and <= 1.5 in peak memory (measured: 1.000,
FluidReLU's per-channel temporaries are a few hundred bytes); the script prints PASS or
MISS for each and exits 0 either way (it is a measurement, not a test).

Usage::

    python benchmarks/bench_fluid_relu.py [--device cpu|cuda] [--repeats 30] [--variant exp|sigmoid] [--threads N] [--record PATH]

On a CPU shared with other busy processes the multi-threaded timings are unreliable
(each parallel op may wait a scheduler time slice for a descheduled worker thread, so
the activation made of more elementwise kernels -- FluidReLU -- is penalised by the
load, not by its work); the script warns when the load average exceeds the core count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import _record
from kaf.nn import FluidReLU

TARGETS = {"time": 1.0, "peak memory": 1.5}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(act: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    out = act(x)
    out.backward(g)


def time_once(act, x, g, device) -> float:
    x.grad = None
    act.zero_grad(set_to_none=True)
    _sync(device)
    t0 = time.perf_counter()
    step(act, x, g)
    _sync(device)
    return time.perf_counter() - t0


def peak_bytes(act, x, g, device) -> int:
    x.grad = None
    act.zero_grad(set_to_none=True)
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(act, x, g)
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(act, x, g)
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    if not records:
        raise RuntimeError("the profiler recorded no allocations; cannot measure CPU memory")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--variant", default="exp", choices=("exp", "sigmoid"))
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--shape", type=int, nargs=4, default=(64, 32, 28, 28), metavar=("N", "C", "H", "W"))
    _record.add_argument(parser)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(_record.header())

    torch.manual_seed(0)
    shape = tuple(args.shape)
    channels = shape[1]
    x = torch.randn(shape, device=device, requires_grad=True)
    g = torch.randn(shape, device=device)
    acts = {
        "PReLU": nn.PReLU(channels).to(device),
        "FluidReLU": FluidReLU(channels, grad_scale=1e4, variant=args.variant).to(device),
    }
    for act in acts.values():  # warm-up: lazy initialisation, kernel selection
        for _ in range(3):
            time_once(act, x, g, device)

    times = {name: [] for name in acts}
    for _ in range(args.repeats):
        for name, act in acts.items():
            times[name].append(time_once(act, x, g, device))
    med = {name: statistics.median(t) for name, t in times.items()}
    peak = {name: peak_bytes(act, x, g, device) for name, act in acts.items()}

    unit = x.numel() * x.element_size()
    print(f"device={device} shape={shape} variant={args.variant} repeats={args.repeats} threads={torch.get_num_threads()}")
    load = os.getloadavg()[0]
    if device.type == "cpu" and load > os.cpu_count():
        print(
            f"WARNING: load average {load:.1f} > {os.cpu_count()} cores: other processes compete for the CPU; "
            "multi-threaded ops then wait for descheduled threads, which penalises the activation with more "
            "(smaller) kernels. Re-run on a quiet machine or with --threads 1."
        )
    print(f"one activation tensor = {unit / 2**20:.2f} MiB")
    for name in acts:
        q1, q3 = statistics.quantiles(times[name], n=4)[0::2] if len(times[name]) > 1 else (med[name], med[name])
        print(
            f"{name:>10}: median {1e3 * med[name]:8.3f} ms (IQR {1e3 * q1:.3f}-{1e3 * q3:.3f})   "
            f"peak {peak[name] / 2**20:7.2f} MiB ({peak[name] / unit:.2f} tensors)"
        )
    t_ratio = med["FluidReLU"] / med["PReLU"]
    m_ratio = peak["FluidReLU"] / peak["PReLU"]
    for what, r in (("time", t_ratio), ("peak memory", m_ratio)):
        target = TARGETS[what]
        print(f"FluidReLU/PReLU {what} ratio: {r:.3f}  (target <= {target})  {'PASS' if r <= target else 'MISS'}")
    _record.write(args.record, "bench_fluid_relu", {
        "device": str(device), "shape": list(shape), "variant": args.variant, "repeats": args.repeats,
        "median_ms": {name: 1e3 * v for name, v in med.items()}, "peak_bytes": peak,
        "ratio_time": t_ratio, "ratio_peak_memory": m_ratio, "targets": TARGETS})


if __name__ == "__main__":
    main()
