r"""Interactive views that the reader moves, computed in the reader's browser.

Each view is a Bokeh layout: figures, one control per parameter (sliders that move
with the mouse or the keyboard, with a label and a value read-out) and a read-out of
the numbers a reader looks for. Python ships the data and computes the view's initial
state with :mod:`kaf` itself; on every move, one JavaScript module,
``kaf/viz/views.mjs`` (attached as a Bokeh ``CustomJS`` callback to every control),
recomputes the figures and the read-outs in the browser. No kernel, no precomputed
frames, no network: the same call shows the same view in a running Jupyter kernel and
in the static book. ``tests/test_browser.py`` holds the numbers the browser computes
against :mod:`kaf` at several settings.

Views:

* :func:`bandwidth_view` — kernel density estimate and Nadaraya–Watson fit as the
  bandwidth :math:`h`, the kernel and the noise level move, with the leave-one-out
  error over :math:`h`.
* :func:`kaf_view` — the K-AF estimator from a calc subset: :math:`h` and the calc size
  :math:`m` move independently; the fit, the leave-one-out error and the typical
  gradient against :math:`h`.
* :func:`fluid_relu_view` — both FluidReLU candidates and their derivatives as
  :math:`a` moves, with values at a probe point.
* :func:`curves_view` — learning curves from a result table, one panel per data set,
  outputs toggled from a legend or check boxes, values on hover.

**How BokehJS reaches the page.** A view's output is light: a ``<div>``, the view's
JSON and a few lines that hand it to BokehJS. BokehJS itself (about 1.6 MB) is not in
that output. In the built book, the book's Sphinx extension (``book/_ext/kaf_book.py``)
loads the copy vendored in ``book/vendor/bokeh/`` from ``_static/`` on the pages that
hold a view, once per page. In a notebook opened in Jupyter (the Jupyter server names
the notebook to its kernel in ``JPY_SESSION_NAME``), each view's output also carries
BokehJS inline, so it works offline there too; headless executions (the book build,
``jupyter-execute``, nbval) do not set that variable, so the committed notebooks and
the book's pages stay light. ``KAF_BOKEHJS=inline`` forces the inline copy (another
front end), ``KAF_BOKEHJS=page`` leaves it out.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from kaf.estimators import KERNELS, kernel_density, loo_cv_bandwidth, nadaraya_watson
from kaf.viz.numbers import (
    _column,
    calc_subset,
    fluid_relu_curves,
    kaf_loo_gradient,
    nw_calc_fit,
    nw_loo_mse,
    typical_gradient,
)

__all__ = ["View", "bandwidth_view", "kaf_view", "fluid_relu_view", "curves_view", "bokehjs_files"]

_JS_MODULE = Path(__file__).with_name("views.mjs")

#: Step of the log10(h) sliders: 50 positions per decade.
_LOG_STEP = 0.02


def bokehjs_files() -> tuple[str, str]:
    """Names of the BokehJS files a page with a view loads, relative to ``_static/``
    (vendored in ``book/vendor/bokeh/``; the version is the installed bokeh's)."""
    import bokeh

    v = bokeh.__version__
    return (f"bokeh/bokeh-{v}.min.js", f"bokeh/bokeh-widgets-{v}.min.js")


# --------------------------------------------------------------------------- the view object


class View:
    """A Bokeh layout with its initial read-out values, displayed as light HTML.

    Attributes:
        layout: the Bokeh layout (figures, controls, read-out).
        kind: which view (``"bandwidth"``, ``"kaf"``, ``"fluid"``, ``"curves"``).
        values: the numbers of the initial read-out (computed with :mod:`kaf`).
    """

    def __init__(self, layout, kind: str, values: Optional[dict] = None):
        self.layout = layout
        self.kind = kind
        self.values = dict(values or {})

    @property
    def element_id(self) -> str:
        # deterministic (Bokeh's model ids count up within a session): re-executing a
        # notebook gives the same output
        return f"kaf-{self.kind}-{self.layout.id}"

    def html(self, *, inline_bokehjs: Optional[bool] = None) -> str:
        """The view as an HTML fragment; BokehJS inline if ``inline_bokehjs`` (default:
        only in a live Jupyter notebook, see the module docstring)."""
        from bokeh.embed import json_item

        inline = _live_notebook() if inline_bokehjs is None else inline_bokehjs
        # a live JupyterLab page can hold several notebooks, whose kernels count model
        # ids alike: there the element id also gets a random part
        eid = self.element_id + (f"-{uuid.uuid4().hex[:8]}" if inline else "")
        item = json.dumps(json_item(self.layout, target=eid)).replace("</", "<\\/")
        parts = [_bokehjs_inline()] if inline else []
        parts.append(
            f'<div class="kaf-view" id="{eid}" data-kaf-view="{self.kind}"></div>\n'
            f'<script type="application/json" id="{eid}-item">{item}</script>\n'
            f"<script>{_EMBED_JS.replace('ELEMENT_ID', eid)}</script>"
        )
        return "\n".join(parts)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.html()}

    def __repr__(self) -> str:
        return f"View(kind={self.kind!r}, values={self.values!r})"


