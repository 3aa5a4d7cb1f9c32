import pytest

from kaf.scale import get_scale, pick


def test_env_overrides_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("KAF_SCALE", "full")
    assert get_scale() == "full"


@pytest.mark.parametrize("ci, expected", [("true", "quick"), ("1", "quick"), ("false", "full"), ("", "full")])
def test_default_follows_ci(monkeypatch, ci, expected):
    monkeypatch.delenv("KAF_SCALE", raising=False)
    monkeypatch.setenv("CI", ci)
    assert get_scale() == expected


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("KAF_SCALE", "huge")
    with pytest.raises(ValueError, match="KAF_SCALE"):
        get_scale()
    with pytest.raises(ValueError, match="argument scale"):
        get_scale("medium")


def test_pick(monkeypatch):
    assert pick(1, 2, scale="quick") == 1
    assert pick(1, 2, scale="FULL") == 2
