"""Data quality: the GX suites in ``expectations/`` run on small hand-built manifests.

No images are needed: a manifest row is what ingest found out about one file.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cxr_model.quality import (
    DATASET_SUITE,
    IMAGE_SUITE,
    QualityError,
    QualityReport,
    QualitySettings,
    default_expectations_dir,
    load_suite,
    validate_manifest,
)


def row(i: int, **changes: Any) -> dict[str, Any]:
    """A clean manifest row: a 256x256 PNG, labels alternating normal/covid."""
    values: dict[str, Any] = dict(
        key=f"raw/{i:04d}.png",
        sha256=f"{i:064x}",
        label="covid" if i % 2 else "normal",
        source="kaggle",
        patient_id=f"p{i}",
        original_path=f"images/{i:04d}.png",
        format="PNG",
        mode="L",
        width=256,
        height=256,
        bytes=4096,
        decodable=True,
        error=None,
        duplicate_of=None,
    )
    values.update(changes)
    return values


def manifest(n: int = 20, **bad_rows: dict[str, Any]) -> pd.DataFrame:
    """``n`` clean rows; ``bad_rows`` maps ``r<index>`` to the changes for that row."""
    rows = [row(i) for i in range(n)]
    for name, changes in bad_rows.items():
        index = int(name.removeprefix("r"))
        rows[index] = row(index, **changes)
    return pd.DataFrame(rows)


UNDECODABLE = dict(
    decodable=False,
    error="cannot identify image file",
    format=None,
    mode=None,
    width=None,
    height=None,
)
ZERO_BYTES = dict(
    bytes=0, decodable=False, error="empty file", format=None, mode=None, width=None, height=None
)
TOO_SMALL = dict(width=40, height=300)
UNKNOWN_LABEL = dict(label="pneumonia")
DUPLICATE = dict(duplicate_of="raw/0000.png", sha256=f"{0:064x}")


def validate(frame: pd.DataFrame, tmp_path: Path, **settings: Any) -> QualityReport:
    return validate_manifest(frame, QualitySettings(**settings), tmp_path / "docs")


def test_clean_manifest_passes_with_every_row_accepted(tmp_path: Path) -> None:
    frame = manifest(20)

    report = validate(frame, tmp_path)

    assert report.passed
    assert report.total == 20
    assert report.accepted_keys == list(frame["key"])
    assert report.rejected == []
    assert report.warnings == [] and report.critical_failures == []
    assert {o.suite for o in report.outcomes} == {IMAGE_SUITE, DATASET_SUITE}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (UNDECODABLE, "not decodable: cannot identify image file"),
        (TOO_SMALL, "shorter side 40 px < 64 px"),
        (ZERO_BYTES, "empty file (0 bytes)"),
        (UNKNOWN_LABEL, "unknown label 'pneumonia' (expected one of: covid, normal)"),
        (DUPLICATE, "duplicate of raw/0000.png"),
    ],
    ids=["undecodable", "too-small", "zero-bytes", "unknown-label", "duplicate"],
)
def test_a_bad_row_is_quarantined_with_its_reason(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    frame = manifest(20, r5=changes)

    report = validate(frame, tmp_path)

    assert [r.key for r in report.rejected] == ["raw/0005.png"]
    assert report.rejected[0].original_path == "images/0005.png"
    assert reason in report.rejected[0].reasons
    assert report.accepted_keys == [k for k in frame["key"] if k != "raw/0005.png"]
    assert report.passed  # per-image problems are warnings: the run goes on
    assert report.warnings and all(o.severity == "warning" for o in report.warnings)


def test_several_bad_rows_each_get_their_own_reasons(tmp_path: Path) -> None:
    frame = manifest(
        20, r1=UNDECODABLE, r2=TOO_SMALL, r3=ZERO_BYTES, r4=UNKNOWN_LABEL, r6=DUPLICATE
    )

    report = validate(frame, tmp_path)

    reasons = {r.key: r.reasons for r in report.rejected}
    assert reasons == {
        "raw/0001.png": ["not decodable: cannot identify image file"],
        "raw/0002.png": ["shorter side 40 px < 64 px"],
        # an empty file is also undecodable; both reasons are reported
        "raw/0003.png": ["not decodable: empty file", "empty file (0 bytes)"],
        "raw/0004.png": ["unknown label 'pneumonia' (expected one of: covid, normal)"],
        "raw/0006.png": ["duplicate of raw/0000.png"],
    }
    assert len(report.accepted_keys) == 15
    failed = {(o.expectation, o.column): o.unexpected_count for o in report.warnings}
    assert failed[("expect_column_values_to_be_in_set", "decodable")] == 2
    assert failed[("expect_column_values_to_be_null", "duplicate_of")] == 1

    markdown = report.summary_markdown()
    assert "accepted: 15, rejected: 5" in markdown
    assert "images/0002.png | shorter side 40 px < 64 px" in markdown


def test_only_one_class_left_after_quarantine_is_a_critical_failure(tmp_path: Path) -> None:
    # every "normal" image (even rows) is undecodable, so only covid images are accepted
    frame = manifest(24, **{f"r{i}": UNDECODABLE for i in range(0, 24, 2)})

    report = validate(frame, tmp_path)

    assert not report.passed
    assert len(report.accepted_keys) == 12
    [failure] = report.critical_failures
    assert failure.suite == DATASET_SUITE
    assert failure.expectation == "expect_column_distinct_values_to_contain_set"
    assert failure.column == "label"
    assert "normal" in failure.summary

    error = QualityError(report)
    assert error.report is report
    message_lines = str(error).splitlines()
    assert message_lines[0] == "data quality failed: 1 critical expectation(s) failed"
    assert "expect_column_distinct_values_to_contain_set [label]" in message_lines[1]


@pytest.mark.parametrize(
    ("rows", "min_rows", "max_rows", "passed"),
    [(20, 10, 100, True), (20, 20, 20, True), (9, 10, 100, False), (20, 10, 19, False)],
)
def test_accepted_row_count_must_be_within_bounds(
    tmp_path: Path, rows: int, min_rows: int, max_rows: int, passed: bool
) -> None:
    report = validate(manifest(rows), tmp_path, min_rows=min_rows, max_rows=max_rows)

    assert report.passed is passed
    if not passed:
        [failure] = report.critical_failures
        assert failure.expectation == "expect_table_row_count_to_be_between"
        assert f"{rows} rows, expected between {min_rows} and {max_rows}" in failure.summary


def test_rejected_rows_do_not_count_towards_min_rows(tmp_path: Path) -> None:
    frame = manifest(12, r0=UNDECODABLE, r1=UNDECODABLE, r2=UNDECODABLE)

    report = validate(frame, tmp_path, min_rows=10)

    assert [o.expectation for o in report.critical_failures] == [
        "expect_table_row_count_to_be_between"
    ]
    assert "9 rows, expected between 10" in report.critical_failures[0].summary


def test_min_side_setting_changes_the_outcome(tmp_path: Path) -> None:
    frame = manifest(20, r3=dict(width=100, height=120))

    assert validate(frame, tmp_path).rejected == []
    report = validate(frame, tmp_path, min_side=128)

    assert [r.reasons for r in report.rejected] == [["shorter side 100 px < 128 px"]]


def test_data_docs_site_is_built_into_docs_dir(tmp_path: Path) -> None:
    report = validate(manifest(20, r2=TOO_SMALL), tmp_path)

    index = Path(report.docs_dir) / "index.html"
    assert Path(report.docs_dir) == (tmp_path / "docs").resolve()
    assert index.is_file()
    html = index.read_text()
    assert IMAGE_SUITE in html and DATASET_SUITE in html
    assert list((tmp_path / "docs" / "validations" / IMAGE_SUITE).rglob("*.html"))


def test_manifest_read_back_from_csv_gives_the_same_result(tmp_path: Path) -> None:
    # manifests travel as CSV and are read back as strings with None for empty cells
    frame = manifest(20, r1=UNDECODABLE, r2=TOO_SMALL, r3=ZERO_BYTES)
    csv = tmp_path / "manifest.csv"
    frame.to_csv(csv, index=False)
    as_strings = pd.read_csv(csv, dtype=str, keep_default_na=False).replace({"": None})

    typed = validate(frame, tmp_path)
    from_csv = validate(as_strings, tmp_path)

    assert from_csv.rejected == typed.rejected
    assert from_csv.accepted_keys == typed.accepted_keys


def test_duplicates_that_slip_past_quarantine_fail_the_dataset_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a copy of the suites without the duplicate_of check, found through CXR_EXPECTATIONS_DIR
    custom = tmp_path / "expectations"
    shutil.copytree(default_expectations_dir(), custom)
    suite_file = custom / f"{IMAGE_SUITE}.json"
    suite = json.loads(suite_file.read_text())
    suite["expectations"] = [
        e for e in suite["expectations"] if e["kwargs"].get("column") != "duplicate_of"
    ]
    suite_file.write_text(json.dumps(suite))
    monkeypatch.setenv("CXR_EXPECTATIONS_DIR", str(custom))

    report = validate(manifest(20, r7=DUPLICATE), tmp_path)

    assert report.rejected == []
    [failure] = report.critical_failures
    assert (failure.expectation, failure.column) == ("expect_column_values_to_be_unique", "sha256")
    assert failure.unexpected_count == 2


def test_suites_are_gx_suites_with_the_intended_severities() -> None:
    images = load_suite(default_expectations_dir() / f"{IMAGE_SUITE}.json")
    dataset = load_suite(default_expectations_dir() / f"{DATASET_SUITE}.json")

    assert images.name == IMAGE_SUITE and len(images.expectations) == 8
    assert {e.severity.value for e in images.expectations} == {"warning"}
    assert dataset.name == DATASET_SUITE and len(dataset.expectations) == 4
    assert {e.severity.value for e in dataset.expectations} == {"critical"}


def test_a_broken_suite_is_refused_with_its_file_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    suite = {"name": "bad", "expectations": [{"type": "expect_it", "kwargs": {}}]}
    bad.write_text(json.dumps(suite))

    with pytest.raises(ValueError, match=r"bad\.json: expectation 0 \(expect_it\)"):
        load_suite(bad)


def test_a_manifest_without_required_columns_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manifest lacks columns: duplicate_of"):
        validate(manifest(20).drop(columns=["duplicate_of"]), tmp_path)


def test_quality_error_survives_pickling(tmp_path: Path) -> None:
    # orchestrators move exceptions between processes
    report = validate(manifest(5), tmp_path)

    error = pickle.loads(pickle.dumps(QualityError(report)))

    assert error.report == report
    assert "expect_table_row_count_to_be_between" in str(error)
