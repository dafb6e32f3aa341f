"""Markdown tables for the reports (quality, evaluation, model card, gate, audit, estimates).

One helper so every table is built the same way: each cell, header included, goes through
:func:`cxr_model.safe_text.markdown_cell`, so a file name, label or source with ``|`` or markup
cannot break the table or render as HTML. Callers pass raw values (numbers already formatted as
they want them shown); emphasis such as ``**name**`` or a code span passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cxr_model.safe_text import markdown_cell

__all__ = ["markdown_table"]

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str = ""
) -> list[str]:
    """The lines of a Markdown table: header, rule, one line per row, every cell escaped.

    ``align`` has one letter per column, ``l`` (left, the default for missing letters), ``r``
    (right) or ``c`` (centre). A row with another number of cells than the header is an error.
    """
    width = len(header)
    unknown = set(align) - set(_RULES)
    if unknown or len(align) > width:
        raise ValueError(f"align {align!r}: one of l, r, c per column ({width} columns)")
    rules = [_RULES[a] for a in align.ljust(width, "l")]
    lines = [_line(header), "|" + "|".join(rules) + "|"]
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise ValueError(f"table row {number} has {len(row)} cells, the header {width}")
        lines.append(_line(row))
    return lines


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(markdown_cell(cell) for cell in cells) + " |"
