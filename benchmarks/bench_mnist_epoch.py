"""One MNIST-MLP training epoch (batch 128): K-AF output at the default m vs a sigmoid output.

Both networks are the appendix-B MLP of :mod:`kaf.experiments` (784 → 128 → ReLU → 10,
no biases), trained with the book's runner; the K-AF output uses the default calc-subset
size of the MNIST experiments (``dataset_defaults("mnist")["calc_size"]``, stratified).
Each output trains for ``--epochs`` epochs; the first is a warm-up and the reported time
is the median of the others (training only, evaluation excluded). Target: ratio ≤ 2.

Every K-AF step also pushes the m calc points through the body (forward and backward:
the thesis lets the gradient flow through the reference indices), so the cost of an
epoch grows like (batch + m) / batch; the script therefore also prints the ratio at the
smaller sizes ``--also`` (default 100 and 200), where the calc-size experiment shows the
same accuracy.

    python benchmarks/bench_mnist_epoch.py [--device cuda] [--calc-size M] [--also 100 200] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

from kaf.experiments import ExperimentConfig, prepare, run
from kaf.experiments.registry import dataset_defaults


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calc-size", type=int, default=None, help="m (default: the MNIST experiments' default)")
    parser.add_argument("--also", type=int, nargs="*", default=[100, 200], help="further calc sizes to time")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per output (first one is a warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        raise ValueError(f"--epochs must be >= 2 (one warm-up epoch plus at least one timed), got {args.epochs}")
    base = dict(dataset_defaults("mnist", "full"), batch_size=128, epochs=args.epochs, device=args.device,
                threads=args.threads, name="bench")
    if args.calc_size is not None:
        base["calc_size"] = args.calc_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare(ExperimentConfig(**base))
    times = {}
    for output, m in [("sigmoid", base["calc_size"]), ("kaf", base["calc_size"])] + [("kaf", m) for m in args.also]:
        table = run(ExperimentConfig(**{**base, "output": output, "calc_size": m}), prepared=prepared)
        times[output if output == "sigmoid" else m] = statistics.median(table.epoch_time.iloc[1:])
    times["kaf"] = times[base["calc_size"]]
    ratio = times["kaf"] / times["sigmoid"]
    print(f"data: {prepared.info.label()}")
    print(f"device: {args.device}, torch {torch.__version__}, threads {args.threads}, batch 128, "
          f"hidden {base['hidden_size']}, m = {base['calc_size']} calc points")
    print(f"sigmoid output: {times['sigmoid'] * 1000:.1f} ms per epoch")
    print(f"K-AF output:    {times['kaf'] * 1000:.1f} ms per epoch")
    print(f"ratio K-AF / sigmoid = {ratio:.2f}  (target <= 2: {'met' if ratio <= 2 else 'NOT met'})")
    for m in args.also:
        r = times[m] / times["sigmoid"]
        print(f"  at m = {m}: K-AF {times[m] * 1000:.1f} ms, ratio {r:.2f} ({'met' if r <= 2 else 'NOT met'})")
    return ratio


if __name__ == "__main__":
    main()
