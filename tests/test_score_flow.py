"""The scoring flows for real: Prefect's test API, the S3 server, a registered 32 px model.

Reruns predict nothing twice, a folder scored in part resumes with the rest, the inbox flow
scores only what the champion has not seen, Dask (in a subflow) and threads (without one) give
the same predictions, and the run's summary, state and logs say what happened without leaking
credentials.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import httpx
import pandas as pd
import pytest
from helpers import SCORING_CARD, png
from pydantic import ValidationError

from cxr_model.registry import CHAMPION, Registry

SECRET_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "Signature=")


def images(folder: Path, seeds: range, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / f"{prefix}-{seed:02d}.png").write_bytes(png(seed))


def _key(store, uri: str) -> str:
    return uri.removeprefix(f"s3://{store.bucket}/")


def table(store, uri: str) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(store.get_bytes(_key(store, uri))), dtype=str, keep_default_na=False
    )


def probabilities(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["source_path"], frame["probability_covid"], strict=True))


@pytest.mark.slow
def test_reruns_predict_only_what_was_never_scored(prefect_harness, models, store, tmp_path):
    from flows.score import ScoreParams, score_folder

    folder = tmp_path / "xrays"
    images(folder / "a", range(10))
    images(folder / "b", range(10, 20))
    # the same bytes at a second path, sorted into the same chunk as its original
    (folder / "a" / "img-00-copy.png").write_bytes(png(0))
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    params = dict(chunk_size=4, max_chunks_in_flight=2)

    part = score_folder(ScoreParams(input=str(folder / "a"), **params))
    assert (part.summary["files"], part.summary["predicted"]) == (12, 10)  # the copy: once

    whole = score_folder(ScoreParams(input=str(folder), **params))
    assert whole.summary["predicted"] == 10  # only b: a's scores were stored by the first run
    assert (whole.summary["files"], whole.summary["reused"], whole.summary["errors"]) == (22, 11, 1)

    again = score_folder(ScoreParams(input=str(folder), **params))
    assert again.summary["predicted"] == 0 and again.summary["reused"] == 21
    rows = table(store, again.predictions_uri)
    assert sorted(rows["source_path"]) == sorted(str(p) for p in folder.rglob("*.png"))
    assert probabilities(rows) == probabilities(table(store, whole.predictions_uri))
    assert set(rows["reused"]) == {"True", "False"}  # the broken file is never "reused"
    copies = rows[
        rows["sha256"]
        == rows.set_index("source_path").at[str(folder / "a" / "img-00.png"), "sha256"]
    ]
    assert len(copies) == 2 and copies["probability_covid"].nunique() == 1


@pytest.mark.slow
def test_dask_runner_gives_the_same_predictions_as_threads(
    prefect_harness, models, store, model_file, tmp_path
):
    from flows.score import ScoreParams, score_folder

    images(tmp_path / "xrays", range(12))
    models.register(model_file, **SCORING_CARD)  # version 2: same model, its own stored scores
    common = dict(input=str(tmp_path / "xrays"), chunk_size=3)
    subflows = _chunk_subflows()
    threads = score_folder(ScoreParams(model="1", **common))
    assert _chunk_subflows() == subflows  # threads: the chunks are the flow's own tasks
    dask = score_folder(ScoreParams(model="2", task_runner="dask", dask_workers=2, **common))
    assert _chunk_subflows() == subflows + 1  # dask: a subflow run on the Dask runner
    assert threads.summary["predicted"] == dask.summary["predicted"] == 12
    assert probabilities(table(store, dask.predictions_uri)) == probabilities(
        table(store, threads.predictions_uri)
    )


def _chunk_subflows() -> int:
    """How many ``score-chunks`` subflow runs the test API has seen."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.count_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["score-chunks"]))
        )


@pytest.mark.slow
def test_inbox_scores_only_what_the_champion_has_not_seen(
    prefect_harness, models, store, model_file
):
    from flows.score import InboxParams, score_inbox

    for seed in range(4):
        store.put_bytes(f"inbox/day1/{seed}.png", png(seed))
    first = score_inbox(InboxParams(chunk_size=2))
    assert first.summary["files"] == 4 and first.summary["predicted"] == 4

    store.put_bytes("inbox/day2/new.png", png(40))
    store.put_bytes("inbox/day2/again-day1-0.png", png(0))  # old content under a new name
    second = score_inbox(InboxParams(chunk_size=2))
    rows = table(store, second.predictions_uri)
    assert list(rows["source_path"]) == [f"s3://{store.bucket}/inbox/day2/new.png"]
    assert (second.summary["skipped"], second.summary["predicted"]) == (5, 1)

    models.register(model_file, **SCORING_CARD)
    models.set_alias(CHAMPION, 2, reason="new champion")
    # one chunk at a time, so the renamed copy's chunk finds the score its original's just stored
    third = score_inbox(InboxParams(chunk_size=2, max_chunks_in_flight=1))
    assert third.model_version == 2
    assert (third.summary["files"], third.summary["predicted"], third.summary["reused"]) == (
        6,
        5,
        1,
    )


