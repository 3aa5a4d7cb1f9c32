"""Reading result tables: final rows per run, mean ± sd summaries, confidence intervals.

Intervals for paired seeds (a run of each setting with the same seed): :func:`paired_ci`
for a difference (accuracy), :func:`ratio_ci` for a ratio of positive numbers (RMSE,
gradient norms, times) — the Student-t interval of the mean log-ratio, exponentiated,
so the interval of a/b is the reciprocal of the interval of b/a. Both are closed forms
(no resampling), hence the same on every machine for the same table.

Chapters and :mod:`kaf.experiments.verdicts` both use these, so a number in a chapter
and the same number in ``verdicts.csv`` come from one computation.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from kaf.experiments.config import ExperimentConfig

__all__ = ["CONFIG_COLUMNS", "load", "final_rows", "compact", "compare_runs", "summarize", "mean_ci", "paired_ci",
           "ratio_ci"]

#: the columns that identify a run (every field of :class:`ExperimentConfig`)
CONFIG_COLUMNS = [f.name for f in dataclasses.fields(ExperimentConfig)]


def load(name: str, folder: str | Path | None = None) -> pd.DataFrame:
    """Read ``<folder>/<name>.csv.gz`` or ``<folder>/<name>.csv`` (default folder: :func:`kaf.experiments.results_dir`)."""
    from kaf.experiments import results_dir

    folder = Path(folder if folder is not None else results_dir())
    path = folder / f"{name}.csv.gz"
    if not path.exists():
        path = folder / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"no result table {path}; run `python -m kaf.experiments reproduce --scale full`")
    # tags is text even when every run's tags are empty
    df = pd.read_csv(path, dtype={"tags": str}, keep_default_na=False, na_values=["", "nan", "NaN"])
    if "tags" in df.columns:
        df["tags"] = df["tags"].fillna("").astype(str)
    return df


def _run_keys(table: pd.DataFrame) -> list:
    return [c for c in CONFIG_COLUMNS if c in table.columns]


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The last recorded row of every run (the diverged row for a run that diverged)."""
    keys = _run_keys(table)
    ordered = table.sort_values("epoch", kind="stable")
    return ordered.groupby(keys, dropna=False, sort=False).tail(1).reset_index(drop=True)


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of every run that the verdicts read: its first and its last, with ``epoch_time``
    replaced by the run's median epoch time (so a median over a run's rows is unchanged).

    A second execution of the experiments (:func:`kaf.experiments.verdicts.check_portable`)
    is kept in this form: a few hundred kilobytes instead of every epoch's row.
    """
    keys = _run_keys(table)
    if "epoch" not in table.columns:  # a table of one row per item (a fit, a grid): nothing to drop
        return table.reset_index(drop=True)
    grouped = table.groupby(keys, dropna=False, sort=False)
    out = table.assign(epoch_time=grouped.epoch_time.transform("median")) if "epoch_time" in table.columns else table
    ordered = out.sort_values("epoch", kind="stable").groupby(keys, dropna=False, sort=False)
    return pd.concat([ordered.head(1), ordered.tail(1)]).drop_duplicates().sort_index().reset_index(drop=True)


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, value: str = "test_metric") -> pd.DataFrame:
    """Per run (same configuration and seed) the final ``value`` of two executions ``a`` and ``b``
    of one experiment: columns ``a``, ``b``, ``diverged_a``, ``diverged_b``, ``difference`` (b − a)
    and ``identical`` (bit-equal, or both diverged), and ``metric`` where the tables name it. Runs
    present in only one execution are left out.
    """
    keys = [k for k in _run_keys(a) if k in b.columns]
    fa, fb = final_rows(a), final_rows(b)
    extra = ["metric"] if "metric" in fa.columns else []
    left = fa[keys + extra + [value, "diverged"]].rename(columns={value: "a", "diverged": "diverged_a"})
    right = fb[keys + [value, "diverged"]].rename(columns={value: "b", "diverged": "diverged_b"})
    # a column that is empty in every run (tags) reads back as NaN: match it as text
    for col in keys:
        if left[col].dtype != right[col].dtype:
            left[col], right[col] = left[col].astype(str), right[col].astype(str)
    out = left.merge(right, on=keys, how="inner")
    out["diverged_a"], out["diverged_b"] = out.diverged_a.astype(bool), out.diverged_b.astype(bool)
    out["difference"] = out.b - out.a
    out["identical"] = (out.a.to_numpy() == out.b.to_numpy()) | (out.diverged_a & out.diverged_b)
    return out


def summarize(table: pd.DataFrame, by: list, value: str = "test_metric") -> pd.DataFrame:
    """Mean, sd and count of ``value`` over the final rows, grouped by ``by``.

    Diverged runs are counted in ``diverged`` and left out of mean/sd (``n`` counts the rest).
    """
    fin = final_rows(table)
    fin = fin.assign(_div=fin["diverged"].astype(bool))
    grouped = fin.groupby(by, dropna=False, sort=False)
    out = grouped.apply(
        lambda g: pd.Series({
            "mean": g.loc[~g._div, value].mean() if (~g._div).any() else math.nan,
            "sd": g.loc[~g._div, value].std(ddof=1) if (~g._div).sum() > 1 else 0.0,
            "n": int((~g._div).sum()),
            "diverged": int(g._div.sum()),
        }),
        include_groups=False,
    )
    return out.reset_index()


def mean_ci(values, level: float = 0.95) -> tuple:
    """(mean, half-width of the Student-t confidence interval) of a sample."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"values must hold at least 2 numbers for an interval, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite, got {x.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def paired_ci(a, b, level: float = 0.95) -> tuple:
    """(mean of a − b, half-width of its t interval) for paired samples (same seeds)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same length), got {a.shape} and {b.shape}")
    return mean_ci(a - b, level)


def ratio_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    r"""(ratio, low, high): the paired ratio of positive samples a / b and its confidence interval.

    With :math:`d_i = \log a_i - \log b_i` over :math:`n \ge 2` pairs, the ratio is the
    geometric mean :math:`e^{\bar d}` and the interval :math:`e^{\bar d \pm t_{n-1} s_d/\sqrt n}`
    (Student t of the mean log-ratio, as ``scipy.stats.ttest_rel`` on the logs gives it).

    Examples:
        >>> r, lo, hi = ratio_ci([2.0, 4.2, 3.9], [1.0, 2.0, 2.0])
        >>> round(r, 3), lo < r < hi
        (2.016, True)
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same length), got {a.shape} and {b.shape}")
    for name, x in (("a", a), ("b", b)):
        if not (np.isfinite(x).all() and (x > 0).all()):
            raise ValueError(f"{name} must hold finite positive numbers for a ratio, got {x.tolist()}")
    mean, half = mean_ci(np.log(a) - np.log(b), level)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)
