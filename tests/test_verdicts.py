"""Verdicts decided on intervals: the interval code against scipy.stats, and synthetic result tables
whose interval clearly passes, clearly fails or straddles the threshold -> holds / fails / inconclusive."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kaf.experiments import ExperimentConfig, analysis, verdicts
from kaf.experiments.verdicts import Interval, decide

# --------------------------------------------------------------------------- intervals against scipy.stats

A = np.array([4.31, 4.04, 4.35, 4.07, 4.17, 4.52, 3.98])
B = np.array([3.82, 3.93, 3.94, 3.98, 3.87, 4.01, 3.90])


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_paired_and_ratio_intervals_match_scipy(level):
    mean, half = analysis.paired_ci(A, B, level)
    lo, hi = stats.ttest_rel(A, B).confidence_interval(level)
    assert mean - half == pytest.approx(lo, rel=1e-12) and mean + half == pytest.approx(hi, rel=1e-12)
    r, r_lo, r_hi = analysis.ratio_ci(A, B, level)
    lo, hi = stats.ttest_rel(np.log(A), np.log(B)).confidence_interval(level)
    assert (r_lo, r_hi) == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-12)
    assert r == pytest.approx(stats.gmean(A / B), rel=1e-12)
    # the interval of b / a is the reciprocal of the interval of a / b
    assert analysis.ratio_ci(B, A, level) == pytest.approx((1 / r, 1 / r_hi, 1 / r_lo), rel=1e-12)


@pytest.mark.parametrize("a, b, match", [([1.0], [1.0], "at least 2"), ([1.0, 2.0], [1.0], "paired"),
                                         ([1.0, 0.0], [1.0, 1.0], "positive"), ([1.0, np.nan], [1.0, 1.0], "a must"),
                                         ([1.0, 2.0], [1.0, -1.0], "b must")])
def test_ratio_ci_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        analysis.ratio_ci(a, b)


def test_mean_ci_rejects_non_finite_values_and_bad_levels():
    with pytest.raises(ValueError, match="finite"):
        analysis.mean_ci([1.0, math.inf])
    with pytest.raises(ValueError, match="level"):
        analysis.mean_ci([1.0, 2.0], level=1.0)


def test_interval_sides_and_decide():
    c = Interval(0.5, 0.2, 0.8, 5, "difference")
    assert (c.at_least(0.1), c.at_least(0.5), c.at_least(0.9)) == (True, None, False)
    assert (c.at_most(0.9), c.at_most(0.5), c.at_most(0.1)) == (True, None, False)
    # a degenerate interval (every seed agrees) decides at its point
    assert Interval(0.0, 0.0, 0.0, 5, "difference").at_least(-0.01) is True
    both = lambda x, y: "holds" if x and y else ("fails" if not x and not y else "depends")  # noqa: E731
    assert decide(both, True, True) == "holds"
    assert decide(both, True, None) == "inconclusive"   # holds or depends
    assert decide(lambda x, y: "fails" if not x else "holds", False, None) == "fails"  # y cannot change it
    assert str(Interval(math.nan, -math.inf, math.inf, 1, "ratio")).endswith("no interval)")


# --------------------------------------------------------------------------- synthetic result tables


def _final_rows(name, rows, metric="accuracy"):
    """A result table of final rows: each row is config overrides plus test_metric (and diverged, grad_norm)."""
    out = []
    for r in rows:
        r = dict(r)
        extra = dict(test_metric=r.pop("test_metric"), diverged=r.pop("diverged", False), grad_norm=r.pop("grad_norm", 1.0))
        row = ExperimentConfig(name=name, **r).as_row()
        row.update(epoch=1, metric=metric if row["dataset"] != "house" else "rmse", data=row["dataset"],
                   saturated_frac=0.0, epoch_time=1.0, n_train=100, **extra)
        out.append(row)
    return pd.DataFrame(out)


# deterministic zero-mean noise with sd about 1: the interval's half-width is known in advance
NOISE = np.array([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.0, 0.8, -0.8, 0.0])


@pytest.mark.parametrize("kaf_ratio, noise, expected", [(1.00, 0.005, "holds"), (1.12, 0.005, "fails"),
                                                        (1.05, 0.05, "inconclusive")])
def test_rmse_within_tolerance_follows_the_interval(tmp_path, kaf_ratio, noise, expected):
    rows = []
    for seed in range(10):
        for ds in ("iris", "wine", "mnist"):
            rows += [dict(dataset=ds, output="kaf", seed=seed, test_metric=0.95),
                     dict(dataset=ds, output="sigmoid", seed=seed, test_metric=0.95)]
        sig = 4.0 * math.exp(0.02 * NOISE[seed])
        rows += [dict(dataset="house", output="sigmoid", seed=seed, test_metric=sig),
                 dict(dataset="house", output="relu", seed=seed, test_metric=9.0),
                 dict(dataset="house", output="kaf", seed=seed, test_metric=sig * kaf_ratio * math.exp(noise * NOISE[seed]))]
    _final_rows("baselines", rows).to_csv(tmp_path / "baselines.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id")
    assert v.verdict["thesis-1-house"] == expected
    assert "95% paired interval" in v.evidence["thesis-1-house"]
    # the other three tie exactly, so the overall claim follows house (inconclusive: holds or depends)
    assert v.verdict["thesis-1"] == {"holds": "holds", "fails": "depends", "inconclusive": "inconclusive"}[expected]


@pytest.mark.parametrize("gap, noise, expected, expected_4", [
    (-0.005, 0.002, "holds", "holds"), (-0.05, 0.005, "fails", "inconclusive"), (-0.01, 0.02, "inconclusive", "holds")])
def test_accuracy_within_tie_band_follows_the_interval(tmp_path, gap, noise, expected, expected_4):
    rows = []
    for seed in range(10):
        for ds in ("iris", "mnist"):
            rows += [dict(dataset=ds, output="kaf", seed=seed, test_metric=0.95),
                     dict(dataset=ds, output="sigmoid", seed=seed, test_metric=0.95)]
        rows += [dict(dataset="house", output="kaf", seed=seed, test_metric=4.0),
                 dict(dataset="house", output="sigmoid", seed=seed, test_metric=4.0)]
        rows += [dict(dataset="wine", output="tanh", seed=seed, test_metric=0.96),
                 dict(dataset="wine", output="sigmoid", seed=seed, test_metric=0.90),
                 dict(dataset="wine", output="kaf", seed=seed, test_metric=0.96 + gap + noise * NOISE[seed])]
    _final_rows("baselines", rows).to_csv(tmp_path / "baselines.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict
    assert v["thesis-1-wine"] == expected
    # claim 4 (K-AF beats the sigmoid by more than the tie band): 0.96 + gap vs 0.90; at gap -0.05 the
    # difference is +0.01 exactly, on the edge of the band
    assert v["thesis-4"] == expected_4


def _house_rows(learnable_ratio, noise, sgd_learnable_diverges=True, seeds=10):
    rows = []
    for seed in range(seeds):
        e = math.exp(noise * NOISE[seed])
        for opt in ("adam", "sgd"):
            base = dict(dataset="house", optimizer=opt, output="kaf", y_multiplier=1000.0, seed=seed)
            if opt == "adam":
                rows += [dict(base, target_transform="raw", test_metric=4000.0 * math.exp(0.01 * NOISE[seed]), grad_norm=1e7),
                         dict(base, target_transform="standard", test_metric=4600.0, grad_norm=0.2),
                         dict(base, target_transform="learnable", test_metric=4000.0 * learnable_ratio * e)]
            else:
                rows += [dict(base, target_transform="raw", test_metric=math.nan, diverged=True),
                         dict(base, target_transform="standard", test_metric=4600.0, grad_norm=0.2),
                         dict(base, target_transform="learnable",
                              **(dict(test_metric=math.nan, diverged=True) if sgd_learnable_diverges
                                 else dict(test_metric=4600.0)))]
    return _final_rows("house_scale", rows)


@pytest.mark.parametrize("learnable_ratio, noise, sgd_diverges, expected", [
    (1.00, 0.005, False, "holds"),          # within 5 % of the best with both optimisers
    (1.00, 0.005, True, "depends"),         # Adam yes, SGD diverges
    (1.20, 0.005, True, "fails"),           # clearly worse with Adam, SGD diverges
    (1.05, 0.05, True, "inconclusive"),     # Adam straddles 5 %: fails or depends
])
def test_learnable_remedy_follows_the_ratio_interval(tmp_path, learnable_ratio, noise, sgd_diverges, expected):
    _house_rows(learnable_ratio, noise, sgd_diverges).to_csv(tmp_path / "house_scale.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id")
    assert v.verdict["thesis-7-remedy-learnable"] == expected
    assert ("diverged in 10 of 10 runs" in v.evidence["thesis-7-remedy-learnable"]) == sgd_diverges
    # raw targets: 0.87x the standardised RMSE with Adam (not degraded), every SGD run diverged (degraded)
    assert v.verdict["thesis-7"] == "depends"
    assert v.verdict["thesis-7-gradient"] == "fails"  # raw gradients are 5e7 times larger, not smaller
    # standardising: 1.15x the best Adam setting, the best SGD setting
    assert v.verdict["thesis-7-remedy-standardise"] == "depends"


def test_one_seed_gives_no_interval_and_no_verdict(tmp_path):
    _house_rows(1.0, 0.0, seeds=1).to_csv(tmp_path / "house_scale.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id")
    assert v.verdict["thesis-7-remedy-learnable"] == "inconclusive"
    assert "no interval" in v.evidence["thesis-7-remedy-learnable"]


@pytest.mark.parametrize("gap16, noise, expected", [(0.2, 0.01, "holds"),
                                                    (0.0, 0.01, "inconclusive"),   # neither output is stuck
                                                    (0.12, 0.05, "inconclusive")])  # straddles the 10-point gap
def test_singular_points_follow_the_paired_interval(tmp_path, gap16, noise, expected):
    # sigmoid is stuck at init scale 16 when K-AF is >= 10 points better there; neither is stuck at scale 1
    rows = []
    for seed in range(10):
        common = dict(dataset="wine", optimizer="sgd", lr=0.5, init="normal", seed=seed)
        for sc, gap in ((1.0, 0.0), (16.0, gap16)):
            rows += [dict(common, output="sigmoid", init_scale=sc, test_metric=0.6),
                     dict(common, output="kaf", init_scale=sc, test_metric=0.6 + gap + noise * NOISE[seed])]
    _final_rows("singular", rows).to_csv(tmp_path / "singular.csv", index=False)
    assert verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict["thesis-5"] == expected


@pytest.mark.parametrize("sig_at_10, noise, expected", [(0.95, 0.002, "depends"), (0.5, 0.002, "holds"),
                                                        (0.855, 0.05, "inconclusive")])
def test_lr_verdict_follows_the_stability_intervals(tmp_path, sig_at_10, noise, expected):
    # K-AF is stable up to 10 on iris; sigmoid's stability at 10 is clear (0.95 or 0.5 of a best 0.95) or on the edge
    # (0.855 = 90 % of 0.95, with noise)
    rows = []
    for seed in range(10):
        for lr, kaf, sig in ((0.1, 0.95, 0.95), (10.0, 0.95, sig_at_10 + noise * NOISE[seed])):
            for o, acc in (("kaf", kaf), ("sigmoid", sig), ("tanh", 0.9), ("relu", 0.9)):
                rows.append(dict(dataset="iris", optimizer="sgd", output=o, lr=lr, seed=seed, test_metric=acc))
    table = _final_rows("lr_sweep", rows)
    table.to_csv(tmp_path / "lr_sweep.csv", index=False)
    assert verdicts.compute_verdicts(tmp_path).set_index("claim_id").verdict["thesis-2"] == expected
    m = verdicts.max_stable_lr(table).set_index("output")
    assert m.loc["kaf", ["max_stable_lr", "max_stable_lr_low", "max_stable_lr_high"]].tolist() == [10.0, 10.0, 10.0]
    if expected == "inconclusive":
        assert (m.loc["sigmoid", "max_stable_lr_low"], m.loc["sigmoid", "max_stable_lr_high"]) == (0.1, 10.0)


# --------------------------------------------------------------------------- a second execution (portable kernels)


def test_robust_interval_is_the_hull_widened_by_the_shift_of_the_ends():
    native = Interval(0.2, 0.1, 0.3, 10, "difference")
    portable = Interval(0.23, 0.15, 0.32, 10, "difference")
    assert native.shift(portable) == pytest.approx(0.05)  # the lower ends differ by 0.05, the upper by 0.02
    r = native.robust(portable)
    assert (r.low, r.high, r.estimate, r.n) == (pytest.approx(0.05), pytest.approx(0.37), 0.2, 10)
    # a ratio's interval is symmetric on the log scale: its ends move by factors
    r = Interval(1.0, 0.9, 1.1, 10, "ratio").robust(Interval(1.05, 0.95, 1.2, 10, "ratio"))
    assert (r.low, r.high) == (pytest.approx(0.9 * 1.1 / 1.2), pytest.approx(1.2 * 1.2 / 1.1))
    # the same interval twice is robust as it is
    assert native.robust(native) == native
    w = Interval(0.0, -0.1, 0.1, 5, "difference").widened(0.5)
    assert (w.low, w.high) == (pytest.approx(-0.15), pytest.approx(0.15))
    with pytest.raises(ValueError, match="other must be a difference interval"):
        native.shift(Interval(1.0, 0.9, 1.1, 10, "ratio"))
    with pytest.raises(ValueError, match="kind"):
        Interval(0.0, 0.0, 0.0, 2, "sum")


def _singular(gap16, noise=0.005, seeds=10):
    """Final rows of the singular experiment: K-AF beats the sigmoid by gap16 at init scale 16, ties at 1."""
    rows = []
    for seed in range(seeds):
        common = dict(dataset="wine", optimizer="sgd", lr=0.5, init="normal", seed=seed)
        for sc, gap in ((1.0, 0.0), (16.0, gap16)):
            rows += [dict(common, output="sigmoid", init_scale=sc, test_metric=0.6),
                     dict(common, output="kaf", init_scale=sc, test_metric=0.6 + gap + noise * NOISE[seed])]
    return _final_rows("singular", rows)


@pytest.mark.parametrize("native, portable, verdict, robustness, why", [
    (0.3, 0.3, "holds", "same", None),                # bit-identical executions
    (0.3, 0.29, "holds", "same", None),               # 20 points past the 10-point threshold, 1 point apart
    (0.2, 0.0, "inconclusive", "machine-dependent", "holds with the native kernels, inconclusive with the portable"),
    # both hold, but the portable one clears the threshold by 0.005 while the executions differ by 0.02
    (0.125, 0.105, "inconclusive", "machine-dependent", "holds with both kernels, but an interval clears"),
    (0.3, None, "holds", "unchecked", None),          # no second execution
])
def test_a_verdict_that_the_second_execution_does_not_confirm_is_machine_dependent(
        tmp_path, native, portable, verdict, robustness, why):
    _singular(native).to_csv(tmp_path / "singular.csv", index=False)
    if portable is not None:
        (tmp_path / "portable").mkdir()
        _singular(portable).to_csv(tmp_path / "portable" / "singular.csv", index=False)
    v = verdicts.compute_verdicts(tmp_path).set_index("claim_id")
    assert (v.verdict["thesis-5"], v.robustness["thesis-5"]) == (verdict, robustness)
    ev = v.evidence["thesis-5"]
    if why is None:
        assert ev == verdicts.compute_verdicts(tmp_path, portable=False).set_index("claim_id").evidence["thesis-5"]
    else:
        assert ev.startswith(f"machine-dependent: {why}")
        # both executions' intervals are in the evidence
        native_c = verdicts.difference(*(_singular(native).query("init_scale == 16").set_index("seed")
                                         .groupby("output").test_metric.get_group(o) for o in ("kaf", "sigmoid")))
        assert f"Native kernels: final wine" in ev and f"K-AF − sigmoid {native_c}" in ev and "Portable kernels:" in ev
    # the FluidReLU checks read no result table: nothing to weigh
    assert v.robustness["fluid-limits"] == "unchecked"


def test_knife_edge_lists_the_experiments_whose_verdicts_a_wider_interval_changes(tmp_path):
    # the 10-point threshold is 0.025 from the interval (half-width about 0.003)
    _singular(0.125).to_csv(tmp_path / "singular.csv", index=False)
    assert verdicts.knife_edge(tmp_path, widen=1.0) == []
    assert verdicts.knife_edge(tmp_path, widen=10.0) == ["singular"]
    with pytest.raises(ValueError, match="widen"):
        verdicts.knife_edge(tmp_path, widen=-1.0)


def test_measured_widening_is_the_largest_shift_in_half_widths(tmp_path):
    _singular(0.3).to_csv(tmp_path / "singular.csv", index=False)
    assert math.isnan(verdicts.measured_widening(tmp_path))  # no second execution
    (tmp_path / "portable").mkdir()
    _singular(0.29).to_csv(tmp_path / "portable" / "singular.csv", index=False)
    # init scale 16 moved by 0.01 at both ends; init scale 1 (identical rows) did not move
    t = _singular(0.3).query("init_scale == 16").set_index("seed")
    c = verdicts.difference(t[t.output == "kaf"].test_metric, t[t.output == "sigmoid"].test_metric)
    assert verdicts.measured_widening(tmp_path) == pytest.approx(0.01 / ((c.high - c.low) / 2))


def test_check_portable_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="experiments must be"):
        verdicts.check_portable(tmp_path, ["no_such_experiment"])
    with pytest.raises(ValueError, match="jobs"):
        verdicts.check_portable(tmp_path, ["singular"], jobs=0)


def _epochs(table, epochs=3):
    """Every run of ``table`` over ``epochs`` epochs, with epoch times 1, 2, 9 (median 2)."""
    out = []
    for e in range(1, epochs + 1):
        out.append(table.assign(epoch=e, epoch_time=[1.0, 2.0, 9.0][e - 1],
                                test_metric=table.test_metric - 0.01 * (epochs - e)))
    return pd.concat(out, ignore_index=True)


def test_compact_keeps_what_the_verdicts_read_and_compare_runs_pairs_them():
    table = _epochs(_singular(0.2))
    small = analysis.compact(table)
    assert len(small) == 2 * len(_singular(0.2))  # first and last row of every run
    pd.testing.assert_frame_equal(analysis.final_rows(small).drop(columns="epoch_time"),
                                  analysis.final_rows(table).drop(columns="epoch_time"))
    assert (small.epoch_time == 2.0).all()  # each run's median epoch time
    assert set(small.epoch) == {1, 3}
    other = table.copy()
    other.loc[(other.epoch == 3) & (other.seed == 4) & (other.output == "kaf"), "test_metric"] += 0.5
    cmp = analysis.compare_runs(table, other)
    assert len(cmp) == len(_singular(0.2)) and (~cmp.identical).sum() == 2  # seed 4's K-AF run at both scales
    assert cmp.loc[~cmp.identical, "difference"].tolist() == pytest.approx([0.5, 0.5])


def test_import_portable_keeps_compact_tables_and_records_the_check(tmp_path):
    import json

    results, execution = tmp_path / "results", tmp_path / "execution"
    results.mkdir()
    execution.mkdir()
    _epochs(_singular(0.3)).to_csv(results / "singular.csv", index=False)
    _epochs(_singular(0.29)).to_csv(execution / "singular.csv", index=False)
    (results / "provenance.json").write_text(json.dumps({"scale": "full"}))
    (execution / "provenance.json").write_text(json.dumps({"command": "reproduce --only singular",
                                                           "git_commit": "abc"}))
    record = verdicts.import_portable(execution, results)
    assert (results / "portable" / "singular.csv.gz").exists()
    assert len(analysis.load("singular", results / "portable")) == 2 * len(_singular(0.3))
    saved = json.loads((results / "provenance.json").read_text())
    assert saved["scale"] == "full" and saved["portable_check"] == record
    assert record["verdicts"]["thesis-5"] == "same" and record["environment"]["ATEN_CPU_CAPABILITY"] == "default"
    assert pd.read_csv(results / "verdicts.csv").set_index("claim_id").robustness["thesis-5"] == "same"
    with pytest.raises(FileNotFoundError, match="no"):
        verdicts.import_portable(tmp_path / "empty", results)


# --------------------------------------------------------------------------- the committed verdicts are current


def test_committed_verdicts_are_what_the_committed_results_give():
    import io
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "results"
    committed = pd.read_csv(folder / "verdicts.csv", keep_default_na=False)
    fresh = pd.read_csv(io.StringIO(verdicts.compute_verdicts(folder).to_csv(index=False)), keep_default_na=False)
    stale = sorted(set(committed.claim_id) ^ set(fresh.claim_id))
    if not stale:
        both = committed.merge(fresh, on="claim_id", suffixes=("", "_now")).set_index("claim_id")
        stale = [c for c in both.index if any(both.loc[c, k] != both.loc[c, k + "_now"] for k in fresh.columns[1:])]
    assert not stale, f"results/verdicts.csv is stale for {stale}: run `python -m kaf.experiments verdicts`"
    pd.testing.assert_frame_equal(committed, fresh)
