"""Small formatters for figures and words that a chapter pastes into its prose.

A reading pastes its figures with :func:`kaf.experiments.reading.paste`; these helpers give
them the book's typography (a true minus sign, "a, b and c", counted nouns, powers of ten)
so that the pasted text reads as if it had been typed.

    >>> signed(-0.0033 * 100, ".1f")
    '−0.3'
    >>> signed(0.86, ".1f")
    '+0.9'
    >>> words(["iris", "wine", "MNIST"])
    'iris, wine and MNIST'
    >>> count(1, "seed"), count(10, "seed")
    ('1 seed', '10 seeds')
    >>> power_of_ten(4.24e7)
    '4.2 × 10⁷'
    >>> span(0.47, 0.86, ".2f"), span(0, 2, "d")
    ('0.47–0.86', '0–2')
"""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["signed", "words", "count", "power_of_ten", "span"]

_MINUS = "\u2212"
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _finite(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def signed(x, fmt: str = ".1f") -> str:
    """``x`` formatted with ``fmt`` and always a sign: ``+`` or a true minus sign (U+2212)."""
    text = format(_finite(x, "x"), "+" + fmt)
    return _MINUS + text[1:] if text.startswith("-") else text


def span(low, high, fmt: str = ".2f") -> str:
    """The range ``low–high`` (an en dash), negative ends with a true minus sign."""
    whole = fmt.endswith("d")  # an integer format needs an int
    lo = format(int(_finite(low, "low")) if whole else _finite(low, "low"), fmt).replace("-", _MINUS)
    hi = format(int(_finite(high, "high")) if whole else _finite(high, "high"), fmt).replace("-", _MINUS)
    return f"{lo}–{hi}"


def words(items: Iterable[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``: the items as an English list."""
    items = [str(i) for i in items]
    if not items:
        raise ValueError("items must not be empty")
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def count(n, noun: str) -> str:
    """``"1 seed"``, ``"3 seeds"``: a number with its noun, plural unless the number is 1."""
    if isinstance(n, bool) or int(n) != n:
        raise TypeError(f"n must be a whole number, got {n!r}")
    n = int(n)
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def power_of_ten(x, digits: int = 2) -> str:
    """``x`` in scientific notation with ``digits`` significant digits: ``4.2 × 10⁷``."""
    x = _finite(x, "x")
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa.replace('-', _MINUS)} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"
