"""The book's prose holds no hand-typed figure: every figure is pasted from the computation.

A chapter's markdown may show a number only where it cannot go stale by itself: inside math
(``$…$``, ``$$…$$``, a ``{math}`` block), inside code (inline or fenced), as a pasted figure
(a ``{glue:text}`` role, or any other role's target: citations, cross-references), as a link's
target, or in a short list of conventional phrases (the "95 %" of an interval's level, the
thesis's claim labels such as "(2)"). Anything else is a figure typed by hand; the first test
fails naming the chapter and the sentence. The second test fails when a chapter's markdown pastes
a key that no code cell of that chapter glues (judged on the committed outputs, which is what the
book renders), or one whose format does not apply to the glued value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted((BOOK / "experiments").glob("*.ipynb")) + [BOOK / "intro.ipynb"]

#: numbers that are conventions, not results: an interval's level, the thesis's claim labels
#: "(1)" … "(9)", "claim 4" (the sources number their claims; a label is a name, not a measurement),
#: and the instruction set AVX-512 (a name whose digits follow a hyphen, unlike AVX2 or x86)
ALLOWED = (
    re.compile(r"\b95\s?%"),
    re.compile(r"\bAVX-512\w*"),
    re.compile(r"(?<![\w.])\(\d\)(?![\w.])"),
    re.compile(r"\b[Cc]laims?\s+\d\b(?![.,]\d)"),
)

HOLE = "⟨⟩"  # what a removed span (math, code, role) leaves behind, so sentences stay readable

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,}|:{3,})\s*(\{[^}]*\}|[\w+-]*)?.*$")
_NOT_PROSE = ("math", "code", "code-block", "code-cell", "sourcecode", "raw", "glue", "glue:figure", "glue:math")
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(?:\\.|[^$\\\n])+?(?<!\\)\$")
_ROLE = re.compile(r"\{[\w:.-]+\}(`+)(?:(?!\1).)*?\1", re.S)
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]*)\]\[[^\]]*\]")
_LINK_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M)
_AUTOLINK = re.compile(r"<(?:https?|mailto|file):[^>]*>")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_FOOTNOTE = re.compile(r"\[\^[^\]]*\]")
_TARGET = re.compile(r"^\s*\([\w:.-]+\)=\s*$", re.M)
_LIST_NUMBER = re.compile(r"^(\s*)\d+[.)](?=\s)", re.M)
_DIRECTIVE_OPTION = re.compile(r"^\s*:[\w-]+:.*$")


def _without_blocks(text: str) -> str:
    """Drop fenced code and math blocks; keep a prose directive's body (a note, a figure caption)
    but not its first line or its ``:option:`` lines."""
    out, fence, keep = [], None, True
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
            directive = m.group(3) or ""
            keep = directive.startswith("{") and directive.strip("{}").lower() not in _NOT_PROSE
            out.append(HOLE)
            continue
        if fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
            out.append(HOLE)
            continue
        if fence is not None and (not keep or _DIRECTIVE_OPTION.match(line)):
            continue
        out.append(line)
    return "\n".join(out)


def prose(markdown: str) -> str:
    """The reader's words of a markdown cell, with math, code, roles and link targets replaced by holes."""
    text = _without_blocks(markdown)
    text = _TARGET.sub("", text)
    text = _LINK_DEF.sub("", text)
    text = _ROLE.sub(HOLE, text)
    text = _CODE.sub(HOLE, text)
    text = _DISPLAY_MATH.sub(HOLE, text)
    text = _INLINE_MATH.sub(HOLE, text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(HOLE, text)
    text = _HTML_TAG.sub("", text)
    text = _FOOTNOTE.sub("", text)
    text = _LIST_NUMBER.sub(r"\1", text)
    for pattern in ALLOWED:
        text = pattern.sub(HOLE, text)
    return text


def typed_figures(markdown: str) -> list:
    """The sentences of ``markdown`` that hold a digit outside math, code, roles and the allowed phrases.

    A digit glued to a letter before it is part of a name (L1, float32, x86) and not a figure.
    """
    text = prose(markdown)
    sentences = re.split(r"(?<=[.!?:;])\s+|\n\s*\n", text)
    return [" ".join(s.split()) for s in sentences if re.search(r"(?<![A-Za-z_\d])\d", s)]


def _cells(path: Path, kind: str) -> list:
    return [("".join(c["source"]), c) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == kind]


def _chapter_id(path: Path) -> str:
    return str(path.relative_to(BOOK).with_suffix(""))


# ------------------------------------------------------------------ the scanner itself


@pytest.mark.parametrize("markdown", [
    "K-AF reaches 0.92 at rate 30.",
    "ten seeds, 5 on MNIST",
    "claim 1.5 of 3",
    "a gain of 24 points (interval 16–32)",
    "gradient 10⁻²⁴ of the peak",
    "{glue:text}`acc:.2f` and then 3 more",
    "[a link with 2 words](https://example.org)",
])
def test_scanner_finds_typed_figures(markdown):
    assert typed_figures(markdown), markdown


@pytest.mark.parametrize("markdown", [
    "K-AF reaches {glue:text}`acc:.2f` at rate {glue:text}`rate:g`.",
    "math $h/s = 10^{-3}$ and $$x_1 + 2$$ stay",
    "inline `lr=0.01` and ``a `1` b`` code",
    "a 95 % interval; claims (1) and (4); Verdict on (6); claim 1 holds, as Claim 4 does",
    "L1 and L2 penalties, float32, x86",
    "torch picks other vector kernels (AVX-512, AVX2 or none)",
    "see {doc}`chapter2` and {cite:p}`jimbo2020kaf`, [the docs](https://x.org/v2/page3)",
    "```python\nx = 3\n```\n\n```{math}\ne^{2}\n```",
    "```{note}\n:class: tip\nNo figures here.\n```",
    "1. first item\n2. second item",
    "costs \\$ in dollars",
])
def test_scanner_allows_math_code_roles_and_conventions(markdown):
    assert typed_figures(markdown) == []


def test_scanner_reads_prose_inside_directives():
    found = typed_figures("```{note}\n:class: tip\nIt took 12 s.\n```")
    assert len(found) == 1 and "It took 12 s." in found[0]


# ------------------------------------------------------------------ the book


@pytest.mark.parametrize("path", CHAPTERS, ids=_chapter_id)
def test_no_figure_typed_by_hand(path):
    found = [s for src, _ in _cells(path, "markdown") for s in typed_figures(src)]
    assert not found, (f"{_chapter_id(path)}: figures typed by hand (paste them with {{glue:text}} from the "
                       "computation):\n  " + "\n  ".join(found))


_GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`]*)`")
_GLUE_DIRECTIVE = re.compile(r"^\s*(?:`{3,}|~{3,}|:{3,})\s*\{glue(?::\w+)?\}\s+(\S+)", re.M)


def _glued(path: Path) -> dict:
    """name -> text/plain of every value a code cell of the chapter glued (its committed outputs)."""
    out = {}
    for _, cell in _cells(path, "code"):
        for o in cell.get("outputs", []):
            sb = o.get("metadata", {}).get("scrapbook")
            if sb:
                out[sb["name"]] = "".join(o["data"].get(sb.get("mime_prefix", "") + "text/plain", ""))
    return out


@pytest.mark.parametrize("path", CHAPTERS, ids=_chapter_id)
def test_every_pasted_key_is_glued_in_the_chapter(path):
    from myst_nb.core.variables import format_plain_text

    glued = _glued(path)
    problems = []
    for src, _ in _cells(path, "markdown"):
        for content in _GLUE_ROLE.findall(src) + _GLUE_DIRECTIVE.findall(src):
            key, _, fmt = content.rpartition(":") if ":" in content else (content, "", "")
            if "::" in content:
                problems.append(f"{content!r} pastes from another document")
            elif key not in glued:
                problems.append(f"{key!r} is pasted but no code cell of the chapter glues it")
            elif fmt:
                try:
                    format_plain_text(glued[key], fmt)
                except Exception as exc:  # the build would print a warning in the page instead of the figure
                    problems.append(f"{key!r} = {glued[key]} does not format with {fmt!r}: {exc}")
    assert not problems, f"{_chapter_id(path)}:\n  " + "\n  ".join(problems)
