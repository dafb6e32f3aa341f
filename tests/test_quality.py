"""Data quality: the GX suites in ``expectations/`` run on small hand-built manifests and splits.

No images are needed (a manifest row is what ingest found out about one file), except for the
near-duplicate check, which uses a real x-ray and a re-encoded copy of it.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from cxr_model.images import inspect_image
from cxr_model.offline_docs import ASSETS, VENDORED, external_assets
from cxr_model.quality import (
    AUDIT_PAGE,
    DATASET_SUITE,
    IMAGE_SUITE,
    SPLIT_SUITE,
    QualityError,
    QualityReport,
    QualitySettings,
    SplitReport,
    default_expectations_dir,
    load_suite,
    validate_manifest,
    validate_split,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"


def row(i: int, **changes: Any) -> dict[str, Any]:
    """A clean manifest row: a 256x256 PNG, labels alternating normal/covid."""
    values: dict[str, Any] = dict(
        key=f"raw/{i:04d}.png",
        sha256=f"{i:064x}",
        label="covid" if i % 2 else "normal",
        source="kaggle",
        patient_id=f"p{i}",
        original_path=f"images/{i:04d}.png",
        view="PA",
        format="PNG",
        mode="L",
        width=256,
        height=256,
        bytes=4096,
        decodable=True,
        error=None,
        duplicate_of=None,
        dhash=None,
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
TOO_SMALL = dict(width=40, height=60)
STRIP = dict(width=2000, height=700)
UNKNOWN_LABEL = dict(label="pneumonia")
DUPLICATE = dict(duplicate_of="raw/0000.png", sha256=f"{0:064x}")
LATERAL = dict(view="L")


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
        (STRIP, "aspect ratio 2.86 > 2.5 (long side / short side): not the shape of a chest x-ray"),
        (ZERO_BYTES, "empty file (0 bytes)"),
        (UNKNOWN_LABEL, "unknown label 'pneumonia' (expected one of: covid, normal)"),
        (DUPLICATE, "duplicate of raw/0000.png"),
        (LATERAL, "lateral/non-frontal view 'L'"),
    ],
    ids=[
        "undecodable",
        "too-small",
        "strip",
        "zero-bytes",
        "unknown-label",
        "duplicate",
        "lateral",
    ],
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

    split = load_suite(default_expectations_dir() / f"{SPLIT_SUITE}.json")

    assert images.name == IMAGE_SUITE and len(images.expectations) == 10
    assert {e.severity.value for e in images.expectations} == {"warning"}
    assert dataset.name == DATASET_SUITE and len(dataset.expectations) == 6
    assert {e.severity.value for e in dataset.expectations} == {"critical"}
    assert {(e.meta or {}).get("batch") for e in dataset.expectations} == {None, "classes"}
    assert split.name == SPLIT_SUITE and len(split.expectations) == 4
    severities = {e.meta["batch"]: e.severity.value for e in split.expectations}
    assert severities == {
        "patients": "critical",
        "contents": "critical",
        "classes": "critical",
        "near_duplicates": "warning",
    }


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


# --- frontal views -----------------------------------------------------------------------------


def test_only_non_frontal_views_named_in_the_metadata_are_quarantined(tmp_path: Path) -> None:
    views = ["PA", "ap", "AP Supine", "ap erect", " AP ", None, "unknown", "L", "Lateral", "LL"]
    frame = manifest(20, **{f"r{i}": dict(view=view) for i, view in enumerate(views)})

    report = validate(frame, tmp_path)

    reasons = {r.key: r.reasons for r in report.rejected}
    assert reasons == {
        "raw/0007.png": ["lateral/non-frontal view 'L'"],
        "raw/0008.png": ["lateral/non-frontal view 'Lateral'"],
        "raw/0009.png": ["lateral/non-frontal view 'LL'"],
    }
    assert report.passed


def test_frontal_views_come_from_the_settings(tmp_path: Path) -> None:
    frame = manifest(20, r1=dict(view="AP"), r2=dict(view="PA"))

    report = validate(frame, tmp_path, frontal_views=["PA"])

    assert [(r.key, r.reasons) for r in report.rejected] == [
        ("raw/0001.png", ["lateral/non-frontal view 'AP'"])
    ]


def test_a_manifest_without_view_or_dhash_columns_still_validates(tmp_path: Path) -> None:
    report = validate(manifest(20).drop(columns=["view", "dhash"]), tmp_path)

    assert report.passed and report.rejected == []


# --- class balance and patients per class -------------------------------------------------------


def test_a_class_below_min_class_share_is_a_critical_failure(tmp_path: Path) -> None:
    # 40 images, 2 covid: a share of 0.05
    frame = manifest(40, **{f"r{i}": dict(label="normal") for i in range(5, 40, 2)})
    assert (frame["label"] == "covid").sum() == 2

    report = validate(frame, tmp_path)

    assert not report.passed
    [failure] = report.critical_failures
    assert (failure.suite, failure.column) == (DATASET_SUITE, "share")
    assert failure.unexpected_count == 1
    assert failure.summary.startswith(
        "class 'covid' has 2 of 40 accepted images (share 0.05 < min_class_share 0.1)"
    )
    assert "add images of the minority class" in failure.summary
    assert "class 'covid' has 2 of 40" in str(QualityError(report))
    assert validate(frame, tmp_path, min_class_share=0.05).passed


def test_a_class_with_too_few_patients_is_a_critical_failure(tmp_path: Path) -> None:
    # all 10 covid images come from one patient
    frame = manifest(20, **{f"r{i}": dict(patient_id="p1") for i in range(1, 20, 2)})

    report = validate(frame, tmp_path)

    [failure] = report.critical_failures
    assert (failure.suite, failure.column) == (DATASET_SUITE, "patients")
    assert failure.summary.startswith("class 'covid' has 1 patient(s) < min_patients_per_class 2")
    assert validate(frame, tmp_path, min_patients_per_class=1).passed


def test_images_without_patient_id_count_as_their_own_patient(tmp_path: Path) -> None:
    frame = manifest(20, **{f"r{i}": dict(patient_id=None) for i in range(20)})

    assert validate(frame, tmp_path).passed


# --- shortcut audit in the report -----------------------------------------------------------------


def one_source_per_class(n: int = 20) -> pd.DataFrame:
    frame = manifest(n)
    frame["source"] = frame["label"].map({"covid": "hospital-a", "normal": "hospital-b"})
    return frame


def test_the_shortcut_audit_flags_one_source_per_class_without_failing(tmp_path: Path) -> None:
    report = validate(one_source_per_class(), tmp_path)

    assert report.passed  # the audit warns, it never fails the run
    assert report.audit is not None and report.audit.flagged == ["source"]
    markdown = report.summary_markdown()
    warning = (
        "**Warning: source separates the labels (AUC 1.00): all covid from hospital-a, "
        "all normal from hospital-b — a model can learn the source instead of the disease**"
    )
    assert warning in markdown
    # shown before the failed expectations and rejected files
    assert markdown.index(warning) < markdown.index("### Shortcut audit") + 200
    # the heading never reads as a clean pass when the audit raised a flag
    first = markdown.splitlines()[0]
    assert first == "## Data quality: passed with 1 SHORTCUT WARNING(S)"
    assert "warnings: 0" not in markdown
    assert markdown.index(warning) < markdown.index("- files:")

    page = (Path(report.docs_dir) / AUDIT_PAGE).read_text(encoding="utf-8")
    assert "source separates the labels (AUC 1.00)" in page
    index = (Path(report.docs_dir) / "index.html").read_text(encoding="utf-8")
    assert "source separates the labels (AUC 1.00)" in index
    assert f'href="{AUDIT_PAGE}"' in index


def test_the_shortcut_audit_only_looks_at_accepted_rows(tmp_path: Path) -> None:
    # the only "hospital-b" covid image is undecodable, so hospital-b is all normal once accepted
    frame = one_source_per_class(20)
    frame.loc[1, "source"] = "hospital-b"
    mixed = validate(frame, tmp_path / "mixed")
    frame.loc[1, list(UNDECODABLE)] = list(UNDECODABLE.values())
    accepted = validate(frame, tmp_path / "accepted")

    assert mixed.audit is not None and accepted.audit is not None
    [before] = [f for f in mixed.audit.features if f.feature == "source"]
    assert before.auc < 1.0
    assert accepted.audit.flagged == ["source"] and accepted.audit.images == 19


def test_a_clean_manifest_has_an_audit_without_flags(tmp_path: Path) -> None:
    report = validate(manifest(20), tmp_path)

    assert report.audit is not None and report.audit.flags == []
    assert "source" in report.audit.skipped  # one source: nothing to compare
    assert "Shortcut audit: no flags" in (Path(report.docs_dir) / "index.html").read_text(
        encoding="utf-8"
    )


def test_shortcut_threshold_comes_from_the_settings(tmp_path: Path) -> None:
    # file size tells 7 of the 10 covid images apart: AUC (7 * 10 + 3 * 10 / 2) / 100 = 0.85
    frame = manifest(20, **{f"r{i}": dict(bytes=5000) for i in (1, 3, 5, 7, 9, 11, 13)})

    assert validate(frame, tmp_path).audit.flags == []  # type: ignore[union-attr]
    report = validate(frame, tmp_path, shortcut_auc_threshold=0.8)
    assert report.audit is not None and report.audit.flagged == ["bytes"]
    assert report.audit.flags[0].auc == pytest.approx(0.85)


# --- split validation --------------------------------------------------------------------------


def split_row(i: int, split: str, **changes: Any) -> dict[str, Any]:
    values = row(i)
    values = dict(
        split=split,
        label=values["label"],
        patient_id=values["patient_id"],
        sha256=values["sha256"],
        raw_key=f"raw/sha256/{values['sha256'][:2]}/{values['sha256']}",
        dataset_key=f"datasets/x/{split}/{values['label']}/{values['sha256']}.png",
        key=values["key"],
        source=values["source"],
    )
    values.update(changes)
    return values


def split_frame(n: int = 20, val_every: int = 5, **changes: dict[str, Any]) -> pd.DataFrame:
    """Every ``val_every``-th pair of rows in Val (so Val has both classes), the rest Train."""
    rows = [split_row(i, "Val" if (i // 2) % val_every == 0 else "Train") for i in range(n)]
    for name, change in changes.items():
        index = int(name.removeprefix("r"))
        rows[index] = {**rows[index], **change}
    return pd.DataFrame(rows)


def check_split(
    frame: pd.DataFrame, tmp_path: Path, images: pd.DataFrame | None = None, **settings: Any
) -> SplitReport:
    images = manifest(len(frame)) if images is None else images
    return validate_split(frame, images, QualitySettings(**settings), tmp_path / "docs")


def test_a_clean_split_passes(tmp_path: Path) -> None:
    frame = split_frame(20)

    report = check_split(frame, tmp_path)

    assert report.passed and report.warnings == []
    assert report.counts == {"Train": {"covid": 8, "normal": 8}, "Val": {"covid": 2, "normal": 2}}
    assert {o.suite for o in report.outcomes} == {SPLIT_SUITE}
    assert len(report.outcomes) == 4
    assert "## Split quality: passed" in report.summary_markdown()


def test_a_patient_in_two_splits_is_a_critical_failure(tmp_path: Path) -> None:
    # raw/0003.png (Train) belongs to p0, whose other image raw/0000.png is in Val
    frame = split_frame(20, r3=dict(patient_id="p0", label="normal"))

    report = check_split(frame, tmp_path)

    assert not report.passed
    [failure] = report.critical_failures
    assert (failure.column, failure.unexpected_count) == ("n_splits", 1)
    assert failure.summary.startswith(
        "patient p0 is in 2 splits (Train, Val): raw/0000.png, raw/0003.png"
    )
    assert "data quality failed: 1 critical" in str(QualityError(report))


def test_the_same_content_in_two_splits_is_a_critical_failure(tmp_path: Path) -> None:
    frame = split_frame(20, r4=dict(sha256=f"{0:064x}", patient_id="p4", label="normal"))

    report = check_split(frame, tmp_path)

    [failure] = report.critical_failures
    assert failure.column == "n_splits"
    assert failure.summary.startswith(
        f"the same image (sha256 {0:064x}) is in 2 splits (Train, Val): raw/0000.png, raw/0004.png"
    )


def test_a_split_without_a_class_is_a_critical_failure(tmp_path: Path) -> None:
    frame = split_frame(20)
    frame.loc[(frame["split"] == "Val") & (frame["label"] == "normal"), "split"] = "Train"

    report = check_split(frame, tmp_path)

    [failure] = report.critical_failures
    assert (failure.column, failure.unexpected_count) == ("images", 1)
    assert failure.summary.startswith("Val has no normal images")


def test_a_split_frame_without_required_columns_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split frame lacks columns: patient_id"):
        check_split(split_frame(20).drop(columns=["patient_id"]), tmp_path)


def real_xray() -> tuple[str, bytes]:
    manifest_file = REAL_DATA / "manifest.csv"
    if not manifest_file.is_file():
        pytest.skip(f"real x-rays not found at {REAL_DATA}")
    with open(manifest_file, newline="") as fh:
        first = next(r for r in csv.DictReader(fh) if r["source"] == "hannover")
    return first["file"], (REAL_DATA / first["file"]).read_bytes()


def test_a_near_duplicate_across_splits_is_a_warning_naming_both_files(tmp_path: Path) -> None:
    name, original = real_xray()
    buf = io.BytesIO()
    Image.open(io.BytesIO(original)).save(buf, format="JPEG", quality=80)
    copy = buf.getvalue()
    frame = split_frame(20)
    images = manifest(20)
    # raw/0002.png (Train) is the real x-ray, raw/0000.png (Val) a JPEG re-encode of it:
    # different bytes, same picture; all other images have no hash
    images.loc[2, ["original_path", "dhash"]] = [name, inspect_image(original).dhash]
    images.loc[0, ["original_path", "dhash"]] = ["copy.jpg", inspect_image(copy).dhash]
    assert frame.loc[0, "split"] == "Val" and frame.loc[2, "split"] == "Train"

    report = check_split(frame, tmp_path, images)

    assert report.passed  # a warning only
    [warning] = report.warnings
    assert (warning.column, warning.unexpected_count) == ("nearest_train_distance", 1)
    assert f"Val raw/0000.png (copy.jpg) looks like Train raw/0002.png ({name})" in warning.summary
    [pair] = report.near_duplicates
    assert (pair.val_key, pair.val_path, pair.train_key, pair.train_path) == (
        "raw/0000.png",
        "copy.jpg",
        "raw/0002.png",
        name,
    )
    assert pair.distance <= 4
    assert report.hashed == {"Val": 1, "Train": 1}
    markdown = report.summary_markdown()
    assert f"| {pair.distance} | copy.jpg | {name} |" in markdown

    # identical bytes are the critical sha256 check's business, not a near-duplicate
    frame.loc[0, "sha256"] = frame.loc[2, "sha256"]
    images.loc[0, "dhash"] = images.loc[2, "dhash"]
    again = check_split(frame, tmp_path, images)
    assert again.near_duplicates == [] and not again.passed


def test_near_duplicate_distance_comes_from_the_settings(tmp_path: Path) -> None:
    frame = split_frame(20)
    images = manifest(20)
    images.loc[0, "dhash"] = "00000000000000ff"  # Val
    images.loc[2, "dhash"] = "000000000000000f"  # Train, 4 bits apart
    images.loc[4, "dhash"] = "ffffffffffffff00"  # Train, far from both

    found = check_split(frame, tmp_path, images, near_duplicate_distance=4).near_duplicates
    assert [p.distance for p in found] == [4]
    report = check_split(frame, tmp_path, images, near_duplicate_distance=3)
    assert report.near_duplicates == [] and report.warnings == []


def _loaded_assets(docs: Path) -> dict[Path, list[str]]:
    """Page → the addresses its <script> and <link> tags load, for every Data Docs page."""
    pages = [p for p in docs.rglob("*.html") if ".gx" not in p.relative_to(docs).parts]
    assert len(pages) > 3
    return {
        page: re.findall(r"<(?:script|link)\b[^>]*?(?:src|href)=\"([^\"]+)\"", page.read_text())
        for page in pages
    }


def test_data_docs_load_no_script_or_stylesheet_from_the_internet(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    validate_manifest(one_source_per_class(20), QualitySettings(), docs)
    validate_split(split_frame(20), manifest(20), QualitySettings(), docs)
    for page, addresses in _loaded_assets(docs).items():
        assert external_assets(page.read_text()) == [], page
        assert addresses or page.name == AUDIT_PAGE, page  # GX pages load styles, scripts ...
        for address in addresses:
            assert not re.match(r"(https?:)?//", address), (page, address)
            assert (page.parent / address).resolve().is_file(), (page, address)  # ... locally
        assert "integrity=" not in page.read_text() and "crossorigin=" not in page.read_text()
    index = (docs / "index.html").read_text()
    assert 'href="static/vendor/bootstrap/css/bootstrap.min.css"' in index
    assert 'src="static/vendor/jquery/jquery.min.js"' in index
    fonts = docs / "static" / "vendor" / "fontawesome" / "webfonts"
    assert (fonts / "fa-solid-900.woff2").stat().st_size > 10_000


def test_every_cdn_address_gx_writes_has_a_local_copy() -> None:
    for address, local in ASSETS.items():
        assert address.startswith("https://")
        assert (VENDORED / local).is_file(), local


def test_split_results_join_the_manifest_data_docs(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    validate_manifest(one_source_per_class(20), QualitySettings(), docs)
    report = validate_split(split_frame(20), manifest(20), QualitySettings(), docs)

    assert Path(report.docs_dir) == docs.resolve()
    index = (docs / "index.html").read_text(encoding="utf-8")
    for suite in (IMAGE_SUITE, DATASET_SUITE, SPLIT_SUITE):
        assert suite in index
    assert list((docs / "validations" / IMAGE_SUITE).rglob("*.html"))
    assert list((docs / "validations" / SPLIT_SUITE).rglob("*.html"))
    assert "source separates the labels" in index  # the audit banner survives the rebuild
    assert index.count('id="cxr-shortcut-audit"') == 1


def test_split_report_survives_pickling(tmp_path: Path) -> None:
    report = check_split(split_frame(20, r3=dict(patient_id="p0")), tmp_path)

    error = pickle.loads(pickle.dumps(QualityError(report)))

    assert error.report == report


HOSTILE_TEXT = {
    "original_path": "images/<img src=x onerror=alert(2)>.png",
    "label": "<script>alert(1)</script>",
    "source": "<script>alert(3)</script>",
    "patient_id": "<svg onload=alert(4)>",
}


def _raw_markup_in(folder: Path) -> list[str]:
    """Every generated page or script that carries input markup unescaped."""
    found = []
    for page in folder.rglob("*"):
        if page.is_file() and page.suffix in {".html", ".js"}:
            text = page.read_text(encoding="utf-8", errors="replace")
            for payload in ("<script>alert(", "<img src=x onerror", "<svg onload"):
                if payload in text:
                    found.append(f"{page.relative_to(folder)}: {payload}")
    return found


@pytest.mark.parametrize("field", sorted(HOSTILE_TEXT))
def test_markup_in_input_never_reaches_the_data_docs_raw(tmp_path: Path, field: str) -> None:
    hostile = HOSTILE_TEXT[field]
    bad_rows = {f"r{i}": {field: f"{hostile}{i}"} for i in (3, 4)}
    if field == "original_path":  # the file name is also in the row's key, as ingest makes it
        bad_rows = {
            "r3": {field: hostile, "key": f"kaggle/{hostile}", **TOO_SMALL},
            "r4": {field: hostile + "4", "key": f"kaggle/{hostile}4", **UNDECODABLE},
        }

    report = validate(manifest(20, **bad_rows), tmp_path)

    assert (tmp_path / "docs" / "index.html").exists()
    assert _raw_markup_in(tmp_path / "docs") == []
    # the value is still reported, escaped, so a person can find the file
    pages = "".join(p.read_text(errors="replace") for p in (tmp_path / "docs").rglob("*.html"))
    assert report.total == 20
    if field in {"original_path", "label"}:
        assert "&lt;" in pages
    if field == "label":  # the report itself keeps the raw value, for the people who fix it
        assert f"unknown label '{hostile}3'" in report.rejected[0].reasons[0]
    if field == "original_path":
        assert [r.original_path for r in report.rejected] == [hostile, hostile + "4"]
