r"""The introduction's overview of the verdicts: one compact row per claim.

:func:`verdict_table` turns ``results/verdicts.csv`` (columns ``claim_id``, ``source``,
``claim``, ``verdict``, ``evidence``, ``chapter``) into an HTML fragment:

* a line of counts per verdict (``holds``, ``fails``, ``depends``, ``inconclusive``,
  then any other label the file holds, in order of appearance);
* one row per claim, grouped by source (in order of first appearance), a sub-claim (its
  id extends the id of another claim of that source by ``-...``) indented under it, with its verdict as a colour-coded link to the
  section of the chapter that holds the evidence;
* the evidence on demand: each claim is the summary of a ``<details>`` element that
  opens onto its evidence.

A verdict's category is its first word: ``"inconclusive (machine-dependent)"`` is
counted and coloured as ``inconclusive`` and printed in full.
"""

from __future__ import annotations

import html
import json
import posixpath
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["Fragment", "verdict_table", "verdict_category", "section_anchors", "scale_note", "VERDICT_CATEGORIES"]

#: The verdict categories, in the order the counts list them; other labels follow.
VERDICT_CATEGORIES = ("holds", "fails", "depends", "inconclusive")

_COLUMNS = ("claim_id", "source", "claim", "verdict", "evidence", "chapter")

# text / background pairs with a contrast ratio above 7 (WCAG AAA for normal text)
_STYLES = {
    "holds": ("#0f5323", "#d3f5db"),
    "fails": ("#8c0b20", "#ffe4e1"),
    "depends": ("#6b4200", "#fff1b8"),
    "inconclusive": ("#32383f", "#e6eaef"),
}
_OTHER_STYLE = ("#32383f", "#ffffff")

_CSS = """
.kaf-verdicts { margin: 0.5em 0 1.5em; }
.kaf-verdicts .kaf-counts { display: flex; flex-wrap: wrap; gap: 0.4em 0.6em; padding: 0; margin: 0 0 0.8em;
  list-style: none; }
.kaf-verdicts .kaf-counts li { margin: 0; }
.kaf-verdicts .kaf-chip { display: inline-block; padding: 0.05em 0.55em; border-radius: 0.8em;
  border: 1px solid currentColor; font-size: 0.9em; line-height: 1.5; white-space: nowrap; }
.kaf-verdicts a.kaf-chip { text-decoration: none; }
.kaf-verdicts a.kaf-chip:hover, .kaf-verdicts a.kaf-chip:focus { text-decoration: underline; }
.kaf-verdicts table { width: 100%; border-collapse: collapse; table-layout: auto; margin: 0; display: table; }
.kaf-verdicts th, .kaf-verdicts td { padding: 0.3em 0.4em; vertical-align: top; text-align: left;
  border: none; border-bottom: 1px solid #d8dee4; }
.kaf-verdicts tbody th { padding-top: 0.9em; font-size: 0.95em; }
.kaf-verdicts td.kaf-v { width: 1%; }
.kaf-verdicts td.kaf-v .kaf-chip { white-space: normal; max-width: 9em; text-align: center; }
.kaf-verdicts summary { cursor: pointer; }
.kaf-verdicts .kaf-id { color: #57606a; font-size: 0.85em; white-space: nowrap; }
.kaf-verdicts .kaf-caption { color: #57606a; font-size: 0.85em; caption-side: top; text-align: left; }
.kaf-verdicts .kaf-evidence { margin: 0.3em 0 0.2em; font-size: 0.92em; overflow-wrap: anywhere; }
.kaf-verdicts .kaf-depth-1 details { margin-left: 1.2em; }
.kaf-verdicts .kaf-depth-2 details { margin-left: 2.4em; }
@media (max-width: 600px) {
  .kaf-verdicts .kaf-depth-1 details { margin-left: 0.6em; }
  .kaf-verdicts .kaf-depth-2 details { margin-left: 1.2em; }
}
"""


def verdict_category(verdict) -> str:
    """A verdict's category: its first word, lower case (``"inconclusive (x)"`` -> ``"inconclusive"``)."""
    if not isinstance(verdict, str) or not verdict.strip():
        raise ValueError(f"verdict must be a non-empty string, got {verdict!r}")
    return verdict.split()[0].strip(" ,;:.").lower()


class Fragment:
    """An HTML fragment that a notebook displays (``_repr_html_``); its text is ``html``."""

    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"Fragment({len(self.html)} characters of HTML)"


def _slug(title: str) -> str:
    from docutils.nodes import make_id

    return make_id(title)


def section_anchors(chapters, root) -> dict:
    """Where each chapter's verdict is: ``{chapter: {"title", "section", "id"}}``, the
    chapter's title (its notebook's first ``#`` heading), and the title and Sphinx id of
    its first section whose heading begins with "Verdict" (``""`` for a chapter without
    one: the link goes to the top of the page). Notebooks are ``root/<chapter>.ipynb``.

    Raises ``ValueError`` naming a chapter whose notebook does not exist.
    """
    root = Path(root)
    out = {}
    for chapter in dict.fromkeys(chapters):
        path = root / f"{chapter}.ipynb"
        if not path.is_file():
            raise ValueError(f"chapter {chapter!r}: no notebook at {path}")
        found = {"title": "", "section": "", "id": ""}
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for line in "".join(cell["source"]).splitlines():
                title = line.lstrip("#").strip()
                if line.startswith("# ") and not found["title"]:
                    found["title"] = title
                elif line.startswith("## ") and title.lower().startswith("verdict") and not found["id"]:
                    found.update(section=title, id=_slug(title))
        out[chapter] = found
    return out


