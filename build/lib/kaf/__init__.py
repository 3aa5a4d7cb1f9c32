"""kaf: kernel activation functions (K-AF) and FluidReLU for PyTorch."""

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

__version__ = "0.1.0"

__all__ = [
    "get_scale",
    "__version__",
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
