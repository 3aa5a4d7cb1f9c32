"""MNIST-MLP training epochs (batch 128): K-AF output with the batch as its reference set vs a sigmoid output.

All networks are the appendix-B MLP of :mod:`kaf.experiments` (784 → 128 → ReLU → 10, no
biases), trained with the book's runner on the MNIST experiments' settings (Adam,
lr 0.005, batch 128). Three outputs, trained side by side for each seed:

* a sigmoid output (the reference for time);
* K-AF with the fixed calc set of the MNIST experiments (``reference="calc"``, the
  default m, stratified): every step also pushes the m calc points through the body;
* K-AF with each batch as its own reference set (``reference="batch"``): no extra pass
  through the body; evaluation uses the same calc set.

The time of an output is the median epoch time (training only, evaluation excluded; the
first epoch is a warm-up and left out), its median over ``--seeds`` (each seed trains the
three outputs in a rotated order), the accuracy its final test accuracy averaged over the
seeds. Target: the batch reference costs at most 1.5x the sigmoid
epoch at the calc set's accuracy (not more than 0.01 below it).

    python benchmarks/bench_mnist_epoch.py [--device cuda] [--epochs 10] [--seeds 3] [--calc-size M] [--threads T]
        [--record PATH]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

import _record
from kaf.experiments import ExperimentConfig, prepare, run
from kaf.experiments.registry import dataset_defaults

TARGET = 1.5
ACC_TOL = 0.01


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calc-size", type=int, default=None, help="m (default: the MNIST experiments' default)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (the first one is a warm-up)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, each trains all three outputs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    _record.add_argument(parser)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (one warm-up epoch plus at least one timed), got {args.epochs}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)  # before the header, which states the thread count
    print(_record.header(), flush=True)
    base = dict(dataset_defaults("mnist", "full"), batch_size=128, epochs=args.epochs, device=args.device,
                threads=args.threads, name="bench")
    if args.calc_size is not None:
        base["calc_size"] = args.calc_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare(ExperimentConfig(**base))
    arms = {"sigmoid": dict(output="sigmoid"), "calc": dict(output="kaf"), "batch": dict(output="kaf", reference="batch")}
    times = {a: [] for a in arms}
    accs = {a: [] for a in arms}
    names = list(arms)
    for seed in range(args.seeds):
        # each seed starts with another output, so a slow phase of the machine does not always hit the same one
        for arm in names[seed % 3:] + names[:seed % 3]:
            kw = arms[arm]
            table = run(ExperimentConfig(**{**base, **kw, "seed": seed}), prepared=prepared)
            times[arm].append(statistics.median(table.epoch_time.iloc[1:]))
            accs[arm].append(float(table.test_metric.iloc[-1]))
    t = {a: statistics.median(v) for a, v in times.items()}
    acc = {a: statistics.mean(v) for a, v in accs.items()}
    ratio = t["batch"] / t["sigmoid"]
    gap = acc["batch"] - acc["calc"]
    m = base["calc_size"]
    print(f"data: {prepared.info.label()}")
    print(f"device: {args.device}, torch {torch.__version__}, threads {args.threads}, batch 128, hidden "
          f"{base['hidden_size']}, {args.epochs} epochs, {args.seeds} seeds")
    print(f"{'output':32s} {'ms / epoch':>10s} {'vs sigmoid':>11s} {'test accuracy':>14s}")
    for arm, label in (("sigmoid", "sigmoid"), ("calc", f"K-AF, fixed calc set m = {m}"),
                       ("batch", "K-AF, the batch as reference")):
        print(f"{label:32s} {1e3 * t[arm]:10.1f} {t[arm] / t['sigmoid']:10.2f}x {acc[arm]:14.4f}")
    met = ratio <= TARGET and gap >= -ACC_TOL
    print(f"batch reference / sigmoid epoch = {ratio:.2f} (target <= {TARGET:g}); accuracy batch - calc set = "
          f"{gap:+.4f} (at least -{ACC_TOL:g}): {'met' if met else 'NOT met'}")
    _record.write(args.record, "bench_mnist_epoch", {
        "ratio_batch_to_sigmoid": ratio, "ratio_calc_to_sigmoid": t["calc"] / t["sigmoid"], "accuracy": acc,
        "seeds": args.seeds, "epochs": args.epochs, "target": TARGET, "calc_size": m,
        "ms_per_epoch": {a: 1e3 * v for a, v in t.items()}, "met": met})
    return dict(ratio=ratio, gap=gap, times=t, accuracy=acc)


if __name__ == "__main__":
    main()
