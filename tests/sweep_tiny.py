"""Tiny experiments for tests/test_sweeps.py.

Their ``post`` functions live at module level so that worker processes (local or Dask)
can import them: the tests put this folder on the workers' ``sys.path``.
"""

import multiprocessing
import os
import time
from pathlib import Path

import pandas as pd

from kaf.experiments import ExperimentConfig, registry
from kaf.experiments.registry import Experiment


def in_worker() -> bool:
    """True in a process started by multiprocessing (a local or Dask worker), False in the sweep's own."""
    return multiprocessing.parent_process() is not None


def tiny_configs(scale):
    # wine runs are twice as long and come last: the longest-first order differs from this one
    return [ExperimentConfig(name="tiny", dataset=ds, output=o, epochs=ep, seed=s, hidden_size=8, batch_size=32)
            for ds, ep in (("iris", 2), ("wine", 4)) for o in ("kaf", "sigmoid") for s in (0, 1)]


def tiny_post(config, table, net, prep):
    """An extra table from the trained model (like link_shape's fit): the norm of each weight."""
    norms = [float(p.detach().norm()) for p in net.body.parameters()]
    return {"weights": pd.DataFrame(dict(dataset=config.dataset, output=config.output, seed=config.seed,
                                         layer=range(len(norms)), norm=norms))}


def slow_configs(scale):
    return [ExperimentConfig(name="tiny_slow", dataset="iris", output="sigmoid", epochs=1, seed=s, hidden_size=4)
            for s in range(10)]


def slow_post(config, table, net, prep):
    time.sleep(0.3)  # long enough to kill the sweep between two runs
    return {}


def crash_post(config, table, net, prep):
    """Test-only hook: end the worker process hard (as a segfault or the OOM killer would).

    tags ``("crash",)``: every time; ``("crash-once", path)``: only while ``path`` does not exist.
    Never in the sweep's own process (serial runs).
    """
    if in_worker() and "crash" in config.tags:
        os._exit(3)
    if in_worker() and "crash-once" in config.tags:
        marker = Path(config.tags[1])
        if not marker.exists():
            marker.touch()
            os._exit(3)
    return {}


TINY = Experiment("tiny", "tiny sweep with an extra table", "tests", configs=tiny_configs, post=tiny_post)
TINY_GRID = Experiment("tiny_grid", "a compute step (no training)", "tests", compute=registry.vanishing_grid)
TINY_SLOW = Experiment("tiny_slow", "ten short runs that take a while", "tests", configs=slow_configs, post=slow_post)


def register() -> None:
    """Add the tiny experiments to the registry (for a separate process running the CLI)."""
    for exp in (TINY, TINY_GRID, TINY_SLOW):
        registry.EXPERIMENTS[exp.name] = exp
