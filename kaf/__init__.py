"""kaf: kernel activation functions (K-AF) and FluidReLU for PyTorch.

``import kaf`` needs only torch and numpy: the modules (:mod:`kaf.nn`), the functions
behind them (:mod:`kaf.functional`) and the estimators (:mod:`kaf.estimators`).
:mod:`kaf.data`, :mod:`kaf.experiments` and :mod:`kaf.viz` need the extras
``kaf[sweeps]`` and ``kaf[viz]``.
"""

from kaf import functional
from kaf.estimators import ichimura, kaf_tron, klein_spady, loo_cv_bandwidth, nadaraya_watson
from kaf.nn import (
    ACTIVATIONS,
    FluidReLU,
    KernelActivation,
    KernelOutput,
    make_activation,
    param_groups,
    select_calc,
)
from kaf.scale import get_scale

# the one place the version is written (pyproject.toml reads it from here)
__version__ = "0.1.0"

__all__ = [
    "get_scale",
    "__version__",
    "functional",
    "ACTIVATIONS",
    "FluidReLU",
    "KernelActivation",
    "KernelOutput",
    "make_activation",
    "param_groups",
    "select_calc",
    "nadaraya_watson",
    "ichimura",
    "kaf_tron",
    "loo_cv_bandwidth",
    "klein_spady",
]
