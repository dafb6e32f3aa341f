"""The CLI's options default to the parameter models: an option left out is the model's default,
declared once on the model; --seed seeds the training and --split-seed the split."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from flows import cli, cli_train


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for label in ("covid", "normal"):
        (tmp_path / label).mkdir()
    return tmp_path


@pytest.fixture
def calls(monkeypatch) -> list:
    """What the commands hand to the flows, with the flows, logging and printing left out."""
    import flows.retrain
    import flows.score

    seen = []
    monkeypatch.setattr(cli, "_configure", lambda verbose: None)
    monkeypatch.setattr(cli, "_run", lambda title, call: call())
    monkeypatch.setattr(cli_train, "_print_retrain", lambda result: None)
    monkeypatch.setattr(flows.retrain, "retrain", seen.append)
    skipped = SimpleNamespace(model_version=None, message="no champion", predictions_uri=None)
    monkeypatch.setattr(flows.score, "score_folder", lambda params: seen.append(params) or skipped)
    monkeypatch.setattr(flows.score, "score_inbox", lambda params: seen.append(params) or skipped)
    return seen


def _invoke(*args: str) -> None:
    done = CliRunner().invoke(cli.app, list(args))
    assert done.exit_code == 0, done.output


def test_train_without_options_takes_the_models_defaults(images, calls) -> None:
    from flows.retrain import RetrainParams

    _invoke("train", str(images))

    assert calls == [RetrainParams(sources=[str(images)])]


def test_the_training_seed_and_the_split_seed_are_separate(images, calls) -> None:
    from flows.retrain import RetrainParams

    _invoke("train", str(images), "--seed", "7", "--split-seed", "9", "--epochs", "2")
    _invoke("train", str(images), "--split-seed", "9")

    trained, split_only = calls
    defaults = RetrainParams(sources=[str(images)])
    assert (trained.training.seed, trained.split.seed, trained.training.epochs) == (7, 9, 2)
    assert split_only.training == defaults.training
    assert split_only.split.seed == 9
    assert split_only.split.val_fraction == defaults.split.val_fraction


def test_train_options_given_reach_the_models(images, calls) -> None:
    _invoke(
        "train",
        str(images),
        "--val-fraction",
        "0.3",
        "--cv-folds",
        "3",
        "--hold-out",
        "none",
        "--allow-confounded",
        "--architecture",
        "compact_cnn",
    )

    (params,) = calls
    assert (params.split.val_fraction, params.split.held_out_sources) == (0.3, [])
    assert (params.cv_folds, params.gate.allow_confounded) == (3, True)
    assert params.training.architecture == "compact_cnn"


def test_scoring_without_options_takes_the_models_defaults(images, calls) -> None:
    from flows.score import InboxParams, ScoreParams

    _invoke("score", str(images))
    _invoke("score-inbox")

    assert calls == [ScoreParams(input=str(images)), InboxParams()]
