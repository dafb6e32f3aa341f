"""Small things people read: the credentials message, the registry diff at 80 columns, the
source kinds in `train --help`, one reason for an empty file, a resumed training's line."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console
from test_quality import row
from typer.testing import CliRunner

from cxr_model.config import Settings
from cxr_model.storage import StoreError, open_store
from flows import cli


def test_missing_credentials_say_so_and_how_to_set_them(monkeypatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = Settings(s3_endpoint_url="http://127.0.0.1:9", state_dir=tmp_path)

    with pytest.raises(StoreError) as raised:
        open_store(settings)

    message = str(raised.value)
    assert message.startswith("no S3 credentials for http://127.0.0.1:9")
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "cannot reach" not in message and "Unable to locate" not in message


def test_registry_diff_field_names_are_never_cut_at_80_columns() -> None:
    fields = [
        "metrics.confusion_matrix.true_negatives",
        "metrics.confusion_matrix.false_positives",
        "parameters.training.learning_rate_schedule",
        "library_versions.great_expectations",
    ]
    rows = [SimpleNamespace(field=f, a="0.123456789 " * 3, b="0.987654321 " * 3) for f in fields]
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(cli._diff_table(1, 2, rows, 80))

    printed = out.getvalue()
    assert "…" not in printed
    for name in fields:
        assert name in printed  # whole, on one line
    assert max(len(line) for line in printed.splitlines()) <= 80


def test_train_help_lists_every_source_kind() -> None:
    shown = CliRunner().invoke(cli.app, ["train", "--help"], env={"COLUMNS": "80"})

    assert shown.exit_code == 0
    for kind in ("folder:", "manifest:", "s3://", "ieee8023:", "kaggle:", "pneumonia=include"):
        assert kind in shown.output
    assert "…" not in shown.output.split("Options")[0]


def test_an_empty_file_is_quarantined_with_one_reason(tmp_path: Path) -> None:
    from cxr_model.images import inspect_facts
    from cxr_model.quality import QualitySettings, validate_manifest

    facts = inspect_facts(b"")  # what ingest records for a 0-byte file
    rows = [row(i) for i in range(20)]
    rows[3] = row(3, **{k: v for k, v in facts.items() if k in rows[3]})
    report = validate_manifest(pd.DataFrame(rows), QualitySettings(), tmp_path / "docs")

    assert [(r.key, r.reasons) for r in report.rejected] == [
        ("raw/0003.png", ["empty file (0 bytes)"])
    ]


def _result(**changes):
    from cxr_model.train import TrainResult

    values = dict(
        model_path=Path("m.keras"),
        history={"loss": [0.7, 0.6, 0.5], "accuracy": [0.5, 0.6, 0.7]},
        train_accuracy=0.7,
        val_accuracy=0.65,
        train_images=100,
        seconds=30.0,
        images_per_second=10.0,
        devices=["CPU:0"],
        kept_epoch=3,
    )
    values.update(changes)
    return TrainResult(**values)


def test_a_resumed_training_says_it_resumed() -> None:
    from cxr_model.train import training_summary

    finished = training_summary(_result(initial_epoch=3, seconds=0.2, images_per_second=0.0))
    partly = training_summary(_result(initial_epoch=1, seconds=20.0, images_per_second=10.0))
    fresh = training_summary(_result())

    assert finished.startswith("resumed from the checkpoint") and "nothing trained now" in finished
    assert "0.0 images/s" not in finished and "in 0s" not in finished
    assert partly.startswith("resumed from the checkpoint after epoch 1: trained 2 more epoch(s)")
    assert fresh.startswith("trained in 30s (10.0 images/s on CPU:0, float32)")
    assert "validation accuracy 0.650 (epoch 3)" in fresh


def test_scoring_says_how_to_download_the_predictions(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=200, color_system=None))

    cli._get_hint("s3://cxr/runs/score/score-inbox-2026-12-03/predictions.csv", "predictions")
    cli._get_hint("s3://cxr/custom/prefix/predictions.csv", "predictions")  # not a run: no hint

    assert out.getvalue().splitlines() == [
        "download:    cxr get score-inbox-2026-12-03 predictions [DEST] (all runs: cxr runs)"
    ]
