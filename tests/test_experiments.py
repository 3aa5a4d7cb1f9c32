"""Tests of the experiment runner (kaf.experiments): columns, determinism, metrics, edge cases."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kaf.experiments import ExperimentConfig, run
from kaf.experiments.models import AppendixBBody, init_weights

TIMING = ["epoch_time", "wall_time"]
RESULT_COLUMNS = {
    "epoch", "batch_loss", "train_loss", "test_loss", "metric", "train_metric", "test_metric",
    "grad_norm", "grad_norm_min", "h", "index_std", "saturated_frac", "diverged", "epoch_time", "wall_time",
    "data", "n_train", "n_test", "seed", "output", "dataset", "lr",
}


@pytest.mark.parametrize("output", ["kaf", "sigmoid"])
def test_two_epoch_run_has_expected_columns_and_is_reproducible(output):
    cfg = ExperimentConfig(dataset="iris", output=output, epochs=2, seed=3)
    a = run(cfg)
    b = run(cfg)
    assert RESULT_COLUMNS <= set(a.columns)
    assert list(a.epoch) == [1, 2]
    assert (a.metric == "accuracy").all()
    assert not a.diverged.any()
    assert ((a.test_metric >= 0) & (a.test_metric <= 1)).all()
    assert (a.wall_time.diff().dropna() > 0).all()
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))
    c = run(cfg.replace(seed=4))
    assert not np.allclose(a.train_loss, c.train_loss)


def test_kaf_rows_record_bandwidth_and_baselines_do_not():
    kaf = run(ExperimentConfig(dataset="iris", output="kaf", epochs=1))
    sig = run(ExperimentConfig(dataset="iris", output="sigmoid", epochs=1))
    assert kaf.h.notna().all() and kaf.h.iloc[0] > 0
    assert sig.h.isna().all()


def test_metrics_match_an_independent_computation():
    cfg = ExperimentConfig(dataset="house", output="kaf", epochs=2, target_transform="standard")
    table, net, prep = run(cfg, return_model=True)
    with torch.no_grad():
        pred = net(prep.X_test).numpy().ravel() * prep.scale + prep.shift
    raw = prep.raw_test.numpy().ravel()
    rmse = math.sqrt(np.mean((pred - raw) ** 2))
    assert table.metric.iloc[-1] == "rmse"
    assert table.test_metric.iloc[-1] == pytest.approx(rmse, rel=1e-5)
    # train loss is leave-one-out: it differs from the loss with nothing left out
    with torch.no_grad():
        loo = torch.nn.functional.mse_loss(net(prep.X_train, torch.arange(prep.n_train)), prep.T_train)
        plain = torch.nn.functional.mse_loss(net(prep.X_train), prep.T_train)
    assert table.train_loss.iloc[-1] == pytest.approx(float(loo), rel=1e-5)
    assert float(plain) < float(loo)


def test_classification_accuracy_is_argmax_accuracy():
    table, net, prep = run(ExperimentConfig(dataset="wine", output="tanh", epochs=2), return_model=True)
    with torch.no_grad():
        acc = (net(prep.X_test).argmax(1) == prep.labels_test).double().mean().item()
    assert table.test_metric.iloc[-1] == pytest.approx(acc)


def test_divergence_is_flagged_and_stops_training():
    table = run(ExperimentConfig(dataset="house", output="identity", optimizer="sgd", lr=1e4,
                                 target_transform="raw", epochs=5))
    assert table.diverged.iloc[-1]
    assert len(table) < 5
    assert math.isnan(table.test_metric.iloc[-1])


def test_l2_penalty_shrinks_weights():
    def weight_norm(l2):
        _, net, _ = run(ExperimentConfig(dataset="iris", output="sigmoid", epochs=3, l2=l2), return_model=True)
        return float(net.body.fc1.weight.detach().norm())
    assert weight_norm(0.1) < 0.8 * weight_norm(0.0)


def test_init_schemes_have_the_stated_scale():
    torch.manual_seed(0)
    body = AppendixBBody(400, 300, 3)
    init_weights(body, "normal", 2.0)
    assert float(body.fc1.weight.std()) == pytest.approx(2.0 / math.sqrt(400), rel=0.05)
    init_weights(body, "uniform", 2.0)
    assert float(body.fc1.weight.std()) == pytest.approx(2.0 / math.sqrt(400), rel=0.05)
    assert float(body.fc1.weight.abs().max()) <= 2.0 * math.sqrt(3 / 400) + 1e-6
    with pytest.raises(ValueError, match="scheme"):
        init_weights(body, "bogus", 1.0)


@pytest.mark.parametrize("bad", [dict(dataset="cifar"), dict(lr=0.0), dict(epochs=0), dict(optimizer="lbfgs"),
                                 dict(output="kaf", loss="cross_entropy"), dict(model="cnn", dataset="iris"),
                                 dict(l1=-1.0), dict(calc_policy="greedy"), dict(lr=float("nan"))])
def test_bad_config_raises_value_error(bad):
    with pytest.raises(ValueError):
        ExperimentConfig(**bad)


def test_calc_size_larger_than_training_set_raises():
    with pytest.raises(ValueError, match="calc_size"):
        run(ExperimentConfig(dataset="iris", calc_size=10_000, epochs=1))
