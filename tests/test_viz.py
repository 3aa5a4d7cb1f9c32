"""kaf.viz: the slider machinery and the numbers its views show, against slow references."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from kaf import viz  # noqa: E402
from kaf.nn import ACTIVATIONS  # noqa: E402

SMALL = dict(figsize=(2.0, 1.5), dpi=20)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.tanh(z) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return z, y


def test_jshtml_slider_embeds_one_png_per_frame_and_closes_its_figure():
    before = plt.get_fignums()
    seen = []

    def draw(fig, frame):
        seen.append(frame)
        fig.add_subplot().plot([0, 1], [0, frame])

    html = viz.jshtml_slider(draw, [1, 2, 3, 4], **SMALL)
    assert html.data.count("data:image/png") == 4
    assert 'type="range"' in html.data
    assert set(seen) == {1, 2, 3, 4}
    assert plt.get_fignums() == before


@pytest.mark.parametrize("frames", [[], list(range(viz.MAX_FRAMES + 1))])
def test_jshtml_slider_rejects_frame_counts_outside_the_limit(frames):
    with pytest.raises(ValueError, match="frames"):
        viz.jshtml_slider(lambda fig, f: None, frames, **SMALL)


def test_live_slider_needs_a_control():
    with pytest.raises(ValueError, match="sliders"):
        viz.live_slider(lambda fig, p: None)


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


def test_nw_view_static_has_one_frame_per_grid_point_and_live_has_two_sliders():
    z, y = _data()
    html = viz.nw_view(z, y, [0.2, 0.5, 1.0], [5, 40], **SMALL)
    assert html.data.count("data:image/png") == 6
    live = viz.nw_view(z, y, [0.2, 0.5, 1.0], [5, 40], live=True, figsize=(2, 1.5))
    names = {getattr(c, "description", None) for c in live.children}
    assert {"h", "m"} <= names
    plt.close("all")


def test_nw_view_validates_its_inputs():
    z, y = _data()
    with pytest.raises(ValueError, match="shape of z"):
        viz.nw_view(z, y[:-1], [0.5], [5])
    with pytest.raises(ValueError, match="hs must"):
        viz.nw_view(z, y, [0.0], [5])
    with pytest.raises(ValueError, match="1-D"):
        viz.nw_view(torch.zeros(4, 2), y, [0.5], [5])


def test_draw_nw_fit_rejects_a_loo_map_of_the_wrong_shape():
    z, y = _data()
    fig = plt.figure()
    with pytest.raises(ValueError, match="loo must have shape"):
        viz.draw_nw_fit(fig, z, y, 0.5, 5, hs=[0.5, 1.0], ms=[5], loo=np.zeros((2, 2)))
    plt.close(fig)


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


def test_fluid_relu_view_static_and_live():
    html = viz.fluid_relu_view([-2.0, 0.0, 2.0], **SMALL)
    assert html.data.count("data:image/png") == 3
    live = viz.fluid_relu_view([-2.0, 2.0], live=True, figsize=(2, 1.5))
    assert any(getattr(c, "description", None) == "a" for c in live.children)
    with pytest.raises(ValueError, match="a_values"):
        viz.fluid_relu_view([])
    plt.close("all")


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
