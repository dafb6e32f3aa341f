"""The ingest flow over public-source mirrors on loopback: every file accounted for.

A partial ieee8023 mirror (metadata.csv lists 751 rows, 53 images exist) is served over HTTP and
the Kaggle layout is read from a zip, as `cxr ingest ieee8023:<url> kaggle:<zip>` would.
"""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest
from local_servers import serve_folder

from cxr_model.manifest import read_csv

pytestmark = pytest.mark.integration


def test_ingest_accounts_for_every_file_of_both_sources(
    prefect_harness, settings, store, real_data, tmp_path, monkeypatch
):
    from flows.ingest import IngestParams, ingest

    monkeypatch.setattr("cxr_model.sources.http.HTTP_BACKOFF_S", 0.01)
    archive = tmp_path / "chest-xray-pneumonia.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in (real_data / "kaggle-pneumonia").rglob("*.jpeg"):
            zipped.write(path, path.relative_to(real_data / "kaggle-pneumonia").as_posix())

    with serve_folder(real_data / "ieee8023") as mirror:
        report = ingest(IngestParams(sources=[f"ieee8023:{mirror}", f"kaggle:{archive}"]))
        again = ingest(IngestParams(sources=[f"ieee8023:{mirror}", f"kaggle:{archive}"]))

    images = read_csv(store, report.ingest.manifest_key)
    ieee = images[images["source"].str.startswith("ieee8023")]
    kaggle = images[images["source"].str.startswith("kaggle")]
    present = {p.name for p in (real_data / "ieee8023" / "images").iterdir()}
    fetched = ieee["read_error"].isna()
    assert set(ieee.loc[fetched, "original_path"].map(lambda p: p.rsplit("/", 1)[-1])) <= present
    assert (~fetched).sum() == report.ingest.not_fetched > 300  # each 404 listed, not dropped
    assert ieee.loc[~fetched, "read_error"].str.contains("404").all()
    assert len(kaggle) == 16 and (kaggle["label"] == "normal").all()
    assert report.ingest.files == len(images)
    assert report.quality.accepted + report.quality.rejected == report.ingest.files
    assert f"{report.ingest.not_fetched} not fetched" in report.ingest.summary

    # a second run of the unchanged zip reads nothing new from it; nothing is stored twice
    assert again.ingest.stored_now == 0
    assert again.quality.accepted == report.quality.accepted
    accepted = read_csv(store, report.quality.accepted_key)
    assert set(accepted["label"]) == {"covid", "normal"}
    assert pd.to_numeric(accepted["width"]).min() >= 64


def test_one_source_per_class_is_flagged_in_the_report_and_data_docs(
    prefect_harness, settings, store, real_data, tmp_path, monkeypatch
):
    """hannover (all covid) vs nih (all normal): the study's recipe, and a shortcut."""
    from flows.ingest import IngestParams, ingest

    monkeypatch.setenv("CXR_MANIFEST_ROOTS", json.dumps([str(real_data)]))  # absolute paths

    manifest = pd.read_csv(real_data / "manifest.csv", dtype=str)
    subset = pd.concat(
        [
            manifest[manifest["source"] == "hannover"].head(30),
            manifest[manifest["source"] == "nih-cxr8"].head(30),
        ]
    )
    csv = real_data / "manifest.csv"
    subset_csv = tmp_path / "hannover-vs-nih.csv"
    subset.assign(file=[str(csv.parent / f) for f in subset["file"]]).to_csv(
        subset_csv, index=False
    )

    report = ingest(IngestParams(sources=[f"manifest:{subset_csv}"]))
    assert "source separates the labels" in report.quality.summary
    assert "hannover" in report.quality.summary and "nih-cxr8" in report.quality.summary
    docs = (tmp_path / "state").rglob("index.html")
    index = next(p for p in docs if "data_docs" in str(p)).read_text()
    assert "source separates the labels" in index
    assert store.exists(report.quality.docs_uri.split(f"s3://{store.bucket}/")[1])
