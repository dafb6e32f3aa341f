"""`cxr get`, `cxr open` and `cxr runs` against a real S3 server: outputs one command away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_model import outputs

REPO = Path(__file__).resolve().parents[1]
PREDICTIONS = "file,status,probability_covid\na.png,ok,0.91\nb.png,ok,0.12\n"


def _cxr(*args: str, cwd: Path = REPO, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done


@pytest.fixture
def runs_in_store(store):
    """A score run with predictions, then a retrain run with a report and a registered card."""
    store.put_bytes("runs/score/score-older/predictions.csv", PREDICTIONS.encode())
    store.put_bytes("runs/score/score-older/chunks/00000.csv", PREDICTIONS.encode())
    time.sleep(1.1)  # S3 times have one-second resolution: the retrain run is newer
    store.put_bytes("runs/retrain/retrain-newer/evaluation/evaluation.md", b"# evaluation\n")
    store.put_bytes("runs/retrain/retrain-newer/evaluation/roc.png", b"\x89PNG fake")
    store.put_bytes("registry/cxr-covid/versions/000001/model_card.md", b"# card v1\n")
    registered = {"card_uri": store.uri("registry/cxr-covid/versions/000001/model_card.md")}
    store.put_bytes("runs/retrain/retrain-newer/registered.json", json.dumps(registered).encode())
    return store


@pytest.mark.slow
def test_cxr_get_downloads_a_runs_predictions(runs_in_store, tmp_path) -> None:
    done = _cxr("get", "score-older", "predictions", str(tmp_path / "p.csv"))

    assert (tmp_path / "p.csv").read_text() == PREDICTIONS
    assert done.stdout.strip() == str((tmp_path / "p.csv").resolve())


@pytest.mark.slow
def test_cxr_get_an_s3_uri_into_a_folder_and_never_overwrites(runs_in_store, tmp_path) -> None:
    uri = runs_in_store.uri("runs/score/score-older/predictions.csv")
    _cxr("get", uri, str(tmp_path))
    assert (tmp_path / "predictions.csv").read_text() == PREDICTIONS

    (tmp_path / "predictions.csv").write_text("mine")
    refused = _cxr("get", uri, str(tmp_path), ok=False)
    assert "already exists" in refused.stdout and "--force" in refused.stdout
    assert (tmp_path / "predictions.csv").read_text() == "mine"
    _cxr("get", uri, str(tmp_path), "--force")
    assert (tmp_path / "predictions.csv").read_text() == PREDICTIONS


@pytest.mark.slow
def test_cxr_get_a_card_and_a_key_under_the_run(runs_in_store, tmp_path) -> None:
    _cxr("get", "retrain-newer", "card", str(tmp_path / "card.md"))
    _cxr("get", "retrain/retrain-newer", "evaluation/roc.png", str(tmp_path))

    _cxr("get", "retrain-newer", "report", f"{tmp_path}/new/folder/")
    assert (tmp_path / "card.md").read_text() == "# card v1\n"
    assert (tmp_path / "roc.png").read_bytes() == b"\x89PNG fake"
    assert (tmp_path / "new" / "folder" / "evaluation.md").read_text() == "# evaluation\n"


@pytest.mark.slow
def test_cxr_get_names_what_a_run_has_when_the_output_is_missing(runs_in_store) -> None:
    done = _cxr("get", "score-older", "card", ok=False)
    assert "has no 'card'" in done.stdout and "predictions" in done.stdout

    unknown = _cxr("get", "no-such-run", "predictions", ok=False)
    assert "no run named 'no-such-run'" in unknown.stdout and "retrain-newer" in unknown.stdout


@pytest.mark.slow
def test_cxr_runs_lists_newest_first_with_outputs(runs_in_store) -> None:
    listed = json.loads(_cxr("runs", "--json").stdout)

    assert [(r["flow"], r["run"]) for r in listed] == [
        ("retrain", "retrain-newer"),
        ("score", "score-older"),
    ]
    assert set(listed[0]["outputs"]) == {"report", "card"}
    assert listed[1]["outputs"] == {
        "predictions": runs_in_store.uri("runs/score/score-older/predictions.csv")
    }


@pytest.mark.slow
def test_cxr_open_prints_a_cached_path_without_an_opener(runs_in_store, settings) -> None:
    done = _cxr("open", "score-older", "predictions")

    path = Path(done.stdout.strip())
    assert path.read_text() == PREDICTIONS
    assert path.is_relative_to(settings.cache_dir)


def test_an_html_page_is_opened_with_its_folder(store, settings) -> None:
    store.put_bytes("runs/retrain/r1/evaluation/report.html", b"<img src='roc.png'>")
    store.put_bytes("runs/retrain/r1/evaluation/roc.png", b"png")

    target = outputs.resolve(store, "r1", "report", with_folder=True)
    page = outputs.fetch_to_cache(target, settings.cache_dir)

    assert page.name == "report.html" and (page.parent / "roc.png").read_bytes() == b"png"


@pytest.mark.parametrize("key", ["runs/r/../../escape.csv", "runs/r/a/../../../x", "runs/r/"])
def test_a_key_that_would_leave_the_destination_is_refused(key) -> None:
    # the test server refuses such keys itself; another S3 server may not
    with pytest.raises(outputs.OutputError, match="unsafe name"):
        outputs._relative(key, "runs/r")
