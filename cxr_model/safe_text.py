"""Untrusted text (file names, labels, patient ids, source names) made safe for where people
read it: a console line, a Markdown report, a spreadsheet.

Input values reach reports unchanged in meaning; only what the medium would *act on* is
neutralised: control characters that would break or forge a console line, markup that a
Markdown renderer would turn into HTML, and leading characters that a spreadsheet would run as a
formula. The spreadsheet escape is reversible, so machine readers of our CSVs get the raw values
back (:func:`spreadsheet_value`; :func:`cxr_model.manifest.read_csv` applies it).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# What a spreadsheet treats as the start of a formula (OWASP "CSV injection"), and our own
# escape mark, so that escaping is one-to-one and can be undone.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
ESCAPE_MARK = "'"
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def console_text(text: object) -> str:
    """``text`` on one console line: control characters shown as escapes (``\\n``, ``\\x1b``)."""
    return "".join(
        ch if unicodedata.category(ch) != "Cc" else ch.encode("unicode_escape").decode("ascii")
        for ch in str(text)
    )


def markdown_text(text: object) -> str:
    """``text`` inline in Markdown prose: shown as written, never rendered as HTML.

    Only a ``<`` that could open a tag, comment or declaration (CommonMark's raw HTML) is
    escaped, so ``40 px < 64 px`` stays readable in the Markdown source too.
    """
    return _TAG_START.sub("&lt;", console_text(text))


def markdown_cell(text: object) -> str:
    """``text`` made safe for one Markdown table cell."""
    return markdown_text(text).replace("|", "\\|")


def spreadsheet_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: a leading formula character gets ``'`` before it
    (as does a leading ``'``, so :func:`spreadsheet_value` can undo it). Non-text passes."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, ESCAPE_MARK)):
        return ESCAPE_MARK + value
    return value


def spreadsheet_value(value: Any) -> Any:
    """The raw value of a cell written by :func:`spreadsheet_cell`."""
    if isinstance(value, str) and value.startswith(ESCAPE_MARK):
        return value[len(ESCAPE_MARK) :]
    return value