@pytest.mark.slow
def test_errors_show_in_state_summary_and_logs_hold_no_secrets(
    prefect_harness, models, store, tmp_path
):
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    from flows.score import ScoreParams, score_folder

    images(tmp_path / "in", range(3))
    (tmp_path / "in" / "readme.txt").write_text("not an x-ray")
    state = score_folder(ScoreParams(input=str(tmp_path / "in"), threshold=0.25), return_state=True)
    assert state.is_completed()
    assert "scored 3 of 4 files" in state.message and "1 error (not an image: 1)" in state.message
    result = state.result()
    assert result.summary["errors"] == 1

    summary = Artifact.get("scoring-summary").data
    assert "| errors | 1 (not an image 1) |" in summary
    assert "version 1, threshold 0.25" in summary and "| predicted now | 3 |" in summary
    assert result.predictions_uri in summary
    # the link artifacts open in a browser (presigned here: no report server), the URI beside
    for key, uri in (
        ("predictions", result.predictions_uri),
        ("predictions-parquet", result.predictions_parquet_uri),
    ):
        artifact = Artifact.get(key)
        link = artifact.data.rsplit("](", 1)[1].removesuffix(")")
        assert link.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in link
        assert httpx.get(link).content == store.get_bytes(_key(store, uri))
        assert uri in artifact.description
    typed = pd.read_parquet(
        io.BytesIO(store.get_bytes(_key(store, result.predictions_parquet_uri)))
    )
    assert list(typed["status"]) == ["ok", "ok", "ok", "error"]  # same rows, same order
    assert typed["probability_covid"].dtype == "float64" and typed["reused"].dtype == "bool"
    assert typed["probability_covid"].isna().tolist() == [False, False, False, True]
    assert typed["error"].isna().tolist() == [True, True, True, False]
    preview = json.loads(Artifact.get("predictions-preview").data)
    assert [Path(row["source_path"]).name for row in preview] == [
        "img-00.png",
        "img-01.png",
        "img-02.png",
        "readme.txt",
    ]

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        messages = [log.message for log in _all_logs(client)]
    assert any("scored 3 of 4 files" in m for m in messages)
    secrets = (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"])
    for message in messages:
        assert not any(s in message for s in secrets + SECRET_MARKERS), message


@pytest.mark.slow
def test_an_empty_folder_gives_an_empty_table(prefect_harness, models, store, tmp_path):
    from flows.score import ScoreParams, score_folder

    (tmp_path / "empty").mkdir()
    result = score_folder(ScoreParams(input=str(tmp_path / "empty")))
    assert result.summary["files"] == 0 and result.message.startswith("scored 0 of 0 files")
    rows = table(store, result.predictions_uri)
    assert len(rows) == 0 and "probability_covid" in rows.columns
    typed = pd.read_parquet(
        io.BytesIO(store.get_bytes(_key(store, result.predictions_parquet_uri)))
    )
    assert len(typed) == 0 and list(typed.columns) == list(rows.columns)


def _all_logs(client, page: int = 200) -> list:
    logs, offset = [], 0
    while batch := client.read_logs(limit=page, offset=offset):
        logs += batch
        offset += page
    return logs


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"input": "/data", "threshold": 1.5}, "less than or equal to 1"),
        ({"input": "   "}, "input must name a folder"),
        ({"input": ""}, "input must name a folder"),
        ({"input": "/data", "output": "s3://other/x"}, "key prefix inside the cxr bucket"),
        ({"input": "/data", "chunk_size": 0}, "greater than or equal to 1"),
        ({"input": "/data", "task_runner": "ray"}, "'threads' or 'dask'"),
        ({"input": "/data", "dask_address": "tcp://h:8786"}, "only with task_runner='dask'"),
    ],
)
def test_bad_parameters_are_refused(fields, complaint):
    from flows.score import ScoreParams

    with pytest.raises(ValidationError, match=complaint):
        ScoreParams(**fields)


@pytest.mark.slow
def test_a_missing_folder_is_reported_as_such_even_without_a_champion(prefect_harness, settings):
    from flows.score import ScoreParams, score_folder

    missing = "/nonexistent/xrays"
    state = score_folder(ScoreParams(input=missing), return_state=True)
    assert state.is_failed()
    assert f"input folder {missing} does not exist" in state.message, state.message


@pytest.mark.slow
def test_without_a_champion_the_inbox_waits_and_the_run_says_what_to_do(
    prefect_harness, settings, store, model_file
):
    from prefect.client.orchestration import get_client

    from flows.score import InboxParams, score_inbox

    for seed in range(3):
        store.put_bytes(f"inbox/{seed}.png", png(seed))
    state = score_inbox(InboxParams(), return_state=True)
    assert state.is_completed() and state.name == "Skipped"
    assert state.message.startswith("no champion yet: nothing scored")
    assert "cxr train" in state.message and "cxr registry promote" in state.message
    result = state.result()
    assert result.model_version is None and result.predictions_uri is None
    assert result.message == state.message
    with get_client(sync_client=True) as client:  # what the UI shows for the run
        shown = client.read_flow_run(state.state_details.flow_run_id).state
    assert (shown.name, shown.message) == ("Skipped", state.message)

    registry = Registry(store, settings.model_name, settings.cache_dir)
    registry.register(model_file, **SCORING_CARD)
    registry.set_alias(CHAMPION, 1)
    later = score_inbox(InboxParams())
    assert later.model_version == 1
    assert (later.summary["files"], later.summary["predicted"]) == (3, 3)  # nothing was lost


@pytest.mark.slow
def test_without_a_champion_a_folder_is_skipped_but_a_missing_alias_fails(
    prefect_harness, settings, tmp_path
):
    from flows.score import ScoreParams, score_folder

    images(tmp_path / "xrays", range(2))
    state = score_folder(ScoreParams(input=str(tmp_path / "xrays")), return_state=True)
    assert state.is_completed() and state.name == "Skipped"
    assert state.message.startswith("no champion yet: nothing scored")

    asked = score_folder(
        ScoreParams(input=str(tmp_path / "xrays"), model="staging"), return_state=True
    )
    assert asked.is_failed() and "no alias 'staging'" in asked.message
