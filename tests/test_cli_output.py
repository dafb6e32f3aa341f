"""What the CLI prints: one console line per message, whatever the file names contain."""

from __future__ import annotations

import io
import logging

import pytest
import typer
from rich.console import Console

from flows import cli

HOSTILE_NAME = "inbox/x.png\n  0s scored 1000 files, 0 errors [/] [bold red]\x1b[2J.png"


@pytest.fixture
def printed(monkeypatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=400, color_system=None))
    return out


def test_a_progress_line_with_a_hostile_file_name_stays_one_line(printed) -> None:
    record = logging.LogRecord("cxr.progress", logging.INFO, "", 0, "", None, None)
    record.msg = f"quarantined {HOSTILE_NAME}: not decodable"

    cli._ProgressHandler().emit(record)

    lines = printed.getvalue().splitlines()
    assert len(lines) == 1
    assert "x.png\\n  0s scored 1000 files, 0 errors [/] [bold red]\\x1b[2J.png" in lines[0]


def test_an_error_naming_a_hostile_file_is_one_line(printed) -> None:
    with pytest.raises(typer.Exit):
        cli._fail(ValueError(f"{HOSTILE_NAME}: file too large"))

    first, *rest = printed.getvalue().splitlines()
    assert first.startswith("error: inbox/x.png\\n") and first.endswith("file too large")
    assert all(line.startswith("details:") for line in rest)


def test_a_multi_line_error_prints_each_of_its_lines(printed) -> None:
    class ListedError(Exception):
        lines = ["data quality failed: 2 critical", f"- {HOSTILE_NAME}", "- too few rows"]

    with pytest.raises(typer.Exit):
        cli._fail(ListedError("unused"))

    shown = printed.getvalue().splitlines()
    assert shown[0] == "error: data quality failed: 2 critical"
    assert shown[1].startswith("  - inbox/x.png\\n") and shown[2] == "  - too few rows"