def _depths(ids) -> dict:
    """A claim's nesting depth: how many other claims' ids are prefixes of it (``id-...``)."""
    known = set(ids)
    depths = {}
    for cid in ids:
        parts = cid.split("-")
        depths[cid] = sum("-".join(parts[:k]) in known for k in range(1, len(parts)))
    return depths


def _chip(category: str, text: str, *, href: Optional[str] = None, label: Optional[str] = None) -> str:
    color, background = _STYLES.get(category, _OTHER_STYLE)
    style = f'style="color: {color}; background: {background};"'
    cls = f'class="kaf-chip kaf-chip-{html.escape(category)}"'
    if href is None:
        return f"<span {cls} {style}>{html.escape(text)}</span>"
    aria = f' aria-label="{html.escape(label)}"' if label else ""
    return f'<a {cls} {style} href="{html.escape(href)}"{aria}>{html.escape(text)}</a>'


def verdict_table(table, *, page: str = "book/intro", anchors: Optional[Mapping[str, dict]] = None) -> Fragment:
    """The verdicts as an HTML fragment (see the module docstring).

    Args:
        table: a ``pandas.DataFrame`` with the columns of ``results/verdicts.csv``.
        page: the page the fragment appears on, as a path like the ``chapter`` column's
            (``book/intro``): links to the chapters are relative to it.
        anchors: where each chapter's verdict is, as :func:`section_anchors` gives it;
            a chapter not in it is named by its file name and linked to the top of its page.

    Raises:
        ValueError: a column is missing, a cell of ``claim_id``/``claim``/``verdict``/
            ``chapter`` is empty, or a claim id repeats.
    """
    missing = [c for c in _COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table must have the columns {list(_COLUMNS)}; missing {missing}")
    rows = []
    for i, rec in enumerate(table[list(_COLUMNS)].to_dict("records")):
        rec = {k: ("" if v is None or v != v else str(v).strip()) for k, v in rec.items()}  # NaN -> ""
        empty = [k for k in ("claim_id", "claim", "verdict", "chapter") if not rec[k]]
        if empty:
            raise ValueError(f"table row {i} ({rec['claim_id'] or 'no id'}): empty {empty}")
        rows.append(rec)
    ids = [r["claim_id"] for r in rows]
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise ValueError(f"table: claim ids repeat: {repeated}")
    anchors = dict(anchors or {})
    here = posixpath.dirname(page)

    counts: dict = {c: 0 for c in VERDICT_CATEGORIES}
    for r in rows:
        cat = verdict_category(r["verdict"])
        counts[cat] = counts.get(cat, 0) + 1
    count_items = "".join(
        f"<li>{_chip(cat, f'{cat}: {n}')}</li>" for cat, n in counts.items() if n or cat in VERDICT_CATEGORIES)

    body = []
    for source in dict.fromkeys(r["source"] for r in rows):
        group = [r for r in rows if r["source"] == source]
        depths = _depths([r["claim_id"] for r in group])  # nested under a claim of the same source
        body.append(f'<tr><th scope="colgroup" colspan="2">{html.escape(source or "other claims")} '
                    f'<span class="kaf-id">({len(group)})</span></th></tr>')
        for r in group:
            cat = verdict_category(r["verdict"])
            info = anchors.get(r["chapter"]) or {}
            chapter_name = info.get("title") or posixpath.basename(r["chapter"]).replace("_", " ")
            anchor = info.get("id", "")
            href = posixpath.relpath(r["chapter"], here or ".") + ".html" + (f"#{anchor}" if anchor else "")
            where = f"{chapter_name}, {info['section']}" if anchor else chapter_name
            chip = _chip(cat, r["verdict"], href=href, label=f"{r['verdict']}: see {where}")
            evidence = html.escape(r["evidence"]) if r["evidence"] else "No evidence recorded."
            body.append(
                f'<tr class="kaf-depth-{min(depths[r["claim_id"]], 2)}"><td class="kaf-v">{chip}</td><td>'
                f"<details><summary>{html.escape(r['claim'])} <span class=\"kaf-id\">{html.escape(r['claim_id'])}"
                f"</span></summary><p class=\"kaf-evidence\">{evidence} "
                f'(<a href="{html.escape(href)}">{html.escape(where)}</a>)</p></details></td></tr>')
    total = len(rows)
    return Fragment(f'<div class="kaf-verdicts"><style>{_CSS}</style>'
            f'<ul class="kaf-counts" aria-label="verdict counts over {total} claims">'
            f"<li><strong>{total} claims</strong></li>{count_items}</ul>"
            f"<table><caption class=\"kaf-caption\">Each claim opens onto its evidence; each verdict links to the "
            f"chapter section that measures it.</caption>"
            f'<thead><tr><th scope="col">verdict</th><th scope="col">claim</th></tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def scale_note(detail: str = "", *, scale: Optional[str] = None) -> Optional[Fragment]:
    """A note for the top of a chapter built at quick scale, saying what quick means; ``None``
    (nothing displayed) at full scale.

    Args:
        detail: a sentence on what this chapter runs smaller (HTML-escaped).
        scale: ``"quick"`` or ``"full"``; ``None`` reads it (:func:`kaf.scale.get_scale`).
    """
    from kaf.scale import get_scale

    if get_scale(scale) != "quick":
        return None
    extra = f" {html.escape(detail.strip())}" if detail.strip() else ""
    return Fragment(
        '<div class="admonition note kaf-scale-note" role="note"><p class="admonition-title">A quick build</p>'
        "<p>This page was built at quick scale: the computations it runs itself use small sizes (fewer "
        f"points, epochs and seeds), so that the whole book builds in minutes.{extra} The experiments' "
        "tables, figures and verdicts do not depend on it: they are read from the committed full-scale "
        "results. Build with <code>KAF_SCALE=full</code> to run everything at full size.</p></div>")