# Waits for BokehJS (loaded in the page's head by the book, or inline just above in a
# live notebook) and renders the view; says so in the page if BokehJS never comes.
_EMBED_JS = """
(function () {
  var id = "ELEMENT_ID";
  function ready() { return window.Bokeh && window.Bokeh.embed && window.Bokeh.Widgets; }
  function embed() {
    var item = JSON.parse(document.getElementById(id + "-item").textContent);
    window.Bokeh.embed.embed_item(item, id);
  }
  if (ready()) { embed(); return; }
  var tries = 0;
  var timer = setInterval(function () {
    if (ready()) { clearInterval(timer); embed(); }
    else if (++tries > 100) {
      clearInterval(timer);
      document.getElementById(id).textContent =
        "This interactive view needs BokehJS, which this page did not load (see kaf.viz.views).";
    }
  }, 50);
})();
"""


def _live_notebook() -> bool:
    mode = os.environ.get("KAF_BOKEHJS", "auto")
    if mode not in ("auto", "inline", "page"):
        raise ValueError(f"KAF_BOKEHJS must be 'auto', 'inline' or 'page', got {mode!r}")
    if mode != "auto":
        return mode == "inline"
    return os.environ.get("JPY_SESSION_NAME", "").endswith(".ipynb")


@lru_cache(maxsize=1)
def _bokehjs_inline() -> str:
    """BokehJS and its widgets as one ``<script>``, skipped if the page already has them."""
    import bokeh

    folder = Path(bokeh.__file__).parent / "server" / "static" / "js"
    libs = [(folder / name).read_text(encoding="utf-8").replace("</script", "<\\/script")
            for name in ("bokeh.min.js", "bokeh-widgets.min.js")]
    body = "\n".join(f"(function () {{\n{lib}\n}}).call(window);" for lib in libs)
    return f"<script>\nif (!(window.Bokeh && window.Bokeh.Widgets)) {{\n{body}\n}}\n</script>"


@lru_cache(maxsize=1)
def _module_code() -> str:
    return _JS_MODULE.read_text(encoding="utf-8")


def _callback(view: str, **args):
    from bokeh.models import CustomJS

    return CustomJS(code=_module_code(), module=True, args=dict(view=view, **args))


# --------------------------------------------------------------------------- shared pieces


def _fmt(x: float) -> str:
    """``x`` as JavaScript's ``x.toPrecision(4)`` writes it (the browser's read-outs)."""
    x = float(x)
    if not math.isfinite(x):
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(x, "NaN")
    if x == 0:
        return "0.000"
    mantissa, exponent = f"{x:.3e}".split("e")
    e = int(exponent)
    if e < -6 or e >= 4:
        return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return f"{x:.{3 - e}f}"


def _readout_html(values: dict, text: str) -> str:
    return f"<div class=\"kaf-readout\" data-values='{json.dumps(values)}'>{text}</div>"


def _log_slider(title: str, value: float, lo: float, hi: float):
    """A slider over log10(value) that shows the value itself (50 positions per decade)."""
    from bokeh.models import CustomJSTickFormatter, Slider

    if not (0 < lo < hi and lo <= value <= hi):
        raise ValueError(f"{title}: need 0 < lo <= value <= hi, got lo={lo}, value={value}, hi={hi}")
    start, end = math.log10(lo), math.log10(hi)
    snapped = start + round((math.log10(value) - start) / _LOG_STEP) * _LOG_STEP
    return Slider(title=title, start=start, end=end, step=_LOG_STEP, value=snapped,
                  format=CustomJSTickFormatter(code="return (10 ** tick).toPrecision(3)"),
                  sizing_mode="stretch_width")


def _figure(title: str, *, height: int, x_axis_type="linear", y_axis_type="linear", x_range=None, **kw):
    from bokeh.plotting import figure

    extra = {"x_range": x_range} if x_range is not None else {}
    p = figure(title=title, height=height, sizing_mode="stretch_width", x_axis_type=x_axis_type,
               y_axis_type=y_axis_type, tools="", toolbar_location=None, **extra, **kw)
    p.title.text_font_size = "13px"
    p.title.text_font_style = "normal"
    p.axis.axis_label_text_font_size = "12px"
    p.axis.axis_label_text_font_style = "normal"
    p.min_border_left = 55
    return p


