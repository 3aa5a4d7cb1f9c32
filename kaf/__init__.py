"""kaf: kernel activation functions (K-AF) and FluidReLU for PyTorch."""

from kaf.scale import get_scale

__version__ = "0.1.0"

__all__ = ["get_scale", "__version__"]
