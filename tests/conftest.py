"""Shared fixtures."""

import os

import pytest

from kaf import _fused


def require_fused() -> None:
    """Skip (fail under CI, where a compiler is part of the machine) when the fused kernel cannot be built."""
    if not _fused.available():
        reason = f"the fused CPU kernel cannot be built here: {_fused._failure}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the fused kernel must be tested)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(params=["cpp", "eager"])
def nw_backend(request, monkeypatch):
    """Run a test once with the fused CPU kernel of the Gaussian estimator and once with its
    torch-operations path (``KAF_NW_BACKEND``); yields the backend's name."""
    if request.param == "cpp":
        require_fused()
    monkeypatch.setenv("KAF_NW_BACKEND", request.param)
    yield request.param