def _hover(p, renderers, tooltips):
    from bokeh.models import HoverTool

    p.add_tools(HoverTool(renderers=renderers, tooltips=tooltips, mode="mouse"))


def _legend_style(legend, *, location="top_left"):
    legend.location = location
    legend.label_text_font_size = "11px"
    legend.spacing = 0
    legend.padding = 4
    legend.background_fill_alpha = 0.7


def _legend_above(p):
    """Move a figure's legend above its plot area, in one row (it covers no data there)."""
    legend = p.legend[0]
    p.center = [r for r in p.center if r is not legend]
    _legend_style(legend)
    legend.orientation = "horizontal"
    legend.spacing, legend.padding, legend.margin = 16, 0, 2
    legend.background_fill_alpha = 0
    legend.border_line_alpha = 0
    p.add_layout(legend, "above")


def _as_float64(x, name: str) -> torch.Tensor:
    return _column(name, x).detach().to(device="cpu", dtype=torch.float64)


# --------------------------------------------------------------------------- (a) bandwidth


def bandwidth_view(z, y, *, truth: Callable[[torch.Tensor], torch.Tensor], noise_sd: float, h: float = 0.3,
                   h_range=(0.01, 10.0), kernel: str = "gaussian", n_grid: int = 300, n_h: int = 61) -> View:
    r"""Kernel density estimate of the indices and the Nadaraya–Watson fit as the
    bandwidth moves, with the leave-one-out error over :math:`h`.

    The data are :math:`y_i = g(z_i) + \sigma\varepsilon_i` with :math:`g` = ``truth``;
    the noise slider sets :math:`\sigma` (starting at ``noise_sd``, the level the data
    were drawn with) and keeps the draws :math:`\varepsilon_i = (y_i - g(z_i))/` ``noise_sd``.

    Controls: bandwidth :math:`h` (log scale), kernel (any of :data:`kaf.estimators.KERNELS`),
    noise level :math:`\sigma`. Panels: :math:`\hat p(z)` (:func:`kaf.estimators.kernel_density`),
    the fit, and :math:`\mathrm{CV}(h)` on ``n_h`` bandwidths over ``h_range``, with
    a marker at the current :math:`h`, the grid's minimum and the noise variance.
    Read-out: :math:`h`, :math:`\mathrm{CV}(h)`, the CV-optimal :math:`h` on the grid.

    Args:
        z, y: the sample, 1-D, same length (at least 3 points).
        truth: the regression function :math:`g`, tensor to tensor.
        noise_sd: the noise standard deviation the data were drawn with (> 0).
        h: initial bandwidth (snapped to the slider's grid).
        h_range: the slider's range of bandwidths.
        kernel: initial kernel.
        n_grid: points at which the fit and the density are drawn.
        n_h: bandwidths on the leave-one-out curve.
    """
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, Select, Slider, Span

    z, y = _as_float64(z, "z"), _as_float64(y, "y")
    if z.shape != y.shape or z.shape[0] < 3:
        raise ValueError(f"z and y must be 1-D of one length >= 3, got shapes {tuple(z.shape)} and {tuple(y.shape)}")
    if not noise_sd > 0:
        raise ValueError(f"noise_sd must be > 0, got {noise_sd!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    signal = _as_float64(truth(z), "truth(z)")
    eps = (y - signal) / noise_sd
    z_np, signal_np, eps_np = z.numpy(), signal.numpy(), eps.numpy()
    sd = float(noise_sd)
    y_np = signal_np + sd * eps_np  # exactly what the browser computes from (signal, eps, sd)

    h_slider = _log_slider("bandwidth h", h, *h_range)
    h0 = 10 ** h_slider.value
    hs = np.logspace(math.log10(h_range[0]), math.log10(h_range[1]), n_h)
    zt, yt = torch.from_numpy(z_np), torch.from_numpy(y_np)
    best_h, _, cv = loo_cv_bandwidth(zt, yt, grid=hs, kernel=kernel)
    _, _, cv_now = loo_cv_bandwidth(zt, yt, grid=[h0], kernel=kernel)
    x = torch.linspace(float(z.min()), float(z.max()), n_grid, dtype=torch.float64)
    fit = nadaraya_watson(x[:, None], zt[:, None], yt[:, None], h0, kernel=kernel)[:, 0]
    density = kernel_density(x, zt, h0, kernel=kernel)
    values = {"h": h0, "kernel": kernel, "noise_sd": sd, "cv": float(cv_now[0]), "best_h": best_h}

    data = ColumnDataSource(dict(z=z_np, signal=signal_np, eps=eps_np, y=y_np), name="kaf-data")
    grid = ColumnDataSource(dict(x=x.numpy(), fit=fit.numpy(), density=density.numpy(),
                                 truth=_as_float64(truth(x), "truth(x)").numpy()))
    curve = ColumnDataSource(dict(h=hs, cv=cv.numpy()), name="kaf-cv-curve")
    marker = ColumnDataSource(dict(h=[h0], cv=[values["cv"]]))

    p_kde = _figure("kernel density estimate p̂(z) of the indices", height=150)
    p_kde.line("x", "density", source=grid, line_width=2, color="#1f77b4")
    p_kde.scatter("z", 0, source=data, marker="dash", angle=math.pi / 2, size=7, color="#555555", alpha=0.5)
    p_kde.y_range.start = 0
    p_kde.yaxis.axis_label = "density"
    p_fit = _figure("Nadaraya–Watson fit", height=270, x_range=p_kde.x_range)
    p_fit.scatter("z", "y", source=data, size=4, color="#999999", alpha=0.6, legend_label="data")
    p_fit.line("x", "truth", source=grid, color="black", line_dash="dashed", legend_label="E[y|z]")
    p_fit.line("x", "fit", source=grid, color="#d62728", line_width=2.5, legend_label="fit")
    p_fit.xaxis.axis_label, p_fit.yaxis.axis_label = "index z", "y"
    _legend_above(p_fit)
    p_cv = _figure("leave-one-out error CV(h)", height=420, x_axis_type="log")
    p_cv.line("h", "cv", source=curve, line_width=2, color="#1f77b4")
    dot = p_cv.scatter("h", "cv", source=marker, size=11, fill_color="white", line_color="black", line_width=2)
    best = Span(location=best_h, dimension="height", line_dash="dotted", line_color="black")
    noise_var = Span(location=sd**2, dimension="width", line_dash="dashed", line_color="#888888")
    p_cv.add_layout(best)
    p_cv.add_layout(noise_var)
    p_cv.xaxis.axis_label, p_cv.yaxis.axis_label = "bandwidth h", "mean squared error"
    _hover(p_cv, [dot], [("h", "@h{0.0000}"), ("CV(h)", "@cv{0.00000}")])

    kernel_select = Select(title="kernel", value=kernel, options=list(KERNELS), width=150)
    noise = Slider(title="noise sd σ", start=0.0, end=1.0, step=0.01, value=sd, sizing_mode="stretch_width")
    readout = Div(text=_readout_html(values, _bandwidth_text(values)), sizing_mode="stretch_width")
    note = Div(text="circle: the current h · dotted: the CV-optimal h · dashed: the noise variance σ²",
               styles={"font-size": "12px", "color": "#555"})
    callback = _callback("bandwidth", h=h_slider, kernel=kernel_select, noise=noise, data=data, grid=grid,
                         curve=curve, marker=marker, best=best, noiseVariance=noise_var, readout=readout)
    h_slider.js_on_change("value", callback)
    kernel_select.js_on_change("value", callback)
    noise.js_on_change("value", callback)
    layout = column(
        row(h_slider, kernel_select, noise, sizing_mode="stretch_width"),
        readout,
        row(column(p_kde, p_fit, sizing_mode="stretch_width"), column(p_cv, note, sizing_mode="stretch_width"),
            sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
    )
    return View(layout, "bandwidth", values)


def _bandwidth_text(v: dict) -> str:
    return (f"h = {_fmt(v['h'])} · leave-one-out CV(h) = {_fmt(v['cv'])} · "
            f"CV-optimal h on the grid = {_fmt(v['best_h'])}")


# --------------------------------------------------------------------------- (b) K-AF: h and m


def kaf_view(z, y, *, truth: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, h: float = 0.3, m: int = 25,
             h_range=(1e-3, 1e2), ref_ms: Sequence[int] = (8, 25, 60), m_min: int = 2, seed: int = 0,
             n_grid: int = 300, n_h: int = 71) -> View:
    r"""The K-AF estimator from a calc subset, with :math:`h` and :math:`m` moved independently.

    The calc set of size :math:`m` is :func:`calc_subset` ``(n, m, seed=seed)``: nested,
    so moving :math:`m` up adds points. Panels: the data, the calc points and the fit
    through them; the leave-one-out error :math:`L` (:func:`nw_loo_mse`) against
    :math:`h`; and the typical point's gradient :math:`n\,\mathrm{median}_i|\partial L/\partial z_i|`
    (:func:`typical_gradient`, the measure of the gradients chapter) against :math:`h`.
    Both curves are drawn for the current :math:`m` (recomputed as it moves) and, thin,
    for the calc sizes ``ref_ms`` and :math:`n`; a marker sits at the current :math:`h`.

    Args:
        z, y: the sample, 1-D, same length n.
        truth: the regression function, drawn dashed if given.
        h, m: initial bandwidth (snapped to the slider's grid) and calc size.
        h_range: the slider's range of bandwidths.
        ref_ms: calc sizes drawn as fixed reference curves (n is added).
        m_min: smallest calc size on the slider (>= 2).
        seed: seed of the calc permutation.
        n_grid, n_h: points of the fit and bandwidths of the curves.
    """
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, Range1d, Slider

    z, y = _as_float64(z, "z"), _as_float64(y, "y")
    n = z.shape[0]
    if z.shape != y.shape:
        raise ValueError(f"y must have the shape of z {tuple(z.shape)}, got {tuple(y.shape)}")
    if not (isinstance(m_min, int) and 2 <= m_min <= m <= n):
        raise ValueError(f"m must be an int with m_min={m_min!r} <= m <= n={n} and m_min >= 2, got m={m!r}")
    ref_ms = sorted({int(k) for k in ref_ms if m_min <= int(k) < n} | {n})
    order = calc_subset(n, n, seed=seed)
    h_slider = _log_slider("bandwidth h", h, *h_range)
    h0 = 10 ** h_slider.value
    hs = np.logspace(math.log10(h_range[0]), math.log10(h_range[1]), n_h)

    def curves(mm):
        loss, grad = kaf_loo_gradient(z, y, hs, order[:mm])
        return loss.cpu().numpy(), (grad.abs().median(dim=0).values * n).cpu().numpy()

    loo, grad = curves(m)
    refs = {k: curves(k) for k in ref_ms}
    calc = order[:m]
    x = torch.linspace(float(z.min()), float(z.max()), n_grid, dtype=torch.float64)
    with torch.no_grad():
        fit = nw_calc_fit(x, z, y, h0, calc)
    values = {"h": h0, "m": m, "loo_mse": nw_loo_mse(z, y, h0, calc), "typical_gradient": typical_gradient(z, y, h0, calc)}

    data = ColumnDataSource(dict(z=z.numpy(), y=y.numpy(), order=order.numpy().astype(np.int32)), name="kaf-data")
    calc_points = ColumnDataSource(dict(z=z[calc].numpy(), y=y[calc].numpy()), name="kaf-calc-points")
    grid_cols = dict(x=x.numpy(), fit=fit.numpy())
    if truth is not None:
        grid_cols["truth"] = _as_float64(truth(x), "truth(x)").numpy()
    grid = ColumnDataSource(grid_cols)
    curve = ColumnDataSource(dict(h=hs, loo=loo, grad=grad), name="kaf-curves")
    marker_loo = ColumnDataSource(dict(h=[h0], loo=[values["loo_mse"]]))
    marker_grad = ColumnDataSource(dict(h=[h0], grad=[values["typical_gradient"]]))
    palette = ["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b"]
    ref_colors = {k: palette[min(i, len(palette) - 1)] for i, k in enumerate(ref_ms)}

    p_fit = _figure("the K-AF estimate from the calc points", height=270)
    p_fit.scatter(z.numpy(), y.numpy(), size=4, color="#bbbbbb", legend_label="training points")
    p_fit.scatter("z", "y", source=calc_points, size=7, color="#1f77b4", legend_label="calc points")
    if truth is not None:
        p_fit.line("x", "truth", source=grid, color="black", line_dash="dashed", legend_label="E[y|z]")
    p_fit.line("x", "fit", source=grid, color="#d62728", line_width=2.5, legend_label="fit")
    p_fit.xaxis.axis_label, p_fit.yaxis.axis_label = "index z", "y"
    _legend_style(p_fit.legend[0], location="top_left")

    p_loo = _figure("leave-one-out error L", height=300, x_axis_type="log")
    # log axis over six decades below the largest value: the edges of the band where the
    # gradient lives are drops by orders of magnitude (an exact 0 leaves the panel)
    top = 2 * max(float(np.max(grad)), *(float(np.max(r[1])) for r in refs.values()))
    p_grad = _figure("typical gradient n·median|∂L/∂zᵢ|", height=300, x_axis_type="log", y_axis_type="log",
                     x_range=p_loo.x_range, y_range=Range1d(top * 1e-6, top))
    for k in ref_ms:  # one legend, in the error panel, serves both
        p_loo.line(hs, refs[k][0], color=ref_colors[k], line_width=1.2, legend_label=f"m = {k}")
        p_grad.line(hs, refs[k][1], color=ref_colors[k], line_width=1.2)
    p_loo.line("h", "loo", source=curve, color="#d62728", line_width=2.5, legend_label="current m")
    p_grad.line("h", "grad", source=curve, color="#d62728", line_width=2.5)
    d1 = p_loo.scatter("h", "loo", source=marker_loo, size=11, fill_color="white", line_color="black", line_width=2)
    d2 = p_grad.scatter("h", "grad", source=marker_grad, size=11, fill_color="white", line_color="black",
                        line_width=2)
    for p, label in ((p_loo, "L"), (p_grad, "n·median|∂L/∂zᵢ|")):
        p.xaxis.axis_label = "bandwidth h"
        p.yaxis.axis_label = label
    _legend_style(p_loo.legend[0], location="bottom_right")
    _hover(p_loo, [d1], [("h", "@h{0.0000}"), ("L", "@loo{0.00000}")])
    _hover(p_grad, [d2], [("h", "@h{0.0000}"), ("gradient", "@grad{0.0000}")])

    m_slider = Slider(title="calc size m", start=m_min, end=n, step=1, value=m, sizing_mode="stretch_width")
    readout = Div(text=_readout_html(values, _kaf_text(values)), sizing_mode="stretch_width")
    callback = _callback("kaf", h=h_slider, m=m_slider, data=data, calcPoints=calc_points, grid=grid, curve=curve,
                         markerLoo=marker_loo, markerGrad=marker_grad, readout=readout)
    h_slider.js_on_change("value", callback)
    m_slider.js_on_change("value", callback)
    layout = column(row(h_slider, m_slider, sizing_mode="stretch_width"), readout, p_fit,
                    row(p_loo, p_grad, sizing_mode="stretch_width"), sizing_mode="stretch_width")
    return View(layout, "kaf", values)


def _kaf_text(v: dict) -> str:
    return (f"h = {_fmt(v['h'])} · m = {v['m']} · leave-one-out MSE = {_fmt(v['loo_mse'])} · "
            f"typical gradient n·median|∂L/∂zᵢ| = {_fmt(v['typical_gradient'])}")


# --------------------------------------------------------------------------- (c) FluidReLU


_VARIANT_COLORS = {"exp": "#d62728", "sigmoid": "#1f77b4"}


def fluid_relu_view(*, a: float = 0.0, a_range=(-4.0, 4.0), probe: float = -1.0, v_range=(-6.0, 3.0),
                    n_grid: int = 361) -> View:
    r"""Both FluidReLU candidates (``variant="exp"`` and ``"sigmoid"``) and their derivatives
    :math:`\partial f/\partial v`, :math:`\partial f/\partial a` as :math:`a` moves; the two
    limits, ReLU (:math:`a \to -\infty`) and the identity (:math:`a \to +\infty`), dashed.

    Controls: :math:`a` and a probe point :math:`v`; the read-out gives :math:`f(v)`,
    :math:`\partial f/\partial v` and :math:`\partial f/\partial a` of both variants there
    (:func:`fluid_relu_curves`, i.e. :class:`kaf.nn.FluidReLU`, for the initial state).
    """
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, Slider, Span

    lo, hi = v_range
    if not (a_range[0] <= a <= a_range[1] and lo <= probe <= hi and lo < 0 < hi):
        raise ValueError(f"need a in a_range={a_range}, probe in v_range={v_range} and v_range around 0; "
                         f"got a={a}, probe={probe}")
    v = np.linspace(lo, hi, n_grid)
    cols, probe_cols, values, rows = {"v": v}, {"v": [float(probe)]}, {"a": float(a), "v": float(probe)}, []
    for variant in ("exp", "sigmoid"):
        f, dv, da = fluid_relu_curves(v, a, variant=variant)
        cols.update({f"f_{variant}": f, f"dv_{variant}": dv, f"da_{variant}": da})
        pf, pdv, pda = (float(c[0]) for c in fluid_relu_curves(np.array([probe]), a, variant=variant))
        probe_cols.update({f"f_{variant}": [pf], f"dv_{variant}": [pdv], f"da_{variant}": [pda]})
        values[variant] = {"f": pf, "dv": pdv, "da": pda}
        rows.append(f"<tr><th>{variant}</th><td>{_fmt(pf)}</td><td>{_fmt(pdv)}</td><td>{_fmt(pda)}</td></tr>")
    curves = ColumnDataSource(cols, name="kaf-data")
    probe_src = ColumnDataSource(probe_cols)

    a_slider = Slider(title="a (k = eᵃ)", start=a_range[0], end=a_range[1], step=0.01, value=float(a),
                      format="0.00", sizing_mode="stretch_width")
    v_slider = Slider(title="probe point v", start=lo, end=hi, step=0.01, value=float(probe), format="0.00",
                      sizing_mode="stretch_width")
    panels = []
    for key, title in (("f", "f(v)"), ("dv", "∂f/∂v"), ("da", "∂f/∂a")):
        p = _figure(title, height=290)
        p.xaxis.axis_label = "v"
        p.add_layout(Span(location=0, dimension="height", line_color="#cccccc"))
        p.add_layout(Span(location=0, dimension="width", line_color="#cccccc"))
        probe_line = Span(location=float(probe), dimension="height", line_color="#888888", line_dash="dotted")
        p.add_layout(probe_line)
        v_slider.js_link("value", probe_line, "location")
        if key == "f":
            p.line(v, np.maximum(v, 0), color="black", line_dash="dashed", legend_label="ReLU (a → −∞)")
            p.line(v, v, color="black", line_dash="dotted", legend_label="identity (a → +∞)")
            p.y_range.start, p.y_range.end = lo, hi
        if key == "dv":
            p.line(v, (v >= 0).astype(float), color="black", line_dash="dashed")
            p.line(v, np.ones_like(v), color="black", line_dash="dotted")
            p.y_range.start, p.y_range.end = -0.3, 1.15
        for variant in ("exp", "sigmoid"):
            label = {"legend_label": variant} if key == "f" else {}
            p.line("v", f"{key}_{variant}", source=curves, color=_VARIANT_COLORS[variant], line_width=2.5, **label)
            p.scatter("v", f"{key}_{variant}", source=probe_src, size=9, fill_color="white",
                      line_color=_VARIANT_COLORS[variant], line_width=2)
        if key == "f":
            _legend_style(p.legend[0], location="bottom_right")  # v > 0, f < 0: always empty
        panels.append(p)
    readout = Div(text=_readout_html(values, _fluid_table(values, rows)), styles={"font-size": "13px"})
    callback = _callback("fluid", a=a_slider, v=v_slider, curves=curves, probe=probe_src, readout=readout)
    a_slider.js_on_change("value", callback)
    v_slider.js_on_change("value", callback)
    layout = column(row(a_slider, v_slider, sizing_mode="stretch_width"),
                    row(panels[0], readout, sizing_mode="stretch_width"),
                    row(*panels[1:], sizing_mode="stretch_width"), sizing_mode="stretch_width")
    return View(layout, "fluid", values)


def _fluid_table(values: dict, rows: list) -> str:
    return (f"<table><caption>a = {_fmt(values['a'])}, at v = {_fmt(values['v'])}</caption>"
            f"<tr><th>variant</th><th>f(v)</th><th>∂f/∂v</th><th>∂f/∂a</th></tr>{''.join(rows)}</table>")


# --------------------------------------------------------------------------- (d) learning curves


_QUANTITY_LABELS = {"test_metric": "test {metric}", "train_loss": "training loss", "test_loss": "test loss"}
_METRIC_NAMES = {"accuracy": "accuracy", "rmse": "RMSE"}


def curves_view(table, *, shown: Sequence[str] = ("kaf", "sigmoid", "tanh", "relu"),
                quantities: Sequence[str] = ("test_metric", "train_loss", "test_loss"), hue: str = "output",
                panels: str = "dataset", colors: Optional[dict] = None) -> View:
    """Learning curves from a tidy result table (one row per seed × epoch): the mean over
    seeds (line) ± one standard deviation (band) against the epoch, one panel per
    ``panels`` value, one curve per ``hue`` value.

    Controls: which quantity (a column of the table, ``quantities``), and which curves are
    shown: a check box per ``hue`` value, drawn in its curve's colour (the legend), keeps
    every panel in step. Hovering a curve gives its name, the epoch and mean ± sd. The
    curves are shipped in single precision (plenty for a figure, half the page weight).

    Args:
        table: a result table with columns ``epoch``, ``hue``, ``panels``, ``metric`` and
            the ``quantities``.
        shown: the ``hue`` values shown at first.
        colors: ``hue`` value -> colour (default: the experiment plots' colours).
    """
    import matplotlib.colors as mcolors
    from bokeh.layouts import column, row
    from bokeh.models import CheckboxGroup, ColumnDataSource, HoverTool, InlineStyleSheet, Select

    from kaf.experiments.plots import OUTPUT_COLORS

    missing = {"epoch", hue, panels, "metric", *quantities} - set(table.columns)
    if missing:
        raise ValueError(f"table must have the columns {sorted(missing)}")
    groups = list(dict.fromkeys(table[panels]))
    names = list(dict.fromkeys(table[hue]))
    unknown = set(shown) - set(names)
    if unknown:
        raise ValueError(f"shown must name values of {hue!r} in the table {names}, got unknown {sorted(unknown)}")
    palette = {k: mcolors.to_hex(c) for k, c in (colors or OUTPUT_COLORS).items()}
    fallback = ["#7f7f7f", "#bcbd22", "#17becf"]
    color = {name: palette.get(name, fallback[i % len(fallback)]) for i, name in enumerate(names)}
    q0 = quantities[0]
    labels = {q: [_QUANTITY_LABELS.get(q, q).format(metric=_metric_name(table[table[panels] == g])) for g in groups]
              for q in quantities}

    figures, sources, renderers = [], [], {str(name): [] for name in names}
    for g in groups:
        sub = table[table[panels] == g]
        p = _figure(str(g), height=260)
        p.xaxis.axis_label = "epoch"
        p.yaxis.axis_label = labels[q0][len(figures)]
        for name in names:
            d = sub[sub[hue] == name]
            if d.empty:
                continue
            stats = d.groupby("epoch")[list(quantities)].agg(["mean", "std"]).fillna(0.0)
            cols = {"epoch": stats.index.to_numpy().astype(np.int32)}
            for q in quantities:
                cols[f"mean_{q}"] = stats[(q, "mean")].to_numpy().astype(np.float32)
                cols[f"sd_{q}"] = stats[(q, "std")].to_numpy().astype(np.float32)
            mean, sd = cols[f"mean_{q0}"], cols[f"sd_{q0}"]
            cols.update(y=mean, sd=sd, lo=mean - sd, hi=mean + sd)
            src = ColumnDataSource(cols, name=f"kaf-curve|{g}|{name}")
            visible = name in shown
            band = p.varea("epoch", "lo", "hi", source=src, color=color[name], alpha=0.15, visible=visible)
            line = p.line("epoch", "y", source=src, color=color[name], line_width=2.5 if name == "kaf" else 1.5,
                          visible=visible)
            p.add_tools(HoverTool(renderers=[line], mode="mouse", tooltips=[
                (hue, str(name)), ("epoch", "@epoch"), ("mean", "@y{0.0000}"), ("± sd", "@sd{0.0000}")]))
            renderers[str(name)] += [line, band]
            sources.append(src)
        figures.append(p)

    outputs = [str(n) for n in names]
    # the check boxes are the legend: a line in each curve's colour before its label
    swatches = "\n".join(
        f"label:nth-of-type({i + 1}) span::before {{ background: {color[n]}; }}" for i, n in enumerate(names))
    css = ("label span::before { content: ''; display: inline-block; width: 16px; height: 4px; "
           "margin: 0 4px 3px 0; vertical-align: middle; }\n" + swatches)
    shown_box = CheckboxGroup(labels=outputs, active=[i for i, n in enumerate(names) if n in shown], inline=True,
                              sizing_mode="stretch_width", stylesheets=[InlineStyleSheet(css=css)])
    quantity = Select(title="quantity", value=q0, width=180,
                      options=[(q, _QUANTITY_LABELS.get(q, q).format(metric="metric")) for q in quantities])
    callback = _callback("curves", sources=sources, renderers=renderers, outputs=outputs, shown=shown_box,
                         quantity=quantity, axes=[p.yaxis[0] for p in figures], labels=labels)
    shown_box.js_on_change("active", callback)
    quantity.js_on_change("value", callback)
    grid_rows = [row(*figures[i:i + 2], sizing_mode="stretch_width") for i in range(0, len(figures), 2)]
    layout = column(quantity, _label(f"{hue}s shown (mean ± sd over seeds):"), shown_box, *grid_rows,
                    sizing_mode="stretch_width")
    return View(layout, "curves", {"shown": list(shown), "quantity": q0})


def _label(text: str):
    from bokeh.models import Div

    return Div(text=text, styles={"font-size": "13px"})


def _metric_name(table) -> str:
    metrics = list(dict.fromkeys(table["metric"]))
    return _METRIC_NAMES.get(metrics[0], metrics[0]) if len(metrics) == 1 else "metric"
