"""The one Markdown table helper the reports build their tables with."""

from __future__ import annotations

import pytest

from cxr_model.markdown import markdown_table


def test_table_has_header_rule_and_rows_with_alignment() -> None:
    lines = markdown_table(
        ["metric", "value", "note"], [["AUC", "0.912", ""], ["n", 3, None]], "lr"
    )
    assert lines == [
        "| metric | value | note |",
        "|---|---:|---|",
        "| AUC | 0.912 |  |",
        "| n | 3 | None |",
    ]


def test_every_cell_is_escaped_header_included() -> None:
    lines = markdown_table(["a|b", "<script>"], [["x|y", "<img src=x onerror=alert(1)>"]])
    assert lines[0] == "| a\\|b | &lt;script> |"
    assert lines[2] == "| x\\|y | &lt;img src=x onerror=alert(1)> |"
    assert lines[2].count(" | ") == 1  # still two cells


def test_emphasis_and_code_spans_pass_through() -> None:
    lines = markdown_table(["feature", "expectation"], [["**source**", "`expect_x`"]], "c")
    assert lines[1] == "|:---:|---|"
    assert lines[2] == "| **source** | `expect_x` |"


def test_no_rows_is_header_only() -> None:
    assert markdown_table(["a"], []) == ["| a |", "|---|"]


@pytest.mark.parametrize(
    ("rows", "align", "message"),
    [([["1", "2", "3"]], "", "table row 1 has 3 cells, the header 2"), ([], "lrr", "align")],
)
def test_bad_rows_or_alignment_are_refused(rows: list, align: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        markdown_table(["a", "b"], rows, align)
