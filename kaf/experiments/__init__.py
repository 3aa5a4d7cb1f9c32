"""Experiments: config → training run → tidy table → CSV, plus the registry of the book's experiments.

Usage from Python::

    >>> from kaf.experiments import ExperimentConfig, run
    >>> table = run(ExperimentConfig(dataset="iris", output="kaf", epochs=2))
    >>> list(table.epoch)
    [1, 2]

From the shell: ``python -m kaf.experiments run <name> [--scale quick|full]`` and
``python -m kaf.experiments reproduce`` (see :mod:`kaf.experiments.__main__`).
"""

from pathlib import Path

from kaf.experiments.config import ExperimentConfig
from kaf.experiments.train import prepare, run, run_many

__all__ = ["ExperimentConfig", "run", "run_many", "prepare", "results_dir", "repo_root"]


def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml`` above this package)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "kaf").is_dir():
            return parent
    raise FileNotFoundError(f"no repository root (pyproject.toml next to kaf/) above {here}")


def results_dir() -> Path:
    """``<repository root>/results``, where the committed full-scale CSVs live."""
    return repo_root() / "results"
