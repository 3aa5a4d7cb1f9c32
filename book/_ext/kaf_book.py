"""Sphinx extension local to the kaf book (loaded through ``_config.yml``).

Jobs that ``_config.yml`` cannot do by itself:

1. **No stale outputs across scales.** jupyter-cache keys a notebook by its code cells
   only, and Sphinx re-reads a page only when its source changed, so neither notices
   that ``KAF_SCALE`` or the committed ``results/`` changed. Here the scale and a digest
   of ``results/`` become (a) config values that force Sphinx to re-read every page
   when they change, and (b) part of the jupyter-cache folder
   (``_build/.jupyter_cache/<scale>-<digest>``), so each scale keeps its own cache.
2. **Theme and buttons.** A default light mode (the theme logs an error without one).
   **One repository URL drives every button.** ``repository.url`` empty (no public
   address yet): no repository/issues/launch buttons (sphinx-book-theme cannot build
   Binder or Colab links without it). Set: all of them appear.
3. **Scripts, once each, only where needed.** A page that holds one of ``kaf.viz``'s
   interactive views loads BokehJS from ``_static/bokeh/`` (vendored in
   ``book/vendor/bokeh/``); the views' own outputs stay light (see ``kaf.viz.views``).
   And a script that ends up twice in a page is dropped the second time: sphinx-thebe
   adds its inline configuration (``const THEBE_JS_URL = ...``) on every
   ``env-before-read-docs``, which runs more than once per build, and Sphinx's own
   de-duplication misses it (the copy registered with the builder has file name
   ``None``, the one replayed from the registry ``""``), so every page threw
   "Identifier 'THEBE_JS_URL' has already been declared".
4. **A bibliography in the citations' style.** The text cites author–year
   (``bibtex_reference_style: author_year``: "Ichimura, 1993"); the pybtex style
   ``kaf_author_year`` (``bibtex_default_style``) labels the bibliography's entries the same
   way instead of numbering them. And docutils writes the list of entries as
   ``role="list"`` around entries of the deprecated role ``doc-biblioentry``, which
   assistive technology (and axe-core's ``aria-required-children``) does not take for list
   items: the entries become ``role="listitem"``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle

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

    # Without a default mode (a template variable of pydata-sphinx-theme), the theme's
    # script starts from an empty mode and logs "Got invalid theme mode" as an error on
    # every page. Light suits the figures (white backgrounds); the reader can still switch.
    config.html_context = {"default_mode": "light", **(config.html_context or {})}

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


class AuthorYearLabels(BaseLabelStyle):
    """Labels as sphinxcontrib-bibtex's author_year citations write them: "Ichimura, 1993",
    "Klein and Spady, 1993", "Kakade et al., 2011" (then a, b, ... where two entries share one)."""

    def format_labels(self, sorted_entries):
        labels = [self._label(entry) for entry in sorted_entries]
        seen: dict = {}
        for label in labels:
            if labels.count(label) == 1:
                yield label
            else:
                seen[label] = seen.get(label, -1) + 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label]]

    @staticmethod
    def _label(entry):
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [Text.from_latex(" ".join(p.prelast_names + p.last_names)).render_as("text") for p in persons]
        if not names:
            names = [entry.key]
        who = names[0] if len(names) == 1 else (" and ".join(names) if len(names) == 2 else f"{names[0]} et al.")
        return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(PlainStyle):
    """pybtex's plain style (entries sorted by author, year, title), labelled author–year."""

    default_label_style = "kaf_author_year"


register_plugin("pybtex.style.labels", "kaf_author_year", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "kaf_author_year", AuthorYearStyle)

_BIBLIOENTRY = re.compile(r'(<div class="citation" id="[^"]*") role="doc-biblioentry"')


def _script_key(script):
    attributes = tuple(sorted((k, str(v)) for k, v in script.attributes.items()))
    return (script.filename or "", attributes)


def _on_html_page_context(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if scripts is not None:
        seen, unique = set(), []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique  # the builder's own list: restored by Sphinx after this page
    body = context.get("body", "")
    if 'role="doc-biblioentry"' in body:
        context["body"] = body = _BIBLIOENTRY.sub(r'\1 role="listitem"', body)
    if 'class="kaf-view"' in body:
        from kaf.viz.views import bokehjs_files

        for name in bokehjs_files():  # in this order: the widgets extend BokehJS
            app.add_js_file(name, priority=500)


def setup(app):
    root = Path(app.confdir)
    # rebuild="env": a change re-reads (and so re-executes or re-fetches) every page.
    app.add_config_value("kaf_scale", get_scale(), "env")
    app.add_config_value("kaf_results_digest", results_digest(root), "env")
    # after myst-nb's own config handlers, before its builder-inited reads the cache path
    app.connect("config-inited", _on_config_inited, priority=900)
    # late, so that every other extension's scripts are in place
    app.connect("html-page-context", _on_html_page_context, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
