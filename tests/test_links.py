"""What a run links to opens in a browser: link artifacts answer over HTTP, reports are HTML with
their plots inline, and no artifact's Markdown shows an image relative to nothing or a file://."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pandas as pd
import pytest

from cxr_model.html_report import linked_images
from cxr_model.report_server import ReportServer

pytestmark = pytest.mark.integration


@pytest.fixture
def reports_url(store, monkeypatch):
    """A report server for the test's bucket, and the setting that makes links point at it."""
    server = ReportServer(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CXR_REPORTS_URL", server.url)
    yield server.url
    server.shutdown()
    server.server_close()


def _artifacts():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_artifacts(limit=200)


def _link_of(artifact) -> str:
    """The address of a link artifact (stored as the Markdown ``[text](link)``)."""
    return artifact.data.rsplit("](", 1)[1].removesuffix(")")


def test_data_docs_and_quality_report_open_from_the_report_server(
    prefect_harness, settings, store, real_data, tmp_path, monkeypatch, reports_url
):
    from prefect.artifacts import Artifact

    from flows.ingest import IngestParams, ingest

    monkeypatch.setenv("CXR_MANIFEST_ROOTS", json.dumps([str(real_data)]))
    manifest = pd.read_csv(real_data / "manifest.csv", dtype=str)
    subset = pd.concat(
        [
            manifest[manifest["source"] == "hannover"].head(12),
            manifest[manifest["source"] == "nih-cxr8"].head(12),
        ]
    )
    csv = tmp_path / "subset.csv"
    subset.assign(file=[str(real_data / f) for f in subset["file"]]).to_csv(csv, index=False)
    report = ingest(IngestParams(sources=[f"manifest:{csv}"]))

    docs = Artifact.get("data-docs")
    assert _link_of(docs) == report.quality.docs_link
    assert report.quality.docs_link.startswith(reports_url + "/runs/")
    index = httpx.get(report.quality.docs_link)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "source separates the labels" in index.text
    assert 'href="static/vendor/bootstrap/css/bootstrap.min.css"' in index.text
    base = report.quality.docs_link.rsplit("/", 1)[0]
    css = httpx.get(f"{base}/static/vendor/bootstrap/css/bootstrap.min.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    quality = httpx.get(_link_of(Artifact.get("data-quality-report")))
    assert quality.status_code == 200 and "<h2>Data quality" in quality.text
    _no_artifact_shows_a_file()


def test_evaluation_report_opens_with_its_plots_inline(
    prefect_harness, settings, store, reports_url
):
    from prefect import flow
    from prefect.artifacts import Artifact

    from cxr_model.evaluate import evaluate_predictions
    from cxr_model.generalisation import assess_generalisation
    from tasks.evaluate import write_report

    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 20)
    probabilities = np.clip(labels * 0.6 + rng.uniform(0, 0.4, 40), 0, 1)
    evaluation = evaluate_predictions(labels, probabilities, n_bootstrap=50)
    found = assess_generalisation(
        labels=labels,
        probabilities=probabilities,
        sources=["a", "b"] * 20,
        splits=["Val"] * 40,
        threshold=evaluation.threshold,
        held_out_sources=[],
        held_out_reason="none chosen",
        shortcut_flags=[],
        n_bootstrap=50,
    )

    @flow
    def evaluate_and_report() -> str:
        return write_report(evaluation, found, labels, probabilities, "runs/t/evaluation")

    key = evaluate_and_report()
    assert key == "runs/t/evaluation/evaluation.html"
    summary = Artifact.get("evaluation-summary").data
    assert linked_images(summary) == []
    assert summary.count("](data:image/png;base64,") == 4
    page = httpx.get(f"{reports_url}/{key}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count('<img src="data:image/png;base64,') == 4
    stored_md = store.get_bytes("runs/t/evaluation/evaluation.md").decode()
    assert "![ROC curve](roc.png)" in stored_md  # the .md links the PNGs stored beside it
    assert httpx.get(f"{reports_url}/runs/t/evaluation/roc.png").content.startswith(b"\x89PNG")
    _no_artifact_shows_a_file()


def _no_artifact_shows_a_file() -> None:
    """Every artifact so far: Markdown shows no image by relative name or file://, and links
    (link artifacts are stored as Markdown) are http(s) addresses, never file:// or s3://."""
    artifacts = _artifacts()
    assert artifacts
    for artifact in artifacts:
        data = artifact.data if isinstance(artifact.data, str) else json.dumps(artifact.data)
        assert "file://" not in data, artifact.key
        if artifact.type == "markdown":
            assert linked_images(data) == [], artifact.key
            assert "](s3://" not in data, artifact.key
