"""The built book in a real browser: headless Chromium (Debian's package) driven by playwright.

Loads the pages from ``_build/html`` (build the book first; see README), and checks that

* no page of the book requests anything outside ``file://`` or logs a JavaScript error;
* every page reads well at 1280 px (a laptop) and at 390 px (a phone): no display
  equation wider than the text column at 1280 px (on a phone it may scroll in its own
  box, never be clipped), no figure shrunk below 80 % at 1280 px (with text of at least
  9 pt, ``tests/test_viz.py``, its labels stay above 9 px), no sideways scrolling, none of nbval's markers in the text, and
  no serious or critical axe-core violation of the WCAG 2 A/AA rules;
* every chapter page weighs at most 1 MB; the introduction's verdict overview is compact
  and links each verdict to a section that exists; the offline search runs without errors;
* each interactive view's controls move with the keyboard and change their figure, and
  the numbers the browser computes (``kaf/viz/views.mjs``, read from the read-outs) equal
  :mod:`kaf`'s at the same settings, to 1e-6 relative; sliders carry an accessible name and
  announce the value they show; a read-out's changing numbers do not resize the figures.

Without Chromium or a built book these tests are skipped, with the reason; with ``CI``
set they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kaf import viz
from kaf.estimators import loo_cv_bandwidth
from kaf.viz import views

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
RTOL = 1e-6
# a fresh headless Chromium tries to reach Google's services at start; this machine's
# network is closed, so those connections are switched off
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEW_PAGES = {"bandwidth": "book/nadaraya_watson.html", "kaf": "book/kaf_layer.html",
              "fluid": "book/fluid_relu.html", "curves": "book/experiments/baselines.html"}


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


def _book_pages() -> list[str]:
    if not (HTML / "index.html").is_file():
        return []
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if not {"_static", "_sources", "_images"} & set(p.relative_to(HTML).parts))


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -r requirements.txt")
    executable = shutil.which("chromium")
    if executable is None:
        _unavailable("no Chromium on PATH: apt-get install -y chromium")
    if not (HTML / "index.html").is_file():
        _unavailable("no built book in _build/html: build it first "
                     "(KAF_SCALE=quick .venv/bin/jupyter-book build . --all)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """One page of the built book, with every request outside file:// refused and recorded,
    and every JavaScript error (uncaught, or logged with console.error) recorded."""

    def __init__(self, browser, relative: str, width: int = 1280, query: str = ""):
        self.page = browser.new_page(viewport={"width": width, "height": 1600})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console.error: {m.text}") if m.type == "error" else None)
        self.page.route("**/*", self._route)
        self.page.goto((HTML / relative).as_uri() + query, wait_until="load")

    def _route(self, route):
        url = route.request.url
        if url.startswith(("file://", "data:", "blob:")):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def wait_for_views(self):
        self.page.wait_for_function(
            "() => window.Bokeh && Bokeh.documents.length === document.querySelectorAll('.kaf-view').length"
            " && [...Bokeh.index.roots].length > 0 && [...Bokeh.index.roots].every((v) => v.has_finished())",
            timeout=20_000)
        self.page.wait_for_timeout(300)

    def values(self) -> dict:
        return json.loads(self.page.locator(".kaf-readout").get_attribute("data-values"))

    def wait_for_change(self, before: dict) -> dict:
        """The read-out once it has changed from ``before`` and stayed put for 0.3 s (every
        key press triggers a recomputation; the last one must be done)."""
        now, stable = before, 0
        for _ in range(300):
            self.page.wait_for_timeout(50)
            latest = self.values()
            stable = stable + 1 if latest == now else 0
            now = latest
            if now != before and stable >= 6:
                return now
        raise AssertionError(f"the read-out did not settle on a change from {before}")

    def source(self, name: str) -> dict:
        """A named data source of the page's Bokeh documents, as lists."""
        return self.page.evaluate(
            """(name) => { for (const d of Bokeh.documents) { const m = d.get_model_by_name(name);
                 if (m) { const out = {}; for (const [k, v] of Object.entries(m.data)) out[k] = Array.from(v);
                          return out; } } return null; }""", name)

    def figure_pixels(self) -> list[bytes]:
        """A screenshot of every figure of the page's views."""
        figures = self.page.locator(".kaf-view .bk-Figure")
        return [figures.nth(i).screenshot() for i in range(figures.count())]

    def press(self, control: str, key: str, times: int = 1):
        """Focus a control (a slider's handle, a select, a check box) and press a key."""
        target = self.page.locator(control)
        assert target.count() == 1, f"{control}: {target.count()} matches"
        target.focus()
        for _ in range(times):
            self.page.keyboard.press(key)

    def wait_for_math(self):
        """Until MathJax has typeset every display equation of the page."""
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('div.math')].every((d) => d.querySelector('mjx-container'))",
            timeout=20_000)

    def check_clean(self):
        assert not self.requests, f"requests outside file://: {self.requests}"
        assert not self.errors, f"JavaScript errors: {self.errors}"


