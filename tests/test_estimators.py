"""Ichimura's SLS, LOO-CV bandwidth and K-AF-tron recover known single-index models."""

import math

import numpy as np
import pytest
import torch

from kaf.estimators import (
    bernoulli_nll,
    ichimura,
    kaf_tron,
    klein_spady,
    klein_spady_objective,
    loo_cv_bandwidth,
    nadaraya_watson,
    rule_of_thumb_bandwidth,
)

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
    with pytest.raises(ValueError, match="no point has a neighbour within it"):
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


# --------------------------------------------------------------------------- Klein and Spady


def bump(v):
    """A non-monotone link: P(y = 1 | v) rises and falls."""
    return 0.1 + 0.8 * torch.exp(-2 * (v - 0.3) ** 2)


def binary_single_index(n=500, seed=0, link=bump):
    """Skewed covariates (exponential, log-normal, normal; standardised), y ~ Bernoulli(link(x·w))."""
    g = torch.Generator().manual_seed(seed)
    X = torch.stack([torch.empty(n, dtype=torch.float64).exponential_(generator=g),
                     torch.randn(n, generator=g, dtype=torch.float64).exp(),
                     torch.randn(n, generator=g, dtype=torch.float64)], 1)
    X = (X - X.mean(0)) / X.std(0)
    y = torch.bernoulli(link(X @ W_TRUE), generator=g)
    return X, y


def sklearn_logit_direction(X, y, l2=1e-4):
    from sklearn.linear_model import LogisticRegression

    # sklearn minimises C * sum(log-loss) + |b|^2 / 2, i.e. mean log-loss + |b|^2 / (2 C n)
    lr = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=10_000).fit(X.numpy(), y.numpy())
    w = torch.tensor(lr.coef_[0], dtype=torch.float64)
    return w / w.norm()


def numpy_ks_objective(X, y, w, h, trim):
    """The leave-one-out trimmed Bernoulli log-likelihood, written out with loops."""
    X, y, w = X.numpy(), y.numpy(), w.numpy()
    z = X @ (w / np.linalg.norm(w))
    total = 0.0
    for i in range(len(y)):
        a = -0.5 * ((z - z[i]) / h) ** 2
        a[i] = -np.inf  # leave i out
        k = np.exp(a - a.max())  # the common factor exp(max) cancels; without it a lone point gives 0/0
        p = (k @ y) / k.sum()
        p = trim + (1 - 2 * trim) * p
        total -= y[i] * np.log(p) + (1 - y[i]) * np.log(1 - p)
    return total / len(y)


def test_klein_spady_recovers_direction_where_logit_is_off():
    X, y = binary_single_index()
    w_logit = sklearn_logit_direction(X, y)
    # logistic regression misreads a non-monotone link on skewed regressors
    assert abs(float(w_logit @ W_TRUE)) < 0.8
    fit = klein_spady(X, y, n_starts=2, steps=60)
    assert float(fit.w.norm()) == pytest.approx(1.0)
    assert abs(float(fit.w @ W_TRUE)) > 0.98
    # the first start is logistic regression's direction (checked against scikit-learn) ...
    assert float(fit.w_logit @ w_logit) > 1 - 1e-6
    # ... a worse local optimum than the one a random start found
    assert fit.start_losses[0] > fit.loss + 0.02
    assert float(fit.w @ fit.w_logit) >= 0  # sign convention
    # the estimated link is the bump (mirrored if the direction came out with the other sign)
    sign = 1.0 if float(fit.w @ W_TRUE) > 0 else -1.0
    t = torch.linspace(-1.0, 1.5, 11, dtype=torch.float64)
    assert float((fit.link(sign * t) - bump(t)).abs().mean()) < 0.1
    assert torch.allclose(fit.predict(X), fit.link(X @ fit.w))


