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
from kaf.experiments.sweep import run_many
from kaf.experiments.train import prepare, run

__all__ = ["ExperimentConfig", "run", "run_many", "prepare", "results_dir", "repo_root"]


def repo_root() -> Path:
    """The root of the repository this package was imported from (the folder holding ``pyproject.toml``
    next to ``kaf/``).

    Only the package's own parent folder counts: a kaf installed into a virtual environment that
    happens to live inside some checkout is not that checkout's code.

    Raises:
        FileNotFoundError: kaf was imported from an installed copy, not from a checkout.
    """
    package = Path(__file__).resolve().parents[1]
    root = package.parent
    if (root / "pyproject.toml").is_file() and package.name == "kaf":
        return root
    raise FileNotFoundError(f"kaf was not imported from a repository checkout (no pyproject.toml next to {package})")


def results_dir() -> Path:
    """Where result tables live by default: ``<repository root>/results`` (the committed full-scale
    CSVs the book reads) when kaf runs from a checkout, else ``results/`` in the working directory."""
    try:
        return repo_root() / "results"
    except FileNotFoundError:
        return Path.cwd() / "results"