def _slider(title: str) -> str:
    return f".bk-Slider:has-text('{title}') .noUi-handle"


def _close(browser_value: float, kaf_value: float):
    assert browser_value == pytest.approx(kaf_value, rel=RTOL, abs=1e-300)


def _open_view(browser, kind: str) -> Page:
    page = Page(browser, VIEW_PAGES[kind])
    page.wait_for_views()
    codes = page.page.evaluate(
        "() => [...new Set(Bokeh.documents.flatMap((d) => [...d.all_models])"
        ".filter((m) => typeof m.code === 'string' && m.code.includes('export default')).map((m) => m.code))]")
    module = (ROOT / "kaf" / "viz" / "views.mjs").read_text(encoding="utf-8")
    assert codes == [module], "the built book is older than kaf/viz/views.mjs: rebuild it"
    return page


# --------------------------------------------------------------------------- every page


@pytest.mark.parametrize("relative", _book_pages() or ["index.html"])
def test_page_loads_offline_without_javascript_errors(browser, relative):
    page = Page(browser, relative)
    page.page.wait_for_timeout(500)  # let deferred and async scripts run
    if page.page.locator(".kaf-view").count():
        page.wait_for_views()
    page.check_clean()
    page.page.close()


# Every display equation: at 1280 px its typeset content fits its box (MathJax's container
# beside the equation number); on a phone it may be wider if the box scrolls (overflow-x
# auto), which the theme gives it, but not be clipped.
_CUT_EQUATIONS = """(phone) => [...document.querySelectorAll('div.math')].filter((d) => {
  const box = d.querySelector('mjx-container');
  const over = box.scrollWidth > box.clientWidth + 1;
  return phone ? over && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX) : over;
}).map((d) => (d.querySelector('.eqno') || d).textContent.replace('#', '').trim() || d.id)"""

