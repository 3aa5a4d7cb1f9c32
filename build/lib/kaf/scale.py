"""One place that decides how big a run is.

Every notebook and every experiment asks :func:`get_scale` instead of reading the
environment itself, so a single variable switches the whole book::

    KAF_SCALE=quick jupyter-book build .     # small configurations (CI, a first look)
    KAF_SCALE=full  jupyter-book build .     # the real thing (default outside CI)

If ``KAF_SCALE`` is unset, the scale is ``quick`` when ``CI`` is set to a true value
(as continuous-integration services do) and ``full`` otherwise.
"""

from __future__ import annotations

import os

SCALES = ("quick", "full")


def get_scale(scale: str | None = None) -> str:
    """Return ``"quick"`` or ``"full"``.

    Args:
        scale: an explicit choice; ``None`` reads ``KAF_SCALE`` (then ``CI``).

    Raises:
        ValueError: if the scale (argument or ``KAF_SCALE``) is not one of ``quick``/``full``.
    """
    source = "argument scale"
    if scale is None:
        scale = os.environ.get("KAF_SCALE")
        source = "environment variable KAF_SCALE"
        if scale is None or scale.strip() == "":
            ci = os.environ.get("CI", "").strip().lower()
            return "quick" if ci not in ("", "0", "false", "no") else "full"
    value = str(scale).strip().lower()
    if value not in SCALES:
        raise ValueError(f"{source} must be one of {SCALES}, got {scale!r}")
    return value


def is_quick(scale: str | None = None) -> bool:
    """``True`` when :func:`get_scale` says ``quick``."""
    return get_scale(scale) == "quick"


def pick(quick, full, scale: str | None = None):
    """Return ``quick`` or ``full`` according to the scale: ``pick(200, 5000)``."""
    return quick if is_quick(scale) else full
