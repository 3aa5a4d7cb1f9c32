"""A chapter's reading, tied to its results: figures pasted from the computation, statements checked.

A reading in the book quotes figures ("K-AF reaches 0.92 at rate 30") and makes statements
("raw targets give the highest RMSE"). Typed by hand, both drift when the results are re-made.
A chapter therefore computes each figure and hands it to the page with :func:`paste` (myst-nb's
``glue``; the markdown shows it with the ``{glue:text}`` role), and asserts each statement with
:func:`check` in a cell hidden from the reader. The book build and nbval both execute those cells,
so a re-run of the results that makes a statement false fails the build and names the statement.

    >>> check("two is more than one", 2 > 1)
    >>> check("one is more than two", 1 > 2, evidence="1 vs 2")
    Traceback (most recent call last):
    ...
    kaf.experiments.reading.ReadingError: the reading says "one is more than two", but the results do not support it (1 vs 2)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReadingError", "check", "paste"]


class ReadingError(AssertionError):
    """A statement of a chapter's reading that the committed results no longer support."""


def check(statement: str, holds: Any, evidence: str | None = None) -> None:
    """Raise :class:`ReadingError` naming ``statement`` unless ``holds`` is true.

    Args:
        statement: the reading's words, as the page prints them (or close enough to find them).
        holds: the condition computed from the results; a numpy or torch boolean is accepted.
        evidence: the figures behind the condition, added to the message when it fails.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise TypeError(f"statement must be a non-empty string, got {statement!r}")
    if not bool(holds):
        detail = f" ({evidence})" if evidence else ""
        raise ReadingError(f'the reading says "{statement}", but the results do not support it{detail}')


def paste(**figures: Any) -> None:
    """Glue each ``name=value`` for the page's ``{glue:text}`name:format``` roles (not displayed).

    Values are plain Python numbers or strings: numpy and torch scalars are converted, so
    a format such as ``:.3f`` or ``:,.0f`` applies to them.
    """
    from myst_nb import glue  # the book's own dependency; imported here so kaf does not need it

    for name, value in figures.items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        glue(name, value, display=False)
