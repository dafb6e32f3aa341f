"""The whole pipeline on real x-rays: real Prefect flows, a real S3 server, real GX and Keras.

A small subset of ../shared/data/cxr-real (every actualmed image plus a few hannover and nih ones)
plus one broken file goes through get images → check → sort → train → evaluate → register, then the
registered champion scores a folder. Small images and one epoch keep it to a minute or two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr_model.gate import GateSettings
from cxr_model.manifest import read_csv
from cxr_model.quality import QualitySettings
from cxr_model.registry import CHAMPION, Registry
from cxr_model.split import SplitParams
from cxr_model.train import TrainParams

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def real_subset(real_data, tmp_path, monkeypatch) -> Path:
    """A manifest of 76 real images (absolute paths, in an allowed root) and one zero-byte file."""
    monkeypatch.setenv("CXR_MANIFEST_ROOTS", json.dumps([str(real_data)]))
    manifest = pd.read_csv(real_data / "manifest.csv", dtype=str)
    parts = [
        manifest[manifest["source"] == "actualmed"],
        manifest[manifest["source"] == "hannover"].head(16),
        manifest[manifest["source"] == "nih-cxr8"].head(16),
    ]
    subset = pd.concat(parts)[["file", "label", "patient_id"]]
    subset["file"] = [str(real_data / f) for f in subset["file"]]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    subset.loc[len(manifest)] = [str(empty), "normal", "broken-1"]
    path = tmp_path / "subset.csv"
    subset.to_csv(path, index=False)
    return path


def test_retrain_then_score_real_xrays(
    prefect_harness, settings, store, real_subset, real_data, tmp_path
):
    from flows.retrain import RetrainParams, retrain
    from flows.score import ScoreParams, score_folder

    params = RetrainParams(
        sources=[f"manifest:{real_subset}"],
        quality=QualitySettings(min_rows=20),
        split=SplitParams(val_fraction=0.25, seed=1),
        training=TrainParams(image_size=48, epochs=1, batch_size=16),
        # one epoch at 48 px proves the plumbing, not a model: no minimums for the first version
        gate=GateSettings(min_auc=0.0, min_sensitivity=0.0),
    )
    result = retrain(params)
    assert result.ingest.files == 77
    assert result.quality.accepted == 76 and result.quality.rejected == 1
    report = store.get_bytes(result.quality.report_uri.split(f"s3://{store.bucket}/")[1]).decode()
    assert "empty.png" in report and "empty file (0 bytes)" in report
    assert store.exists(result.quality.docs_uri.split(f"s3://{store.bucket}/")[1])

    split = read_csv(store, result.dataset.split_key)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"Train", "Val"}
    assert all(store.exists(k) for k in split["dataset_key"].head(5))

    assert 0.0 <= result.evaluation.accuracy <= 1.0
    assert result.evaluation.n_images == sum(result.dataset.counts["Val"].values())
    assert result.registered.version == 1 and result.registered.alias == CHAMPION

    scored = score_folder(ScoreParams(input=str(real_data / "actualmed"), chunk_size=16))
    predictions = read_csv(store, scored.predictions_uri.split(f"s3://{store.bucket}/")[1])
    files = sorted(p for p in (real_data / "actualmed").rglob("*") if p.is_file())
    assert len(predictions) == len(files) == 44
    assert (predictions["status"] == "ok").all()
    assert set(predictions["model_version"]) == {"1"}
    probabilities = predictions["probability_covid"].astype(float)
    assert probabilities.between(0, 1).all()
    # the version's OOD check was fitted with it, attached, and scored every image
    models = Registry(store, settings.model_name, settings.cache_dir)
    ood = models.card(1).ood
    assert ood["n_train"] + ood["n_val"] == 76 and 0 <= ood["flagged"]["Val"] <= 0.05
    assert models.attachment(1, ood["file"], ood["sha256"])
    assert predictions["ood_score"].astype(float).gt(0).all()
    assert set(predictions["in_distribution"]) <= {"True", "False"}

    # a second run on the same data stores no new raw image and registers version 2; a gate it
    # cannot pass keeps it a candidate, with the reason on the card
    strict = params.model_copy(update={"gate": GateSettings(min_auc=0.999, min_sensitivity=0.0)})
    again = retrain(strict)
    assert again.ingest.stored_now == 0
    assert again.dataset.dataset_id == result.dataset.dataset_id
    assert (again.registered.version, again.registered.alias) == (2, "candidate")
    assert "0.999" in again.registered.reason
    card = store.get_bytes(again.registered.card_uri.split(f"s3://{store.bucket}/")[1]).decode()
    assert "not for diagnosis" in card.lower() and "0.999" in card

    _check_cli(settings, tmp_path)


def _cxr(*args: str) -> str:
    """Run the console script (as `python -m flows.cli`) against this test's store and Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _check_cli(settings, tmp_path):
    """The console script against the same store: registry listing and scoring a messy folder."""
    versions = json.loads(_cxr("registry", "list", "--json"))
    assert [(v["version"], v["aliases"]) for v in versions] == [(1, [CHAMPION]), (2, ["candidate"])]

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.png").write_bytes(
        (REPO.parent / "shared/data/cxr-real/nih/normal").iterdir().__next__().read_bytes()
    )
    (inbox / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (inbox / "readme.txt").write_text("not an x-ray")
    printed = _cxr("score", str(inbox))
    # the x-ray is predicted (in or out of the training distribution), the other two are errors
    assert re.search(
        r"3 files: (1 ok, 0|0 ok, 1) out of distribution, 0 rejected, 2 errors", printed
    )
