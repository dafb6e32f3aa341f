"""The shortcut audit: real x-rays from one source per class, the same-hospital pair, and small
synthetic frames where the answer is known."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_model.audit import ShortcutAudit, audit_shortcuts

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    """An image-manifest-like frame of the real x-rays: manifest metadata plus what the file
    header says (size, mode, format) and the file size."""
    manifest = REAL_DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"real x-rays not found at {REAL_DATA}")
    rows = []
    with open(manifest, newline="") as fh:
        for record in csv.DictReader(fh):
            path = REAL_DATA / record["file"]
            with Image.open(path) as img:
                width, height, mode, fmt = img.width, img.height, img.mode, img.format
            rows.append(
                dict(
                    key=record["file"],
                    label=record["label"],
                    source=record["source"],
                    patient_id=record["patient_id"] or None,
                    view=record["view"] or None,
                    width=width,
                    height=height,
                    mode=mode,
                    format=fmt,
                    bytes=path.stat().st_size,
                )
            )
    return pd.DataFrame(rows)


def scores(audit: ShortcutAudit) -> dict[str, float]:
    return {f.feature: f.auc for f in audit.features}


def test_one_source_per_class_is_flagged_naming_the_source(real: pd.DataFrame) -> None:
    frame = real[real["source"].isin(["hannover", "nih-cxr8"])]

    audit = audit_shortcuts(frame)

    assert audit.images == 486 and audit.label_counts == {"covid": 243, "normal": 243}
    assert "source" in audit.flagged
    [source] = [f for f in audit.flags if f.feature == "source"]
    assert source.auc == pytest.approx(1.0)
    assert source.warning == (
        "source separates the labels (AUC 1.00): all covid from hannover, all normal from "
        "nih-cxr8 — a model can learn the source instead of the disease"
    )
    # hannover is 640 px wide, nih was downscaled to 512²: the size gives the label away too
    assert {"width", "height", "bytes"} <= set(audit.flagged)
    assert audit.flags[0].auc >= audit.flags[-1].auc  # worst first
    assert audit.skipped["mode"] == "one value: L"
    assert audit.skipped["format"] == "one value: PNG"
    mix = {m.source: (m.counts, m.positive_share) for m in audit.label_mix}
    assert mix == {
        "hannover": ({"covid": 243, "normal": 0}, 1.0),
        "nih-cxr8": ({"covid": 0, "normal": 243}, 0.0),
    }


def test_the_same_hospital_pair_does_not_flag_the_source(real: pd.DataFrame) -> None:
    frame = real[real["source"] == "actualmed"]

    audit = audit_shortcuts(frame)

    assert "source" not in audit.flagged
    assert audit.skipped["source"] == "one value: actualmed"
    assert audit.flags == []  # nothing about how these images were taken tells the label
    assert all(auc < 0.9 for auc in scores(audit).values())
    [mix] = audit.label_mix
    assert (mix.source, mix.images, mix.counts) == ("actualmed", 44, {"covid": 26, "normal": 18})
    assert mix.positive_share == pytest.approx(26 / 44)
    markdown = audit.summary_markdown()
    assert "| actualmed | 44 | 26 | 18 | 59% |" in markdown
    assert "No single acquisition feature separates the labels" in markdown


def test_all_real_sources_together_still_flag_the_source(real: pd.DataFrame) -> None:
    audit = audit_shortcuts(real)

    assert "source" in audit.flagged
    [flag] = [f for f in audit.flags if f.feature == "source"]
    assert "only covid from hannover, ieee8023" in flag.warning
    assert "several labels from actualmed" in flag.warning
    assert scores(audit)["view"] < 0.9  # scored on the 340 images that have a view
    assert next(f.rows for f in audit.features if f.feature == "view") == 340


def synthetic(n: int = 100, seed: int = 0) -> pd.DataFrame:
    """Half covid; nothing tells the label apart except what a test changes."""
    rng = np.random.default_rng(seed)
    label = np.array(["covid", "normal"] * (n // 2))
    return pd.DataFrame(
        dict(
            key=[f"k{i}" for i in range(n)],
            label=label,
            source="one-hospital",
            width=rng.integers(900, 1100, n),
            height=rng.integers(900, 1100, n),
            mode=rng.choice(["L", "RGB"], n),
            format="PNG",
            bytes=rng.integers(50_000, 60_000, n),
            view=rng.choice(["PA", "AP"], n),
        )
    )


def test_a_size_that_tells_the_label_is_flagged() -> None:
    frame = synthetic()
    frame["width"] = np.where(frame["label"] == "covid", 1200, 1000) + np.arange(len(frame)) % 7

    audit = audit_shortcuts(frame)

    assert "width" in audit.flagged and scores(audit)["width"] == pytest.approx(1.0)
    [flag] = [f for f in audit.flags if f.feature == "width"]
    assert flag.warning.startswith("width separates the labels (AUC 1.00): covid median 1203")
    assert flag.warning.endswith(
        "no overlap — a model can learn the image width instead of the disease"
    )
    assert "height" not in audit.flagged and "bytes" not in audit.flagged


def test_a_smaller_value_for_covid_is_a_tell_too() -> None:
    frame = synthetic()
    frame["bytes"] = np.where(frame["label"] == "covid", 1_000, 90_000)

    audit = audit_shortcuts(frame)

    assert audit.flagged == ["bytes"] and scores(audit)["bytes"] == pytest.approx(1.0)


def test_a_categorical_with_a_value_per_row_is_not_flagged() -> None:
    frame = synthetic()
    frame["source"] = [f"site-{i}" for i in range(len(frame))]  # unique per row

    audit = audit_shortcuts(frame)

    assert "source" not in audit.flagged
    assert scores(audit)["source"] < 0.7


def test_a_categorical_tell_is_flagged_when_it_holds_across_folds() -> None:
    frame = synthetic()
    frame["view"] = np.where(frame["label"] == "covid", "AP", "pa")

    audit = audit_shortcuts(frame)

    assert audit.flagged == ["view"]
    assert audit.flags[0].warning.startswith(
        "view separates the labels (AUC 1.00): all covid with view AP, all normal with view PA"
    )


def test_noise_is_not_flagged() -> None:
    audit = audit_shortcuts(synthetic(200, seed=3))

    assert audit.flags == []
    assert audit.skipped == {"source": "one value: one-hospital", "format": "one value: PNG"}
    assert all(0.3 < auc < 0.75 for auc in scores(audit).values())


def test_missing_values_and_columns_are_left_out() -> None:
    frame = synthetic().drop(columns=["format"])
    frame["view"] = None
    frame.loc[:9, "width"] = None
    frame["width"] = frame["width"].astype("Float64")

    audit = audit_shortcuts(frame)

    assert audit.skipped["format"] == "no such column"
    assert audit.skipped["view"] == "no values"
    assert next(f.rows for f in audit.features if f.feature == "width") == 90


def test_one_class_is_noted_and_nothing_scored() -> None:
    frame = synthetic()
    frame["label"] = "covid"

    audit = audit_shortcuts(frame)

    assert audit.features == [] and audit.flags == []
    assert audit.note is not None and "Only one class" in audit.note
    assert "Only one class" in audit.summary_markdown()


def test_summary_has_the_warnings_in_bold_first_then_the_tables() -> None:
    frame = synthetic()
    frame["source"] = np.where(frame["label"] == "covid", "a|b", "c")
    frame.loc[0, "source"] = "c"  # one covid image from the normal hospital

    audit = audit_shortcuts(frame)
    markdown = audit.summary_markdown(heading="###")

    lines = markdown.splitlines()
    assert lines[0] == "### Shortcut audit"
    auc = f"{audit.flags[0].auc:.2f}"
    assert 0.95 < audit.flags[0].auc < 1.0
    assert lines[2] == (
        f"**Warning: source separates the labels (AUC {auc}): only covid from a|b; several "
        "labels from c — a model can learn the source instead of the disease**  "
    )
    assert f"| **source** | {auc} | categorical |" in markdown
    assert "#### Label mix per source" in markdown
    assert "| a\\|b | 49 | 49 | 0 | 100% |" in markdown
    assert "| c | 51 | 1 | 50 | 2% |" in markdown
    html = audit.to_html()
    assert "Warning: source separates the labels" in html and "a|b" in html
    assert "<script" not in audit_shortcuts(frame.assign(source="<script>")).to_html()


def test_audit_is_deterministic_and_round_trips_as_json() -> None:
    frame = synthetic(seed=5)
    frame["source"] = np.where(np.arange(len(frame)) % 3 == 0, "x", "y")

    first, second = audit_shortcuts(frame), audit_shortcuts(frame)

    assert first == second
    assert ShortcutAudit.model_validate_json(first.model_dump_json()) == first
