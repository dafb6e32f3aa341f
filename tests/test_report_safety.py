"""Hostile names and values through `cxr ingest`: what gets published is safe to open.

File names with markup, labels and sources with ``<script>``, patient ids that are spreadsheet
formulas: the Data Docs published to S3 show them as text, the CSVs a person downloads never
start a cell with a formula, and the console prints each message on one line.
"""

from __future__ import annotations

import csv
import io
import shutil

import pandas as pd
import pytest
from test_pipeline import _cxr
from test_safe_text import _runs_as_formula

from cxr_model.manifest import read_csv

pytestmark = pytest.mark.integration

MARKUP = ("<script>alert(", "<img src=x onerror", "<svg onload")
FORMULAS = ["=cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "+1+1", "-2+3"]


def _formula_cells(data: bytes) -> list[str]:
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    return [cell for row in rows for cell in row if _runs_as_formula(cell)]


def test_hostile_names_and_values_are_published_safely(
    prefect_harness, settings, store, real_data, tmp_path
):
    real = pd.read_csv(real_data / "manifest.csv", dtype=str)
    rows = pd.concat(
        [
            real[real["source"] == "hannover"].head(20),
            real[real["source"] == "nih-cxr8"].head(20),
        ]
    ).reset_index(drop=True)
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for i, name in enumerate(rows["file"]):
        # two files whose names are markup, and one with a newline in its name
        target = {0: "<img src=x onerror=alert(2)>.png", 21: "<svg onload=alert(4)>.png"}.get(
            i, f"{i}\nscored 1000 files.png" if i == 5 else f"{i}.png"
        )
        shutil.copyfile(real_data / name, folder / target)
        files.append(f"images/{target}")
    rows["file"] = files
    rows.loc[:3, "patient_id"] = FORMULAS
    rows.loc[5, "label"] = "pneumonia"  # quarantined, so its name is printed
    rows.loc[30, "label"] = "<script>alert(1)</script>"
    rows.loc[31, "source"] = "<script>alert(3)</script>"
    manifest_csv = tmp_path / "hostile.csv"
    rows.to_csv(manifest_csv, index=False)

    printed = _cxr("ingest", f"manifest:{manifest_csv}")

    # the console: every message on its own line, the newline in the name shown as \n
    assert "scored 1000 files" not in {line.strip() for line in printed.splitlines()}
    assert "5\\nscored 1000 files.png" in printed

    published = [k for k in store.list_keys("runs/") if "/data_docs/" in k]
    pages = [k for k in published if k.endswith((".html", ".js"))]
    assert pages, "no Data Docs were published"
    raw = [
        (k, m) for k in pages for m in MARKUP if m in store.get_bytes(k).decode(errors="replace")
    ]
    assert raw == []

    ingest_csv = next(k for k in store.list_keys("manifests/") if k.endswith(".csv"))
    images_csv = next(k for k in store.list_keys("runs/") if k.endswith("/images.csv"))
    for key in (ingest_csv, images_csv):
        assert _formula_cells(store.get_bytes(key)) == [], key
        assert set(FORMULAS) <= set(read_csv(store, key)["patient_id"])  # raw when read back
