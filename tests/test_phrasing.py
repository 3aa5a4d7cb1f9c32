"""The formatters that give pasted figures the book's typography (kaf.experiments.phrasing)."""

import doctest
import math

import numpy as np
import pytest

from kaf.experiments import phrasing
from kaf.experiments.phrasing import count, power_of_ten, signed, span, words


def test_doctests():
    assert doctest.testmod(phrasing).failed == 0


@pytest.mark.parametrize("x", [-12.345, -0.04, 0.0, 0.04, 3.0, 1234.5, np.float32(-2.5)])
def test_signed_is_python_format_with_a_true_minus(x):
    assert signed(x, ".2f") == format(float(x), "+.2f").replace("-", "\u2212")


@pytest.mark.parametrize("x", [4.24e7, -3.1e-5, 1.0, 9.96, 123456.0])
def test_power_of_ten_reads_back_to_the_rounded_value(x):
    text = power_of_ten(x, 3)
    mantissa, power = text.split(" × 10")
    exponent = int(power.translate(str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")))
    assert float(mantissa.replace("\u2212", "-")) * 10.0 ** exponent == pytest.approx(float(f"{x:.2e}"), rel=1e-12)


def test_words_and_count():
    assert words(["a"]) == "a" and words(["a", "b"]) == "a and b" and words("abc") == "a, b and c"
    assert count(1, "unit") == "1 unit" and count(0, "unit") == "0 units" and count(1500, "row") == "1,500 rows"
    assert span(-0.2, 0.5, ".1f") == "\u22120.2–0.5"


@pytest.mark.parametrize("call", [lambda: signed(math.nan), lambda: power_of_ten(math.inf), lambda: span(0, math.nan),
                                  lambda: words([])])
def test_no_silent_nan_or_empty(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("call", [lambda: signed("1"), lambda: count(2.5, "seed"), lambda: count(True, "seed")])
def test_wrong_types(call):
    with pytest.raises(TypeError):
        call()
