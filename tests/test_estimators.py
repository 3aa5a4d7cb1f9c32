"""Ichimura's SLS, LOO-CV bandwidth and K-AF-tron recover known single-index models."""

import math

import numpy as np
import pytest
import torch

from kaf.estimators import ichimura, kaf_tron, loo_cv_bandwidth, nadaraya_watson, rule_of_thumb_bandwidth

W_TRUE = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)


def single_index(n=200, link=lambda z: torch.sin(2 * z), noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = link(X @ W_TRUE) + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


def test_ichimura_recovers_direction_and_link():
    X, y = single_index()
    fit = ichimura(X, y, n_starts=2, steps=60)
    assert float(fit.w.norm()) == pytest.approx(1.0)
    assert float(fit.w @ W_TRUE) > 0.99  # sign agrees with OLS, which agrees with w_true here
    zq = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64)
    assert torch.allclose(fit.link(zq), torch.sin(2 * zq), atol=0.1)
    assert fit.loss < 0.01  # noise variance is 0.0025
    assert fit.history[-1] <= fit.history[0]
    assert len(fit.start_losses) == 2


def test_ichimura_fixed_bandwidth_and_compact_kernel_trim():
    X, y = single_index(n=150, seed=1)
    fit = ichimura(X, y, n_starts=1, steps=40, bandwidth=0.4, learn_bandwidth=False, kernel="epanechnikov")
    assert fit.bandwidth == pytest.approx(0.4)
    assert float(fit.w @ W_TRUE) > 0.98
    assert fit.trimmed >= 0
    # a bandwidth so small that no point has a neighbour: invalid, not a division by zero
    with pytest.raises(ValueError, match="neighbour within the bandwidth"):
        ichimura(X, y, n_starts=1, steps=5, bandwidth=1e-9, learn_bandwidth=False, kernel="uniform")


def test_ichimura_beats_ols_on_a_nonmonotone_link():
    # OLS cannot see a symmetric link; Ichimura can (several starts needed)
    X, y = single_index(n=200, link=lambda z: z.square(), noise=0.05, seed=2)
    fit = ichimura(X, y, n_starts=4, steps=60, seed=3)
    assert abs(float(fit.w @ W_TRUE)) > 0.98


def test_loo_cv_bandwidth_matches_brute_force():
    X, y = single_index(n=60)
    z = X @ W_TRUE
    grid = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    best, g, mse = loo_cv_bandwidth(z, y, grid=grid)
    zn, yn = z.numpy(), y.numpy()
    brute = []
    for h in grid:
        err = []
        for i in range(60):
            w = np.exp(-0.5 * ((zn - zn[i]) / h) ** 2)
            w[i] = 0
            err.append((yn[i] - (w @ yn) / w.sum()) ** 2)
        brute.append(np.mean(err))
    np.testing.assert_allclose(mse.numpy(), brute, rtol=1e-9)
    assert best == grid[int(np.argmin(brute))]
    assert 0.05 < best < 1.6  # an interior optimum on a smooth link


def test_loo_cv_default_grid_and_multi_target():
    X, y = single_index(n=80)
    z = X @ W_TRUE
    Y = torch.stack([y, torch.cos(z)], 1)
    best, grid, mse = loo_cv_bandwidth(z, Y)
    assert grid.shape == mse.shape == (40,)
    assert grid.min() <= best <= grid.max()
    assert float(mse.min()) == pytest.approx(float(mse[grid == best][0]))


def test_rule_of_thumb():
    z = torch.randn(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert rule_of_thumb_bandwidth(z) == pytest.approx(1.06 * float(z.std()) * 500 ** -0.2)
    assert rule_of_thumb_bandwidth(torch.zeros(10)) == 1.0


def test_kaf_tron_recovers_direction_and_converges():
    X, y = single_index(n=200, link=lambda z: torch.sigmoid(3 * z), noise=0.05)
    res = kaf_tron(X, y, steps=60)
    cos = float(res.w @ W_TRUE / res.w.norm())
    assert cos > 0.98
    assert res.weights.shape == (61, 3) and torch.all(res.weights[0] == 0)
    # step 1: every index is 0, so u_1 is the leave-one-out mean of y
    loo_mean = (y.sum() - y) / (len(y) - 1)
    assert res.losses[0] == pytest.approx(float((y - loo_mean).square().mean()))
    assert res.losses[-1] < 0.1 * res.losses[0]
    assert np.all(np.isfinite(res.losses))


def test_kaf_tron_fixed_bandwidth_link_shape():
    X, y = single_index(n=200, link=lambda z: torch.sigmoid(3 * z), noise=0.02, seed=4)
    res = kaf_tron(X, y, steps=80, bandwidth=0.3)
    assert res.bandwidth == 0.3
    # the learned link is increasing along the learned index (a sigmoid-like shape)
    zq = torch.linspace(float(res.index.quantile(0.1)), float(res.index.quantile(0.9)), 7, dtype=torch.float64)
    u = res.link(zq)
    assert torch.all(u[1:] >= u[:-1] - 0.02)
    pred = res.predict(X)
    assert float((pred - y).square().mean()) < 0.01


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ichimura(torch.zeros(5), torch.zeros(5)), "X must be a 2-D"),
        (lambda: ichimura(torch.zeros(5, 2), torch.zeros(4)), "y must have shape"),
        (lambda: ichimura(torch.zeros(5, 2), torch.zeros(5), n_starts=0), "n_starts"),
        (lambda: ichimura(torch.zeros(5, 2), torch.zeros(5), bandwidth=-1.0), "bandwidth"),
        (lambda: ichimura(torch.full((5, 2), float("nan")), torch.zeros(5)), "finite"),
        (lambda: kaf_tron(torch.zeros(5, 2), torch.zeros(5), lr=0.0), "lr must be"),
        (lambda: kaf_tron(torch.zeros(5, 2), torch.zeros(5), w0=torch.zeros(3)), "w0 must have shape"),
        (lambda: loo_cv_bandwidth(torch.zeros(5), torch.zeros(5), grid=[0.1, -1.0]), "grid must be"),
        (lambda: loo_cv_bandwidth(torch.zeros(5), torch.zeros(6)), "y must have 5 rows"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
