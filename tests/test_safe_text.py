"""Untrusted text in the places people read it: console lines, Markdown, spreadsheets."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from cxr_model.manifest import read_csv, write_csv
from cxr_model.safe_text import (
    console_text,
    markdown_cell,
    markdown_text,
    spreadsheet_cell,
    spreadsheet_value,
)
from cxr_model.scoring import Prediction, frame_to_csv_bytes, merge_tables, predictions_frame

FORMULAS = ["=cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "+1+1", "-2+3", "\t=1", "\r=1"]


def _runs_as_formula(cell: str) -> bool:
    """A cell a spreadsheet would evaluate (a plain number such as ``-1`` is data)."""
    try:
        float(cell)
        return False
    except ValueError:
        return cell[:1] in {"=", "+", "-", "@", "\t", "\r"}


def test_a_newline_in_a_file_name_cannot_forge_a_console_line() -> None:
    name = "x.png\nscored 1000 files, 0 errors\x1b[2J"

    shown = console_text(name)

    assert "\n" not in shown and "\x1b" not in shown
    assert shown == "x.png\\nscored 1000 files, 0 errors\\x1b[2J"
    assert console_text("Röntgen été.png") == "Röntgen été.png"  # letters stay as written


def test_markup_in_markdown_is_shown_not_rendered() -> None:
    assert markdown_text("<script>alert(1)</script>") == "&lt;script>alert(1)&lt;/script>"
    assert markdown_text("<img src=x onerror=alert(2)>") == "&lt;img src=x onerror=alert(2)>"
    assert markdown_text("40 px < 64 px") == "40 px < 64 px"
    assert markdown_cell("a|b\nc") == "a\\|b\\nc"


@pytest.mark.parametrize("value", [*FORMULAS, "'quoted", "''", "plain", "", "a=b"])
def test_the_spreadsheet_escape_is_safe_and_reversible(value: str) -> None:
    cell = spreadsheet_cell(value)

    assert not _runs_as_formula(cell)
    assert spreadsheet_value(cell) == value
    assert spreadsheet_cell(3.5) == 3.5 and spreadsheet_cell(None) is None


def test_manifest_csvs_never_start_a_cell_with_a_formula(store) -> None:
    frame = pd.DataFrame(
        {
            "key": [f"kaggle/{i}.png" for i in range(len(FORMULAS))],
            "patient_id": FORMULAS,
            "label": ["covid"] * len(FORMULAS),
            "width": [-1, 2, 3, 4, 5, 6],
        }
    )

    key = write_csv(store, "manifests/ingest-test.csv", frame)

    cells = [
        c for row in csv.reader(io.StringIO(store.get_bytes(key).decode(), newline="")) for c in row
    ]
    assert [c for c in cells if _runs_as_formula(c)] == []
    back = read_csv(store, key)
    assert list(back["patient_id"]) == FORMULAS  # machine readers get the raw values back
    assert list(back["width"]) == ["-1", "2", "3", "4", "5", "6"]


def test_predictions_csv_is_escaped_and_its_parquet_keeps_the_raw_paths(store) -> None:
    rows = [Prediction(path, "ab" * 32, 0.25, "normal", 1, "scored", None) for path in FORMULAS] + [
        Prediction("@evil.png", "", None, None, 1, "error", "-not an image")
    ]
    store.put_bytes("run/chunks/0.csv", frame_to_csv_bytes(predictions_frame(rows)))

    preview = merge_tables(store, ["run/chunks/0.csv"], "run/p.csv", "run/p.parquet", 2)

    text = store.get_bytes("run/p.csv").decode()
    cells = [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]
    assert [c for c in cells if _runs_as_formula(c)] == []
    typed = pd.read_parquet(io.BytesIO(store.get_bytes("run/p.parquet")))
    assert list(typed["source_path"]) == [*FORMULAS, "@evil.png"]
    assert typed["error"].iloc[-1] == "-not an image"
    assert [row["source_path"] for row in preview] == FORMULAS[:2]  # shown raw in the UI table


def test_missing_values_read_back_as_none(store) -> None:
    frame = pd.DataFrame({"key": ["a", "b"], "error": [None, "=bad"]})

    back = read_csv(store, write_csv(store, "t.csv", frame))

    assert back["error"].tolist() == [None, "=bad"]