AXE_RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def _axe_serious(page) -> list:
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page, options=AXE_RULES).response["violations"]
    return [f"{v['id']} ({v['impact']}): {v['help']}; {[n['target'] for n in v['nodes']][:3]}"
            for v in violations if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("relative", [p for p in _book_pages() if p != "index.html"] or ["book/intro.html"])
def test_page_reads_well_on_a_laptop_and_a_phone(browser, relative, width):  # index.html only redirects
    page = Page(browser, relative, width)
    page.wait_for_math()
    if page.page.locator(".kaf-view").count():
        page.wait_for_views()
    problems = []  # all of them at once
    cut = page.page.evaluate(_CUT_EQUATIONS, width < 600)
    if cut:
        problems.append(f"equations cut off: {cut}")
    overflow = page.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        problems.append(f"the page scrolls sideways by {overflow} px")
    if width > 1000:  # figures drawn for the column (kaf.experiments.plots): at most slightly shrunk
        shrunk = page.page.evaluate(
            "() => [...document.querySelectorAll('.cell_output img')].filter((i) => i.naturalWidth > 0)"
            ".map((i) => [i.getBoundingClientRect().width / i.naturalWidth, i.src.split('/').pop()])"
            ".filter(([scale]) => scale < 0.8)")
        if shrunk:
            problems.append(f"figures shown below 80 % of their size, their text below 9 px: {shrunk}")
    if "NBVAL" in page.page.evaluate("() => document.body.textContent"):
        problems.append("nbval's markers in the text (use cell tags)")
    problems += _axe_serious(page.page)
    page.page.close()
    assert not problems, problems


def test_the_verdict_overview_is_compact_and_links_to_sections_that_exist(browser):
    phone = Page(browser, "book/intro.html", 390)  # on a phone its table fits the column, with no scrolling
    widths = phone.page.evaluate("() => [document.querySelector('.kaf-verdicts').clientWidth,"
                                 " document.querySelector('.kaf-verdicts table').scrollWidth]")
    assert widths[1] <= widths[0], widths
    phone.page.close()
    page = Page(browser, "book/intro.html")
    overview = page.page.locator(".kaf-verdicts")
    assert overview.count() == 1
    assert overview.bounding_box()["height"] <= 3000
    links = page.page.evaluate("() => [...document.querySelectorAll('.kaf-verdicts a')].map((a) => a.href)")
    assert len(links) >= 2 * page.page.locator(".kaf-verdicts details").count() > 0
    for link in set(links):
        target, _, anchor = link.partition("#")
        path = Path(target.removeprefix("file://"))
        assert path.is_file(), link
        assert not anchor or f'id="{anchor}"' in path.read_text(encoding="utf-8"), link
    details = overview.locator("details").first  # the evidence opens on demand
    assert not details.locator(".kaf-evidence").is_visible()
    details.locator("summary").click()
    assert details.locator(".kaf-evidence").is_visible()
    page.check_clean()


def test_offline_search_finds_pages_without_errors(browser):
    page = Page(browser, "search.html", query="?q=kernel")
    page.page.wait_for_selector("#search-results li", timeout=20_000)
    page.page.wait_for_timeout(1000)  # summaries, if any, are fetched after the list
    assert page.page.locator("#search-results li").count() >= 3
    page.check_clean()


def test_chapter_pages_are_light():
    pages = _book_pages()
    if not pages:
        _unavailable("no built book in _build/html")
    sizes = {p: (HTML / p).stat().st_size for p in pages if p.startswith("book/")}
    assert sizes and max(sizes.values()) <= 1_000_000, {p: s for p, s in sizes.items() if s > 1_000_000}


# --------------------------------------------------------------------------- the views


def test_bandwidth_view_moves_and_computes_kafs_numbers(browser):
    page = _open_view(browser, "bandwidth")
    data = page.source("kaf-data")
    z, signal, eps = (torch.tensor(data[k], dtype=torch.float64) for k in ("z", "signal", "eps"))
    hs = torch.tensor(page.source("kaf-cv-curve")["h"], dtype=torch.float64)

    def check(values, curve: bool):
        y = signal + values["noise_sd"] * eps  # the same operations as the browser
        _, _, cv_now = loo_cv_bandwidth(z, y, grid=[values["h"]], kernel=values["kernel"])
        _close(values["cv"], float(cv_now[0]))
        if curve:  # the curve over h (recomputed in the browser when the kernel or the noise moves)
            best_h, _, cv = loo_cv_bandwidth(z, y, grid=hs, kernel=values["kernel"])
            assert values["best_h"] == best_h
            np.testing.assert_allclose(page.source("kaf-cv-curve")["cv"], cv.numpy(), rtol=RTOL)

    values = page.values()
    check(values, curve=True)  # the initial state (computed in Python)
    _check_slider_names(page, {"bandwidth h": values["h"], "noise sd σ": values["noise_sd"]})
    # PageUp/PageDown move a slider by five steps, the arrow keys by one
    moves = [(_slider("bandwidth h"), "PageDown", 8), (".bk-Select select", "ArrowDown", 1),
             (_slider("noise sd"), "PageUp", 5), (_slider("bandwidth h"), "ArrowRight", 3),
             (_slider("bandwidth h"), "PageUp", 18), (".bk-Select select", "ArrowDown", 2)]
    for control, key, times in moves:
        pixels = page.figure_pixels()
        page.press(control, key, times)
        values = page.wait_for_change(values)
        check(values, curve=False)  # the whole curve: at the start and the end (slow in kaf)
        after = page.figure_pixels()
        assert any(a != b for a, b in zip(pixels, after)), f"{control} {key}: no figure changed"
    assert values["kernel"] == "uniform" and values["noise_sd"] == pytest.approx(0.55)
    check(values, curve=True)
    _check_slider_names(page, {"bandwidth h": values["h"], "noise sd σ": values["noise_sd"]})
    page.check_clean()


def test_kaf_view_moves_h_and_m_independently_and_computes_kafs_numbers(browser):
    page = _open_view(browser, "kaf")
    data = page.source("kaf-data")
    z, y = (torch.tensor(data[k], dtype=torch.float64) for k in ("z", "y"))
    order = torch.tensor(data["order"], dtype=torch.long)

    def check(values):
        calc = order[: values["m"]]
        _close(values["loo_mse"], viz.nw_loo_mse(z, y, values["h"], calc))
        _close(values["typical_gradient"], viz.typical_gradient(z, y, values["h"], calc))  # away from the tail
        calc_points = page.source("kaf-calc-points")
        np.testing.assert_array_equal(calc_points["z"], z[calc].numpy())

    values = page.values()
    check(values)
    for control, key, times in [(_slider("calc size m"), "PageUp", 6), (_slider("bandwidth h"), "PageDown", 6),
                                (_slider("calc size m"), "ArrowLeft", 3), (_slider("calc size m"), "PageDown", 9),
                                (_slider("bandwidth h"), "PageUp", 24)]:
        pixels = page.figure_pixels()
        m_before, h_before = values["m"], values["h"]
        page.press(control, key, times)
        values = page.wait_for_change(values)
        check(values)
        moved = "m" if "calc size" in control else "h"
        assert (values["m"] != m_before) == (moved == "m") and (values["h"] != h_before) == (moved == "h")
        after = page.figure_pixels()
        assert any(a != b for a, b in zip(pixels, after)), f"{control} {key}: no figure changed"
    assert values["m"] == 7 and values["h"] == pytest.approx(10**1.28)
    curve = page.source("kaf-curves")  # the curves over h for the current m, recomputed in the browser
    calc = order[: values["m"]]
    loss, _ = viz.kaf_loo_gradient(z, y, curve["h"], calc)
    np.testing.assert_allclose(curve["loo"], loss.numpy(), rtol=RTOL)
    # Deep in the lower tail of the band the gradient is a difference of nearly equal
    # numbers: there two correct double-precision computations (kaf's backward pass, the
    # closed form in the browser) agree to about 1e-12 of the curve's peak, not to 1e-6
    # of a value a million times smaller than the peak. The read-outs above are checked
    # at settings away from that tail.
    reference = viz.typical_gradient(z, y, curve["h"], calc)
    np.testing.assert_allclose(curve["grad"], reference, rtol=RTOL, atol=1e-9 * reference.max())
    page.check_clean()


def test_fluid_relu_view_moves_a_and_the_probe_and_computes_fluid_relus_numbers(browser):
    page = _open_view(browser, "fluid")

    def check(values):
        for variant in ("exp", "sigmoid"):
            f, dv, da = (float(c[0]) for c in viz.fluid_relu_curves(np.array([values["v"]]), values["a"],
                                                                   variant=variant))
            for key, expected in (("f", f), ("dv", dv), ("da", da)):
                _close(values[variant][key], expected)
        curves = page.source("kaf-data")
        f, dv, da = viz.fluid_relu_curves(np.array(curves["v"]), values["a"], variant="exp")
        np.testing.assert_allclose(curves["da_exp"], da, rtol=RTOL, atol=1e-12)

    values = page.values()
    check(values)
    figures = page.page.locator(".kaf-view .bk-Figure")
    sizes = [(b["width"], b["height"]) for b in (figures.nth(i).bounding_box() for i in range(figures.count()))]
    for control, key, times in [(_slider("a (k"), "PageUp", 10), (_slider("probe point"), "PageDown", 10),
                                (_slider("a (k"), "ArrowLeft", 3), (_slider("a (k"), "PageDown", 40),
                                (_slider("probe point"), "PageUp", 40)]:
        pixels = page.figure_pixels()
        page.press(control, key, times)
        values = page.wait_for_change(values)
        check(values)
        after = page.figure_pixels()
        assert any(a != b for a, b in zip(pixels, after)), f"{control} {key}: no figure changed"
        # the read-out's numbers change length (0, -0.3679, 1.234e-5): the figures keep their size
        assert [(b["width"], b["height"]) for b in (figures.nth(i).bounding_box() for i in range(figures.count()))] \
            == sizes
    assert values["a"] == pytest.approx(-1.53) and values["v"] == pytest.approx(0.5)
    _check_slider_names(page, {"a (k = eᵃ)": values["a"], "probe point v": values["v"]})
    # the browser's read-out format is kaf.viz.views._fmt's (0 below the tolerance included)
    numbers = [0.0, 1e-318, -3.267e-16, -9.99e-13, 1e-12, -2.5e-11, 0.0001234, 123456, 1e21, 9.9996, -0.0652731]
    module = (ROOT / "kaf" / "viz" / "views.mjs").read_text(encoding="utf-8")
    shown = page.page.evaluate(
        """async ([code, xs]) => { const url = 'data:text/javascript;base64,' + btoa(unescape(encodeURIComponent(code)));
             const m = await import(url); return xs.map(m.fmt); }""", [module, numbers])
    assert shown == [views._fmt(x) for x in numbers]
    page.check_clean()


def _check_slider_names(page, expected: dict):
    """Each slider's handle is named by its title and announces the value it shows (h, not log10 h)."""
    for title, value in expected.items():
        handle = page.page.locator(_slider(title))
        assert handle.get_attribute("aria-label") == title
        text = handle.get_attribute("aria-valuetext")
        assert float(text) == pytest.approx(value, rel=5e-3, abs=5e-3), (title, text, value)


def test_curves_view_toggles_curves_switches_quantity_and_hovers_values(browser):
    from kaf.experiments import analysis

    page = _open_view(browser, "curves")
    table = analysis.load("baselines")
    for dataset, output in (("iris", "kaf"), ("house", "selu"), ("mnist", "sigmoid")):
        shipped = page.source(f"kaf-curve|{dataset}|{output}")
        expected = table[(table.dataset == dataset) & (table.output == output)].groupby("epoch").test_metric
        np.testing.assert_allclose(shipped["mean_test_metric"], expected.mean().to_numpy(), rtol=RTOL)
        np.testing.assert_allclose(shipped["sd_test_metric"], expected.std().fillna(0.0).to_numpy(), rtol=RTOL,
                                   atol=1e-7)

    visible = """(name) => { const out = [];
        for (const d of Bokeh.documents) for (const m of d.all_models) {
          const s = m.glyph === undefined ? null : m.data_source;
          if (s && typeof s.name === "string" && s.name.endsWith("|" + name)) out.push(m.visible); }
        return out; }"""
    assert set(page.page.evaluate(visible, "mish")) == {False}
    checkbox = page.page.locator(".bk-CheckboxGroup label:has-text('mish') input")
    pixels = page.figure_pixels()
    checkbox.focus()
    page.page.keyboard.press("Space")
    page.page.wait_for_function(f"(name) => !({visible})(name).includes(false)", arg="mish")
    assert len(page.page.evaluate(visible, "mish")) == 8  # line and band, in every panel
    assert pixels != page.figure_pixels()

    pixels = page.figure_pixels()
    page.press(".bk-Select select", "ArrowDown")  # test metric -> training loss
    page.page.wait_for_function("() => Bokeh.documents.flatMap((d) => [...d.all_models])"
                                ".some((m) => m.axis_label === 'training loss')")
    shipped = page.source("kaf-curve|wine|kaf")
    np.testing.assert_array_equal(shipped["y"], shipped["mean_train_loss"])
    assert pixels != page.figure_pixels()

    # hover the iris panel's K-AF curve at epoch 50: the tooltip gives its mean training loss
    expected = table[(table.dataset == "iris") & (table.output == "kaf") & (table.epoch == 50)].train_loss.mean()
    page.page.locator(".kaf-view .bk-Figure").first.scroll_into_view_if_needed()
    point = page.page.evaluate(
        """() => {
          const view = [...Bokeh.index.all_views()].find((v) => v.model.title && v.model.title.text === 'iris' && v.frame);
          const canvas = view.canvas_view.el.getBoundingClientRect();
          const data = view.model.renderers.find((r) => r.data_source.name === 'kaf-curve|iris|kaf').data_source.data;
          const i = Array.from(data.epoch).indexOf(50);
          return {x: canvas.left + view.frame.x_scale.compute(50), y: canvas.top + view.frame.y_scale.compute(data.y[i])};
        }""")
    page.page.mouse.move(point["x"], point["y"])
    tooltip = page.page.locator(".bk-tooltip-content")
    tooltip.first.wait_for(timeout=5_000)
    text = tooltip.first.inner_text()
    assert "kaf" in text and "50" in text and f"{expected:.4f}" in text, text
    page.check_clean()
