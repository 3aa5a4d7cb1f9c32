r"""Figures and interactive views shared by the book's chapters.

* :mod:`kaf.viz.views` — views the reader moves (Bokeh), computed in the browser by
  one JavaScript module, ``kaf/viz/views.mjs``: :func:`bandwidth_view`,
  :func:`kaf_view`, :func:`fluid_relu_view`, :func:`curves_view`.
* :mod:`kaf.viz.numbers` — the numbers those views show, computed with :mod:`kaf`
  (their initial state, and the reference the browser tests compare against).
* :mod:`kaf.viz.gallery` — static matplotlib figures (:func:`plot_activations`).
"""

from kaf.viz.gallery import plot_activations
from kaf.viz.numbers import (
    calc_subset,
    fluid_relu_curves,
    kaf_loo_gradient,
    nw_calc_fit,
    nw_loo_grid,
    nw_loo_mse,
    typical_gradient,
)
from kaf.viz.views import View, bandwidth_view, curves_view, fluid_relu_view, kaf_view

__all__ = [
    "View",
    "bandwidth_view",
    "kaf_view",
    "fluid_relu_view",
    "curves_view",
    "calc_subset",
    "nw_calc_fit",
    "nw_loo_mse",
    "nw_loo_grid",
    "kaf_loo_gradient",
    "typical_gradient",
    "fluid_relu_curves",
    "plot_activations",
]