@pytest.mark.parametrize("trim", [1e-3, 0.05])
def test_klein_spady_objective_matches_numpy(trim):
    X, y = binary_single_index(n=120, seed=3)
    w = torch.tensor([0.3, -1.2, 0.4], dtype=torch.float64)  # any direction; normalised inside
    for h in (0.05, 0.3, 2.0):
        ours = float(klein_spady_objective(X, y, w, h, trim=trim))
        assert ours == pytest.approx(numpy_ks_objective(X, y, w, h, trim), rel=1e-10)
    # the loss a fit reports is the objective at its (w, h), learned or fixed bandwidth
    for kw in (dict(), dict(bandwidth=0.4, learn_bandwidth=False)):
        fit = klein_spady(X, y, n_starts=2, steps=30, trim=trim, **kw)
        assert fit.loss == pytest.approx(numpy_ks_objective(X, y, fit.w, fit.bandwidth, trim), rel=1e-9)
    assert fit.bandwidth == 0.4


def test_klein_spady_line_search_far_out_stays_finite():
    # with this sample and start the line search once probed h ~ 1e-270, where the Gaussian
    # kernel underflows; the bandwidth search is now bounded to a band around its start
    X, y = binary_single_index(n=300, seed=1, link=lambda v: torch.sigmoid(4 * torch.sin(2 * v)))
    fit = klein_spady(X, y, n_starts=2, steps=60, seed=5)
    assert math.isfinite(fit.loss) and all(math.isfinite(v) for v in fit.history)
    assert abs(float(fit.w @ W_TRUE)) > 0.97


def test_bernoulli_nll_against_closed_form_and_torch():
    p = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    out = bernoulli_nll(p, y, trim=0.01)
    q = 0.01 + 0.98 * p.detach()
    expected = -(y * torch.log(q) + (1 - y) * torch.log(1 - q))
    assert torch.allclose(out, expected, rtol=1e-12)
    assert float(out.detach().max()) <= -math.log(0.01) + 1e-12  # bounded by -log(delta)
    out.sum().backward()
    assert bool(torch.isfinite(p.grad).all()) and float(p.grad[0]) < 0  # a confidently wrong point still pulls
    # trim = 0 is the plain binary cross-entropy
    pi = torch.tensor([0.1, 0.4, 0.7], dtype=torch.float64)
    yi = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(bernoulli_nll(pi, yi, trim=0.0),
                          torch.nn.functional.binary_cross_entropy(pi, yi, reduction="none"), rtol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: klein_spady(torch.zeros(6, 2), torch.tensor([0.0, 1, 2, 0, 1, 0])), "y must be binary"),
        (lambda: klein_spady(torch.randn(6, 2), torch.ones(6)), "constant y"),
        (lambda: klein_spady(torch.randn(6, 2), torch.tensor([0.0, 1, 0, 1, 0])), "y must have shape"),
        (lambda: klein_spady(torch.full((6, 2), float("inf")), torch.tensor([0.0, 1, 0, 1, 0, 1])), "finite"),
        (lambda: klein_spady(torch.randn(6), torch.tensor([0.0, 1, 0, 1, 0, 1])), "X must be a 2-D"),
        (lambda: klein_spady(torch.randn(6, 2), torch.tensor([0.0, 1, 0, 1, 0, 1]), trim=0.5), "trim must be"),
        (lambda: klein_spady(torch.randn(6, 2), torch.tensor([0.0, 1, 0, 1, 0, 1]), n_starts=0), "n_starts"),
        (lambda: klein_spady_objective(torch.randn(6, 2), torch.tensor([0.0, 1, 0, 1, 0, 1]), torch.zeros(2), 1.0),
         "w must be"),
        (lambda: klein_spady_objective(torch.randn(6, 2), torch.tensor([0.0, 1, 0, 1, 0, 1]), torch.ones(2), -1.0),
         "h must be"),
        (lambda: bernoulli_nll(torch.rand(3), torch.rand(4)), "y must have the shape"),
    ],
)
def test_klein_spady_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
