"""kaf.viz: the numbers the views show (against slow references), and what each view ships
to the browser (data, nestedness, initial state equal to kaf's numbers).

The browser-side computation itself is held against kaf in tests/test_browser.py."""

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from kaf import viz  # noqa: E402
from kaf.estimators import KERNELS, kernel_density, nadaraya_watson  # noqa: E402
from kaf.nn import ACTIVATIONS  # noqa: E402
from kaf.viz import views  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.tanh(z) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return z, y


def _model(view, cls_name, **match):
    """The one model of a view's layout of type ``cls_name`` whose properties match."""
    found = [m for m in view.layout.references() if type(m).__name__ == cls_name
             and all(getattr(m, k, None) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one {cls_name} with {match}, found {len(found)}"
    return found[0]


def _readout(view):
    texts = [m.text for m in view.layout.references() if type(m).__name__ == "Div" and "kaf-readout" in m.text]
    assert len(texts) == 1
    return json.loads(re.search(r"data-values='([^']*)'", texts[0]).group(1))


# --------------------------------------------------------------------------- numbers


def test_calc_subset_is_nested_seeded_and_validated():
    a, b = viz.calc_subset(50, 10, seed=3), viz.calc_subset(50, 30, seed=3)
    assert torch.equal(b[:10], a)
    assert len(set(b.tolist())) == 30
    assert not torch.equal(viz.calc_subset(50, 10, seed=4), a)
    with pytest.raises(ValueError, match="m must"):
        viz.calc_subset(5, 6)
    with pytest.raises(ValueError, match="m must"):
        viz.calc_subset(5, 1)


def test_nw_calc_fit_matches_numpy_on_the_calc_points():
    z, y = _data()
    calc = viz.calc_subset(40, 12, seed=1)
    q = torch.linspace(-2, 2, 7, dtype=torch.float64)
    zc, yc = z[calc].numpy(), y[calc].numpy()
    w = np.exp(-0.5 * ((zc[None, :] - q.numpy()[:, None]) / 0.3) ** 2)
    expected = (w @ yc) / w.sum(axis=1)
    np.testing.assert_allclose(viz.nw_calc_fit(q, z, y, 0.3, calc).numpy(), expected, rtol=1e-12)


def test_nw_loo_mse_matches_a_slow_loop():
    z, y = _data()
    calc = viz.calc_subset(40, 15, seed=2)
    h = 0.4
    calc_set = set(calc.tolist())
    errors = []
    for i in range(40):
        refs = [j for j in calc_set if j != i]  # a calc point never predicts itself
        w = np.exp(-0.5 * ((z[refs].numpy() - z[i].item()) / h) ** 2)
        errors.append((y[i].item() - (w @ y[refs].numpy()) / w.sum()) ** 2)
    assert viz.nw_loo_mse(z, y, h, calc) == pytest.approx(np.mean(errors), rel=1e-12)


def test_nw_loo_grid_shape_and_values():
    z, y = _data()
    grid = viz.nw_loo_grid(z, y, [0.1, 1.0], [5, 40], seed=0)
    assert grid.shape == (2, 2)
    assert grid[1, 1] == pytest.approx(viz.nw_loo_mse(z, y, 1.0, viz.calc_subset(40, 40, seed=0)))


def _loo_gradient_numpy(z, y, h, calc):
    """dL/dz from the closed forms of the K-AF chapter (eq-kaf-grad), written out in numpy."""
    z, y, calc = z.numpy(), y.numpy(), calc.numpy()
    n, grad, loss = len(z), np.zeros(len(z)), 0.0
    for i in range(n):
        refs = calc[calc != i]
        p = np.exp(-0.5 * ((z[refs] - z[i]) / h) ** 2)
        p /= p.sum()
        g = p @ y[refs]
        loss += (g - y[i]) ** 2 / n
        term = 2 * (g - y[i]) / n / h**2 * p * (z[refs] - z[i]) * (y[refs] - g)
        grad[i] += term.sum()
        np.subtract.at(grad, refs, term)
    return loss, grad


@pytest.mark.parametrize("h", [0.05, 0.4, 3.0])
def test_kaf_loo_gradient_matches_the_closed_form_and_finite_differences(h):
    z, y = _data(30)
    calc = viz.calc_subset(30, 12, seed=5)
    loss, grad = viz.kaf_loo_gradient(z, y, h, calc)
    ref_loss, ref_grad = _loo_gradient_numpy(z, y, h, calc)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-9, atol=1e-15)
    eps = 1e-6
    for i in (0, int(calc[0]), 17):  # a query only, a calc point, another
        dz = torch.zeros(30, dtype=torch.float64)
        dz[i] = eps
        fd = (viz.nw_loo_mse(z + dz, y, h, calc) - viz.nw_loo_mse(z - dz, y, h, calc)) / (2 * eps)
        assert grad[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-10)


def test_kaf_loo_gradient_of_several_bandwidths_equals_one_at_a_time():
    z, y = _data(30)
    calc = viz.calc_subset(30, 10, seed=1)
    hs = [0.02, 0.3, 5.0]
    loss, grad = viz.kaf_loo_gradient(z, y, hs, calc)
    assert loss.shape == (3,) and grad.shape == (30, 3)
    for k, h in enumerate(hs):
        one_loss, one_grad = viz.kaf_loo_gradient(z, y, h, calc)
        assert float(loss[k]) == pytest.approx(one_loss, rel=1e-13)
        torch.testing.assert_close(grad[:, k], one_grad, rtol=1e-12, atol=1e-300)
    typical = viz.typical_gradient(z, y, hs, calc)
    assert typical[1] == pytest.approx(viz.typical_gradient(z, y, 0.3, calc), rel=1e-13)


def test_typical_gradient_is_n_times_the_lower_median():
    z, y = _data(30)
    calc = viz.calc_subset(30, 10, seed=1)
    _, grad = viz.kaf_loo_gradient(z, y, 0.3, calc)
    lower_median = np.sort(np.abs(grad.numpy()))[(30 - 1) // 2]  # torch.median's convention (even n)
    assert viz.typical_gradient(z, y, 0.3, calc) == pytest.approx(30 * lower_median, rel=1e-15)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_density_integrates_to_one_and_matches_the_formula(kernel):
    z_ref = torch.tensor([-1.0, 0.2, 0.25, 2.0], dtype=torch.float64)
    x = torch.linspace(-6, 7, 26001, dtype=torch.float64)
    p = kernel_density(x, z_ref, 0.7, kernel=kernel)
    assert float(torch.trapezoid(p, x)) == pytest.approx(1.0, abs=1e-3)  # jumps of the uniform kernel
    u = (0.3 - z_ref.numpy()) / 0.7
    k = {"gaussian": np.exp(-u**2 / 2) / np.sqrt(2 * np.pi), "epanechnikov": 0.75 * (1 - u**2) * (abs(u) <= 1),
         "triangular": (1 - abs(u)) * (abs(u) <= 1), "uniform": 0.5 * (abs(u) <= 1)}[kernel]
    at = kernel_density(torch.tensor([0.3], dtype=torch.float64), z_ref, 0.7, kernel=kernel)
    assert float(at) == pytest.approx(k.mean() / 0.7, rel=1e-12)


def test_kernel_density_gaussian_matches_scipy_and_validates():
    from scipy.stats import gaussian_kde

    z_ref = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)
    h = 0.4
    kde = gaussian_kde(z_ref.numpy(), bw_method=h / z_ref.numpy().std(ddof=1))
    np.testing.assert_allclose(kernel_density(x, z_ref, h).numpy(), kde(x.numpy()), rtol=1e-10)
    with pytest.raises(ValueError, match="kernel must"):
        kernel_density(x, z_ref, h, kernel="cosine")
    with pytest.raises(ValueError, match="h must"):
        kernel_density(x, z_ref, 0.0)
    with pytest.raises(ValueError, match="z_ref must hold"):
        kernel_density(x, z_ref[:0], h)


@pytest.mark.parametrize("a", [-1.0, 0.0, 1.5])
def test_fluid_relu_curves_match_the_closed_forms(a):
    v = np.linspace(-5, 3, 33)
    f, dv, da = viz.fluid_relu_curves(v, a, variant="exp")
    s = np.exp(-a)
    neg = v < 0
    t = np.minimum(v, 0) * s
    np.testing.assert_allclose(f, np.where(neg, v * np.exp(v * s), v), atol=1e-12)
    np.testing.assert_allclose(dv, np.where(neg, (1 + t) * np.exp(t), 1.0), atol=1e-12)
    np.testing.assert_allclose(da, np.where(neg, -(v**2) * s * np.exp(v * s), 0.0), atol=1e-12)


def test_fluid_relu_curves_sigmoid_variant_by_finite_differences():
    v = np.linspace(-4, 2, 13)
    a, eps = 0.3, 1e-6
    f, dv, da = viz.fluid_relu_curves(v, a, variant="sigmoid")
    f_plus, _, _ = viz.fluid_relu_curves(v, a + eps, variant="sigmoid")
    f_minus, _, _ = viz.fluid_relu_curves(v, a - eps, variant="sigmoid")
    np.testing.assert_allclose(da, (f_plus - f_minus) / (2 * eps), atol=1e-7)
    expected = np.where(v < 0, 2 * v / (1 + np.exp(-v * np.exp(-a))), v)
    np.testing.assert_allclose(f, expected, atol=1e-12)


def test_plot_activations_draws_every_registered_activation():
    fig = viz.plot_activations(panel_size=(1.0, 1.0))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == list(ACTIVATIONS)
    relu_ax = fig.axes[titles.index("relu")]
    v, f = relu_ax.lines[0].get_data()
    np.testing.assert_allclose(f, np.maximum(v, 0))
    plt.close(fig)
    with pytest.raises(ValueError, match="names must"):
        viz.plot_activations(["nope"])


# --------------------------------------------------------------------------- what the views ship


def _sin_data(n=60):
    g = torch.Generator().manual_seed(0)
    z = torch.rand(n, generator=g, dtype=torch.float64) * 6 - 3
    y = torch.sin(1.5 * z) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return z, y


def test_bandwidth_view_ships_the_data_and_starts_at_kafs_numbers():
    z, y = _sin_data()
    view = viz.bandwidth_view(z, y, truth=lambda t: torch.sin(1.5 * t), noise_sd=0.3, h=0.3, n_h=21)
    data = _model(view, "ColumnDataSource", name="kaf-data").data
    np.testing.assert_array_equal(data["z"], z.numpy())
    # the browser rebuilds y as signal + sd * eps: at the initial sd that is the data itself
    np.testing.assert_allclose(data["signal"] + 0.3 * data["eps"], y.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(data["y"], data["signal"] + 0.3 * data["eps"])
    values = _readout(view)
    assert values == view.values
    assert values["h"] == pytest.approx(0.3, rel=0.05)  # snapped to the slider's grid
    ids = torch.arange(len(z))
    yy = torch.from_numpy(data["y"])
    loo = nadaraya_watson(z[:, None], z[:, None], yy[:, None], values["h"], query_ids=ids, ref_ids=ids)[:, 0]
    assert values["cv"] == pytest.approx(float((loo - yy).square().mean()), rel=1e-12)
    curve = next(m for m in view.layout.references() if type(m).__name__ == "ColumnDataSource" and "cv" in m.data
                 and len(m.data["h"]) == 21)
    assert values["best_h"] == curve.data["h"][int(np.argmin(curve.data["cv"]))]
    h_slider = _model(view, "Slider", title="bandwidth h")
    assert (h_slider.end - h_slider.start) / h_slider.step >= 50  # log scale, >= 50 positions
    assert 10 ** h_slider.value == values["h"]
    assert list(_model(view, "Select", title="kernel").options) == list(KERNELS)
    assert _model(view, "Slider", title="noise sd σ").value == 0.3


def test_bandwidth_view_validates():
    z, y = _sin_data()
    with pytest.raises(ValueError, match="noise_sd"):
        viz.bandwidth_view(z, y, truth=torch.sin, noise_sd=0.0)
    with pytest.raises(ValueError, match="kernel"):
        viz.bandwidth_view(z, y, truth=torch.sin, noise_sd=0.3, kernel="cosine")
    with pytest.raises(ValueError, match="z and y"):
        viz.bandwidth_view(z, y[:-1], truth=torch.sin, noise_sd=0.3)
    with pytest.raises(ValueError, match="lo <= value <= hi"):
        viz.bandwidth_view(z, y, truth=torch.sin, noise_sd=0.3, h=50.0)


def test_kaf_view_ships_nested_calc_sets_and_starts_at_kafs_numbers():
    z, y = _sin_data(50)
    view = viz.kaf_view(z, y, h=0.3, m=12, ref_ms=(5, 20), n_h=11, seed=4)
    data = _model(view, "ColumnDataSource", name="kaf-data").data
    order = torch.as_tensor(data["order"]).long()
    for m in (2, 12, 33, 50):  # every prefix of the shipped order is kaf's calc set: moving m up adds points
        assert torch.equal(order[:m], viz.calc_subset(50, m, seed=4))
    values = _readout(view)
    assert values == view.values and values["m"] == 12
    calc = viz.calc_subset(50, 12, seed=4)
    assert values["loo_mse"] == pytest.approx(viz.nw_loo_mse(z, y, values["h"], calc), rel=1e-12)
    assert values["typical_gradient"] == pytest.approx(viz.typical_gradient(z, y, values["h"], calc), rel=1e-12)
    calc_points = next(m for m in view.layout.references()
                       if type(m).__name__ == "ColumnDataSource" and set(m.data) == {"z", "y"})
    np.testing.assert_array_equal(calc_points.data["z"], z[calc].numpy())
    m_slider = _model(view, "Slider", title="calc size m")
    assert (m_slider.start, m_slider.end, m_slider.step, m_slider.value) == (2, 50, 1, 12)
    curve = next(m for m in view.layout.references() if type(m).__name__ == "ColumnDataSource" and "grad" in m.data
                 and len(m.data["h"]) == 11)
    np.testing.assert_allclose(curve.data["grad"], viz.typical_gradient(z, y, curve.data["h"], calc), rtol=1e-12)
    with pytest.raises(ValueError, match="m must"):
        viz.kaf_view(z, y, m=51)


def test_fluid_relu_view_starts_at_fluid_relus_numbers():
    view = viz.fluid_relu_view(a=0.7, probe=-1.3)
    values = _readout(view)
    assert values == view.values
    for variant in ("exp", "sigmoid"):
        f, dv, da = (float(c[0]) for c in viz.fluid_relu_curves(np.array([-1.3]), 0.7, variant=variant))
        assert values[variant] == {"f": f, "dv": dv, "da": da}
    curves = _model(view, "ColumnDataSource", name="kaf-data").data
    f, dv, da = viz.fluid_relu_curves(curves["v"], 0.7, variant="sigmoid")
    np.testing.assert_array_equal(curves["da_sigmoid"], da)
    assert _model(view, "Slider", title="a (k = eᵃ)").step == 0.01
    with pytest.raises(ValueError, match="probe"):
        viz.fluid_relu_view(probe=10.0)


def _table():
    rows = []
    for panel, metric in (("iris", "accuracy"), ("house", "rmse")):
        for output in ("kaf", "sigmoid", "relu"):
            for seed in range(3):
                for epoch in (1, 2, 3):
                    rows.append(dict(dataset=panel, output=output, seed=seed, epoch=epoch, metric=metric,
                                     test_metric=epoch * 0.1 + seed * 0.01, train_loss=1 / epoch + seed, test_loss=0.5))
    return pd.DataFrame(rows)


def test_curves_view_ships_mean_and_sd_per_curve_and_shows_what_it_is_told():
    table = _table()
    view = viz.curves_view(table, shown=["kaf", "relu"])
    sources = {m.name: m.data for m in view.layout.references()
               if type(m).__name__ == "ColumnDataSource" and (m.name or "").startswith("kaf-curve")}
    assert len(sources) == 6
    d = sources["kaf-curve|house|sigmoid"]
    sub = table[(table.dataset == "house") & (table.output == "sigmoid")].groupby("epoch").train_loss
    np.testing.assert_allclose(d["mean_train_loss"], sub.mean().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(d["sd_train_loss"], sub.std().to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(d["y"], d["mean_test_metric"])
    lines = [m for m in view.layout.references() if type(m).__name__ == "GlyphRenderer"
             and type(m.glyph).__name__ == "Line"]
    assert {(r.data_source.name.split("|")[2], r.visible) for r in lines} == {
        ("kaf", True), ("relu", True), ("sigmoid", False)}
    labels = [m.axis_label for m in view.layout.references() if type(m).__name__ == "LinearAxis"]
    assert "test accuracy" in labels and "test RMSE" in labels
    with pytest.raises(ValueError, match="shown must"):
        viz.curves_view(table, shown=["nope"])
    with pytest.raises(ValueError, match="columns"):
        viz.curves_view(table.drop(columns="metric"))


# --------------------------------------------------------------------------- how views reach the page


def test_views_attach_the_one_javascript_module():
    view = viz.fluid_relu_view()
    callbacks = [m for m in view.layout.references() if type(m).__name__ == "CustomJS" and "view" in m.args]
    assert len(callbacks) == 1  # one callback, on every control of the view
    assert callbacks[0].code == (ROOT / "kaf" / "viz" / "views.mjs").read_text() and callbacks[0].module is True
    controls = [m for m in view.layout.references() if type(m).__name__ == "Slider"]
    assert len(controls) == 2 and all(callbacks[0] in c.js_property_callbacks["change:value"] for c in controls)


def test_view_html_is_light_unless_a_live_notebook_asks_for_bokehjs(monkeypatch):
    view = viz.fluid_relu_view()
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("KAF_BOKEHJS", raising=False)
    light = view._repr_mimebundle_()["text/html"]
    assert 'class="kaf-view"' in light and len(light) < 200_000
    assert "Anaconda" not in light  # BokehJS's licence header: the library is not inlined
    assert "</script" not in light.split('type="application/json"')[1].split("</script>")[0]  # JSON stays inside
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/reader/book/fluid_relu.ipynb")  # set by a Jupyter server
    live = view._repr_mimebundle_()["text/html"]
    assert "Anaconda" in live and len(live) > 1_000_000
    assert live.endswith(light.replace(view.element_id, live.split('class="kaf-view" id="')[1].split('"')[0]))
    monkeypatch.setenv("KAF_BOKEHJS", "page")
    assert view._repr_mimebundle_()["text/html"] == light
    monkeypatch.setenv("KAF_BOKEHJS", "sometimes")
    with pytest.raises(ValueError, match="KAF_BOKEHJS"):
        view.html()


# what JavaScript's x.toPrecision(4) prints (checked in node), and 0 below the zero tolerance;
# tests/test_browser.py runs views.mjs's own fmt on these numbers
FORMATTED = [
    (0.0001234, "0.0001234"), (1.234e-7, "1.234e-7"), (123456, "1.235e+5"), (0.5, "0.5000"), (1, "1.000"),
    (-0.06527314656006893, "-0.06527"), (0.000999, "0.0009990"), (99999, "1.000e+5"), (1e21, "1.000e+21"),
    (123.456, "123.5"), (1e-5, "0.00001000"), (0.0, "0"), (9.9996, "10.00"), (1.527e-318, "0"),
    (-3.267e-16, "0"), (-9.99e-13, "0"), (1e-12, "1.000e-12"), (-2.5e-11, "-2.500e-11")]


@pytest.mark.parametrize("x, js", FORMATTED)
def test_python_readouts_format_numbers_as_the_browser_does(x, js):
    assert views._fmt(x) == js


def test_the_zero_tolerance_is_stated_alike_in_python_and_javascript():
    module = (ROOT / "kaf" / "viz" / "views.mjs").read_text(encoding="utf-8")
    assert f"const ZERO_TOL = {views.ZERO_TOL:g};" in module


def test_vendored_bokehjs_is_the_installed_bokehs():
    import bokeh

    folder = Path(bokeh.__file__).parent / "server" / "static" / "js"
    vendored = [ROOT / "book" / "vendor" / name for name in views.bokehjs_files()]
    for path, original in zip(vendored, ("bokeh.min.js", "bokeh-widgets.min.js")):
        assert path.read_bytes() == (folder / original).read_bytes(), f"re-vendor {path.name} from bokeh {bokeh.__version__}"


def test_notebooks_are_light_and_carry_no_inline_bokehjs():
    for path in sorted((ROOT / "book").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert len(text.encode()) <= 2_000_000, f"{path.name} is over 2 MB"
        assert "Copyright (c) Anaconda" not in text, f"{path.name} carries BokehJS inline: re-execute it headless"


def test_bokehjs_files_name_the_installed_version():
    import bokeh

    assert all(bokeh.__version__ in name for name in views.bokehjs_files())


# --------------------------------------------------------------------------- the verdict overview


def _verdicts(rows):
    return pd.DataFrame(rows, columns=["claim_id", "source", "claim", "verdict", "evidence", "chapter"])


def _rows_of(html):
    """(claim id, verdict text, href, evidence) of each claim row of a verdict table."""
    pattern = re.compile(r'<tr class="kaf-depth-(\d)"><td class="kaf-v"><a [^>]*href="([^"]*)"[^>]*>([^<]*)</a>'
                         r'</td><td><details><summary>(.*?) <span class="kaf-id">([^<]*)</span></summary>'
                         r'<p class="kaf-evidence">(.*?) \(<a href="([^"]*)">')
    return [dict(depth=int(m[0]), href=m[1], verdict=m[2], claim=m[3], claim_id=m[4], evidence=m[5], link=m[6])
            for m in pattern.findall(html)]


def test_verdict_table_counts_every_label_and_gives_each_claim_a_row_with_its_evidence_on_demand():
    table = _verdicts([
        ("t-1", "thesis", "A holds everywhere", "depends", "holds on 1 of 2", "book/experiments/a"),
        ("t-1-x", "thesis", "A on x", "holds", "acc 0.98 > 0.93", "book/experiments/a"),
        ("t-1-x-y", "thesis", "A on x, y", "inconclusive (machine-dependent)", "interval [-0.1, 0.2]",
         "book/experiments/a"),
        ("t-2", "thesis", "B <beats> C & D", "fails", "", "book/experiments/b"),
        ("f-1", "paper", "F", "pending", None, "book/fluid_relu"),
        ("t-1-z", "book", "A on z", "holds", "acc 0.9", "book/experiments/a"),
    ])
    anchors = {"book/experiments/a": {"title": "Chapter A", "section": "Verdict on (6)", "id": "verdict-on-6"}}
    html = viz.verdict_table(table, page="book/intro", anchors=anchors).html
    counts = dict(re.findall(r'<li><span class="kaf-chip kaf-chip-[^"]*" [^>]*>([a-z]+): (\d+)</span></li>', html))
    assert counts == {"holds": "2", "fails": "1", "depends": "1", "inconclusive": "1", "pending": "1"}
    assert "<strong>6 claims</strong>" in html
    rows = _rows_of(html)
    assert [r["claim_id"] for r in rows] == ["t-1", "t-1-x", "t-1-x-y", "t-2", "f-1", "t-1-z"]
    assert [r["depth"] for r in rows] == [0, 1, 2, 0, 0, 0]  # t-1-z: its claim is another source's
    assert rows[2]["verdict"] == "inconclusive (machine-dependent)" and "kaf-chip-inconclusive" in html
    assert rows[0]["href"] == rows[0]["link"] == "experiments/a.html#verdict-on-6"
    assert rows[4]["href"] == "fluid_relu.html"  # no anchor known: the top of the page
    assert rows[1]["evidence"] == "acc 0.98 &gt; 0.93"
    assert rows[3]["claim"] == "B &lt;beats&gt; C &amp; D" and rows[3]["evidence"] == "No evidence recorded."
    assert 'aria-label="depends: see Chapter A, Verdict on (6)"' in html
    # grouped by source, in order of appearance, each group with its size
    assert re.findall(r'<th scope="colgroup" colspan="2">([^<]*) <span class="kaf-id">\((\d+)\)', html) == [
        ("thesis", "4"), ("paper", "1"), ("book", "1")]
    # a page deeper in the book links up
    assert _rows_of(viz.verdict_table(table, page="book/experiments/runner").html)[3]["href"] == "b.html"


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns="evidence"), "missing \\['evidence'\\]"),
    (lambda t: t.assign(verdict=["holds", " "]), "row 1 \\(b\\): empty \\['verdict'\\]"),
    (lambda t: t.assign(chapter=[None, "book/x"]), "row 0 \\(a\\): empty \\['chapter'\\]"),
    (lambda t: t.assign(claim_id=["a", "a"]), "claim ids repeat: \\['a'\\]"),
])
def test_verdict_table_rejects_a_malformed_table(change, message):
    table = _verdicts([("a", "s", "A", "holds", "e", "book/x"), ("b", "s", "B", "fails", "e", "book/x")])
    with pytest.raises(ValueError, match=message):
        viz.verdict_table(change(table))


def test_the_committed_verdicts_fit_the_overview():
    table = pd.read_csv(ROOT / "results" / "verdicts.csv")
    anchors = viz.section_anchors(table.chapter, ROOT)
    html = viz.verdict_table(table, anchors=anchors).html
    rows = _rows_of(html)
    by_source = sorted(range(len(table)), key=lambda i: list(dict.fromkeys(table.source)).index(table.source[i]))
    assert [r["claim_id"] for r in rows] == list(table.claim_id[by_source])
    counts = re.findall(r'<li><span class="kaf-chip [^>]*>[a-z]+: (\d+)</span></li>', html)
    assert sum(map(int, counts)) == len(table)


def test_section_anchors_find_the_verdict_heading_as_sphinx_names_it(tmp_path):
    def notebook(path, *markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
        cells = [{"cell_type": "markdown", "metadata": {}, "source": m} for m in markdown]
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    notebook(tmp_path / "book" / "a.ipynb", "# Plateaus\n\ntext\n\n## Why", "## Verdict on (6)\n\n## Verdicts")
    notebook(tmp_path / "book" / "b.ipynb", "# Axes\n\n## Learning rate")
    assert viz.section_anchors(["book/a", "book/b", "book/a"], tmp_path) == {
        "book/a": {"title": "Plateaus", "section": "Verdict on (6)", "id": "verdict-on-6"},
        "book/b": {"title": "Axes", "section": "", "id": ""}}
    with pytest.raises(ValueError, match="book/c"):
        viz.section_anchors(["book/c"], tmp_path)


def test_the_scale_note_shows_in_a_quick_build_only():
    note = viz.scale_note("Here: 300 points & less.", scale="quick")
    assert "quick scale" in note._repr_html_() and "Here: 300 points &amp; less." in note.html
    assert "KAF_SCALE=full" in note.html
    assert viz.scale_note("Here: 300 points.", scale="full") is None


# --------------------------------------------------------------------------- legible figures


@pytest.mark.parametrize("draw", [
    lambda a, p: p.summary_bars(a.load("baselines")),
    lambda a, p: p.curves(a.load("likelihood"), y="test_metric", hue="loss"),
    lambda a, p: p.link_shape(a.load("link_shape_curves"), a.load("link_shape_fit"), "mnist"),
    lambda a, p: p.singular(a.load("singular")),
    lambda a, p: p.house_scale(a.load("house_scale")),
    lambda a, p: p.lr_sweep(a.load("lr_sweep")),
    lambda a, p: p.fluid_a(a.load("fluid_relu_a")),
    lambda a, p: viz.plot_activations(),
], ids=["summary_bars", "curves", "link_shape", "singular", "house_scale", "lr_sweep", "fluid_a", "activations"])
def test_experiment_figures_are_legible_at_the_column_width(draw):
    from kaf.experiments import analysis, plots

    fig = draw(analysis, plots)
    try:
        assert fig.get_size_inches()[0] <= plots.COLUMN_INCHES + 1e-9
        assert plots.min_text_px(fig) >= 9.0
    finally:
        plt.close(fig)


def test_min_text_px_measures_the_shrunk_text_of_a_wide_figure():
    from kaf.experiments import plots

    fig, ax = plt.subplots(figsize=(14.4, 3), dpi=100)
    ax.plot([0, 1], [0, 1])
    ax.tick_params(labelsize=8)
    ax.set_title("t", fontsize=20)
    # 8 pt at 100 dpi is 11.1 px; the PNG, cropped to its content (about 1150 of the figure's
    # 1440 px), is shown 688 px wide: the labels shrink to about 7 px
    assert 6.0 < plots.min_text_px(fig, column_px=688) < 8.0
    assert plots.min_text_px(fig, column_px=5000) == pytest.approx(8 * 100 / 72)
    plt.close(fig)
