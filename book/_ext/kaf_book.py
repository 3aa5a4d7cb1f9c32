"""Sphinx extension local to the kaf book (loaded through ``_config.yml``).

Two jobs that ``_config.yml`` cannot do by itself:

1. **No stale outputs across scales.** jupyter-cache keys a notebook by its code cells
   only, and Sphinx re-reads a page only when its source changed, so neither notices
   that ``KAF_SCALE`` or the committed ``results/`` changed. Here the scale and a digest
   of ``results/`` become (a) config values that force Sphinx to re-read every page
   when they change, and (b) part of the jupyter-cache folder
   (``_build/.jupyter_cache/<scale>-<digest>``), so each scale keeps its own cache.
2. **One repository URL drives every button.** ``repository.url`` empty (no public
   address yet): no repository/issues/launch buttons (sphinx-book-theme cannot build
   Binder or Colab links without it). Set: all of them appear.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kaf.scale import get_scale

_LAUNCH_KEYS = ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url", "jupyterlite_url", "thebe")


def results_digest(root: Path) -> str:
    """Short digest of every file under ``root/results`` (names and bytes); ``none`` if absent."""
    folder = root / "results"
    if not folder.is_dir():
        return "none"
    digest = hashlib.sha256()
    # runs/ folders hold the local run records of resumable sweeps (git-ignored, not read by the book)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "runs" not in p.relative_to(folder).parts[:-1]):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _on_config_inited(app, config):
    key = f"{config.kaf_scale}-{config.kaf_results_digest}"
    base = config.nb_execution_cache_path or str(Path(app.outdir).parent / ".jupyter_cache")
    config.nb_execution_cache_path = str(Path(base) / key)

    options = dict(config.html_theme_options or {})
    if options.get("repository_url", "").strip():
        for button in ("use_repository_button", "use_issues_button"):
            options[button] = True
    else:
        launch = dict(options.get("launch_buttons") or {})
        for name in _LAUNCH_KEYS:
            launch.pop(name, None)
        options["launch_buttons"] = launch
    config.html_theme_options = options


def setup(app):
    root = Path(app.confdir)
    # rebuild="env": a change re-reads (and so re-executes or re-fetches) every page.
    app.add_config_value("kaf_scale", get_scale(), "env")
    app.add_config_value("kaf_results_digest", results_digest(root), "env")
    # after myst-nb's own config handlers, before its builder-inited reads the cache path
    app.connect("config-inited", _on_config_inited, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
