"""KernelOutput against the thesis's appendix-B reference loop: same weights, same answer, time ratio.

The reference is the thesis's ``Net`` (appendix B), written as faithfully as the source
allows: ``fc1`` (no bias) -> ReLU -> ``fc2`` (no bias) gives the batch's indices ``Zw``;
the kernel estimator then loops over the calc points ``j`` in Python, recomputing
``fc2(relu(fc1(x_j)))`` for each, weighting with the Gaussian density
``exp(-u^2/2)/sqrt(2 pi)`` of ``(Xw - Zw)/h``, zeroing ``tmp[j]`` (leave-one-out: the
batch is the training set in order, so row ``j`` of the batch is calc point ``j``) and
accumulating numerator and denominator. ``h`` is a parameter initialised to 1.5.

:class:`kaf.nn.KernelOutput` gets the same two weight matrices and bandwidth, the calc
set equal to the batch (``n = m``) and ``ids = calc_ids = arange(n)``, which is the same
leave-one-out. One measurement is forward + backward of the loss
``mean((out - Y)^2)``. The script checks that the outputs agree to 1e-5 and the
gradients of ``fc1``, ``fc2`` and ``h`` agree (relative 1e-3), then times both
alternately in the same loop and prints the median time of each and their ratio
(target: KernelOutput at least 100x faster; PASS/MISS).

Usage::

    python benchmarks/bench_kaf_output.py [--device cpu|cuda] [--repeats 5] [--inner 10] [--n 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from kaf.nn import KernelOutput

TARGET = 100.0
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


def run(model, X, Y, ids, device):
    """One forward + backward; returns (output, seconds)."""
    model.zero_grad(set_to_none=True)
    _sync(device)
    t0 = time.perf_counter()
    out = model(X) if ids is None else model(X, ids=ids)
    F.mse_loss(out, Y).backward()
    _sync(device)
    return out.detach(), time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=10, help="KernelOutput calls averaged per repeat")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--n", type=int, default=1000, help="training points = calc points (n = m)")
    args = parser.parse_args()
    if args.repeats < 1 or args.inner < 1 or args.n < 2:
        parser.error("--repeats and --inner must be >= 1 and --n >= 2")
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    n = args.n
    X = torch.randn(n, D_IN, device=device)
    labels = (X[:, 0] > 0.5).long() + (X[:, 1] > 0).long()  # three classes from a rule
    Y = F.one_hot(labels, D_OUT).float()

    reference = ThesisNet(Y, X).to(device)
    body = nn.Sequential(nn.Linear(D_IN, D_MID, bias=False), nn.ReLU(), nn.Linear(D_MID, D_OUT, bias=False))
    body.load_state_dict({"0.weight": reference.fc1.weight.detach(), "2.weight": reference.fc2.weight.detach()})
    ids = torch.arange(n, device=device)
    fast = KernelOutput(body, X, Y, bandwidth=1.5, calc_ids=ids).to(device)

    # correctness: same outputs and gradients
    out_ref, _ = run(reference, X, Y, None, device)
    out_fast, _ = run(fast, X, Y, ids, device)
    max_out = (out_ref - out_fast).abs().max().item()
    h = fast.activation.bandwidth.detach()
    pairs = [
        ("fc1", reference.fc1.weight.grad, body[0].weight.grad),
        ("fc2", reference.fc2.weight.grad, body[2].weight.grad),
        # d/d(log h) = h * d/dh
        ("h", reference.h.grad, fast.activation.log_bandwidth.grad / h),
    ]
    print(f"device={device} n=m={n} k={D_OUT} d_in={D_IN} mid={D_MID} repeats={args.repeats} threads={torch.get_num_threads()}")
    if device.type == "cpu" and os.getloadavg()[0] > os.cpu_count():
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} > {os.cpu_count()} cores: timings are noisy")
    print(f"max |out_ref - out_kaf| = {max_out:.2e}  (tolerance 1e-5)  {'OK' if max_out <= 1e-5 else 'DIFFERENT'}")
    grads_ok = True
    for name, a, b in pairs:
        rel = ((a - b).norm() / a.norm().clamp_min(1e-30)).item()
        ok = rel <= 1e-3
        grads_ok &= ok
        print(f"grad {name:>3}: relative difference {rel:.2e}  (tolerance 1e-3)  {'OK' if ok else 'DIFFERENT'}")

    # Alternate the two so drift hits both; within a repeat the fast model is timed as the
    # mean of `inner` consecutive calls (timeit-style): a single few-millisecond call right
    # after the 100+ ms reference loop mostly measures the caches that loop left cold.
    t_ref, t_fast = [], []
    for _ in range(args.repeats):
        t_ref.append(run(reference, X, Y, None, device)[1])
        t_fast.append(sum(run(fast, X, Y, ids, device)[1] for _ in range(args.inner)) / args.inner)
    m_ref, m_fast = statistics.median(t_ref), statistics.median(t_fast)
    ratio = m_ref / m_fast
    print(f"reference loop : median {1e3 * m_ref:10.2f} ms  (runs: {', '.join(f'{1e3 * t:.1f}' for t in t_ref)})")
    print(f"KernelOutput   : median {1e3 * m_fast:10.2f} ms  (runs: {', '.join(f'{1e3 * t:.2f}' for t in t_fast)})")
    verdict = "PASS" if ratio >= TARGET and max_out <= 1e-5 and grads_ok else "MISS"
    print(f"speed-up reference/KernelOutput: {ratio:.1f}x  (target >= {TARGET:g}x, with equal outputs and gradients)  {verdict}")


if __name__ == "__main__":
    main()
