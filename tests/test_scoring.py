"""Scoring files in chunks: one row per file, errors as rows, nothing skipped, nothing predicted twice."""

from __future__ import annotations

import io
import os
import socket

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_model import scoring
from cxr_model.memory import ByteBudget
from cxr_model.model import seed_cnn
from cxr_model.scoring import (
    ERROR,
    OK,
    PREDICT_BATCH,
    SKIPPED,
    ScoreBatch,
    ScoreStore,
    ScoreSummary,
    ScoringError,
    chunked,
    keras_predictor,
    list_inputs,
    merge_tables,
    padded_size,
    predictions_frame,
    score_chunk,
)
from tests.test_sources import finishes

SIZE = 32


def png(seed: int) -> bytes:
    """A small greyscale PNG whose pixels depend on ``seed`` (so each seed has its own sha256)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 50), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class CountingModel:
    """A real model's predict function that counts the images it is given, or dies on a call."""

    def __init__(self, model, die_on_call: int | None = None):
        self.predict = keras_predictor(model)
        self.images = 0
        self.calls = 0
        self.die_on_call = die_on_call

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.die_on_call:
            raise RuntimeError("worker killed")
        self.images += len(pixels)
        return self.predict(pixels)


@pytest.fixture(scope="module")
def model():
    return seed_cnn(SIZE)


def scorer(store, model, version=1, **kwargs):
    """score_chunk bound to a store, a version's stored scores and a counting model."""
    counting = CountingModel(model, kwargs.pop("die_on_call", None))
    scores = ScoreStore(store, "test-model", version)
    options = dict(image_size=SIZE, threshold=0.5, run="run-1") | kwargs

    def score(paths):
        return score_chunk(paths, store, scores, counting, **options)

    return score, counting


def test_every_file_gets_a_row_in_input_order(tmp_path, store, model):
    (tmp_path / "a.png").write_bytes(png(10))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(png(200))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")  # listed, never followed
    paths = list(list_inputs(str(tmp_path), store))
    names = ["a.png", "empty.png", "link.png", "notes.txt", "b.png"]
    assert [p.rsplit("/", 1)[-1] for p in paths] == names

    score, _ = scorer(store, model, version=3)
    predictions = score(paths).predictions
    assert [p.status for p in predictions] == [OK, ERROR, SKIPPED, ERROR, OK]
    assert predictions[1].error == "empty file (0 bytes)"
    assert predictions[2].error == f"skipped: symbolic link not followed: {tmp_path}/link.png"
    assert predictions[3].error.startswith("not an image")
    ok = predictions[0]
    assert 0 <= ok.probability_covid <= 1 and ok.model_version == 3 and not ok.reused
    assert ok.predicted_label == ("covid" if ok.probability_covid >= 0.5 else "normal")
    assert len(ok.sha256) == 64

    summary = score(paths).summary  # again: the two images are reused, the errors stay errors
    assert (summary.files, summary.scored, summary.errors) == (5, 2, 3)
    assert (summary.predicted, summary.reused, summary.skipped) == (0, 2, 0)
    assert summary.errors_by_reason == {"empty file (0 bytes)": 1, "not an image": 1, "skipped": 1}


def test_fifos_sockets_links_and_swapped_files_get_rows_without_hanging(tmp_path, store, model):
    folder = tmp_path / "in"
    (folder / "elsewhere").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(png(5))
    (folder / "a.png").write_bytes(png(1))
    (folder / "swapped.png").write_bytes(png(2))
    os.mkfifo(folder / "fifo.png")
    (folder / "linked-folder").symlink_to(tmp_path / "outside")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "sock.png"))
        paths = list(list_inputs(str(folder), store))
        (folder / "swapped.png").unlink()  # a FIFO in its place after listing
        os.mkfifo(folder / "swapped.png")
        score, _ = scorer(store, model)
        scored = finishes(lambda: score(paths))
    rows = {
        p.source_path.removeprefix(f"{folder}/"): (p.status, p.error) for p in scored.predictions
    }
    assert rows == {
        "a.png": (OK, None),
        "fifo.png": (SKIPPED, f"skipped: not a regular file (a FIFO): {folder}/fifo.png"),
        "linked-folder": (SKIPPED, f"skipped: symbolic link not followed: {folder}/linked-folder"),
        "sock.png": (
            SKIPPED,
            f"skipped: not a regular file (a socket or device): {folder}/sock.png",
        ),
        "swapped.png": (SKIPPED, f"skipped: not a regular file (a FIFO): {folder}/swapped.png"),
    }
    assert scored.summary.errors_by_reason == {"skipped": 4}
    assert scored.summary.by_status == {OK: 1, SKIPPED: 4}


def test_scoring_caps_file_size_as_ingest_does(tmp_path, store, model, monkeypatch):
    monkeypatch.setattr("cxr_model.sources.reading.MAX_FILE_BYTES", 10_000)
    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # sparse: 200 MB that take no disk
        handle.truncate(200 * 1024**2)
    (tmp_path / "small.png").write_bytes(png(3))
    score, _ = scorer(store, model)
    rows = {
        p.source_path.rsplit("/", 1)[-1]: p
        for p in score([str(big), str(tmp_path / "small.png")]).predictions
    }
    assert (
        rows["big.png"].error
        == f"cannot read: file too large ({200 * 1024**2} bytes > cap 10000): {big}"
    )
    assert rows["small.png"].status == OK


def test_files_beyond_the_bytes_in_flight_are_hashed_then_read_again(
    tmp_path, store, model, monkeypatch
):
    for n in range(6):
        (tmp_path / f"{n}.png").write_bytes(png(100 + n))
    paths = list(list_inputs(str(tmp_path), store))
    expected = scorer(store, model, version=7)[0](paths).predictions
    budget = ByteBudget(len(png(100)) * 2)  # room for two files' bytes at a time
    monkeypatch.setattr(scoring, "BYTES_IN_FLIGHT", budget)
    score, counting = scorer(store, model, version=8)
    predictions = score(paths).predictions
    assert counting.images == 6 and budget.held == 0
    assert [(p.sha256, p.probability_covid) for p in predictions] == [
        (p.sha256, p.probability_covid) for p in expected
    ]


def test_a_missing_bucket_is_a_one_line_error_naming_the_uri(store):
    with pytest.raises(
        ScoringError,
        match=r"^cannot list s3://no-such-bucket-x/in/: bucket no-such-bucket-x does not exist$",
    ):
        list(list_inputs("s3://no-such-bucket-x/in/", store))


def test_s3_prefix_inputs_are_listed_and_read(store, model):
    store.put_bytes("inbox/one.png", png(30))
    store.put_bytes("inbox/two.png", png(60))
    paths = list(list_inputs(f"s3://{store.bucket}/inbox/", store))
    assert paths == [f"s3://{store.bucket}/inbox/one.png", f"s3://{store.bucket}/inbox/two.png"]
    store.client.delete_object(Bucket=store.bucket, Key="inbox/two.png")  # gone after listing
    score, _ = scorer(store, model)
    predictions = score(paths).predictions
    assert [p.status for p in predictions] == [OK, ERROR]
    assert "removed after it was listed" in predictions[1].error


def test_same_content_at_two_paths_is_predicted_once(tmp_path, store, model):
    for name, seed in [("a.png", 1), ("b.png", 2), ("copy-of-a.png", 1)]:
        (tmp_path / name).write_bytes(png(seed))
    score, counting = scorer(store, model)
    scored = score(list(list_inputs(str(tmp_path), store)))
    rows = {p.source_path.rsplit("/", 1)[-1]: p for p in scored.predictions}
    assert counting.images == 2 and scored.summary.predicted == 2
    assert rows["a.png"].sha256 == rows["copy-of-a.png"].sha256
    assert rows["a.png"].probability_covid == rows["copy-of-a.png"].probability_covid
    # the first row of the content was predicted; the copy reuses that prediction, and says so
    assert [rows[n].reused for n in ("a.png", "b.png", "copy-of-a.png")] == [False, False, True]
    assert scored.summary.reused == 1


def test_stored_scores_are_reused_with_any_threshold(tmp_path, store, model):
    for n in range(5):
        (tmp_path / f"{n}.png").write_bytes(png(n))
    paths = list(list_inputs(str(tmp_path), store))
    first, _ = scorer(store, model)
    before = first(paths).predictions
    again, counting = scorer(store, model, threshold=0.0)
    after = again(paths).predictions
    assert counting.images == 0
    assert [p.probability_covid for p in after] == [p.probability_covid for p in before]
    assert all(p.reused for p in after) and {p.predicted_label for p in after} == {"covid"}
    assert sorted(ScoreStore(store, "test-model", 1).scored()) == sorted(p.sha256 for p in before)
    other_version, counting = scorer(store, model, version=2)
    other_version(paths)
    assert counting.images == 5  # scores belong to one model version


def test_a_run_killed_halfway_resumes_with_only_the_rest(tmp_path, store, model):
    for n in range(12):
        (tmp_path / f"{n:02d}.png").write_bytes(png(100 + n))
    chunks = list(chunked(list_inputs(str(tmp_path), store), 4))

    dying, _ = scorer(store, model, die_on_call=2)
    assert len(dying(chunks[0]).predictions) == 4
    with pytest.raises(RuntimeError, match="worker killed"):
        dying(chunks[1])

    resumed, counting = scorer(store, model, run="run-2")
    rows = [p for chunk in chunks for p in resumed(chunk).predictions]
    assert counting.images == 8  # the first chunk's four images were stored before the crash
    assert [p.reused for p in rows] == [True] * 4 + [False] * 8

    clean, _ = scorer(store, model, version=9)  # an uninterrupted run, in its own namespace
    reference = [p for chunk in chunks for p in clean(chunk).predictions]
    assert [p.source_path for p in rows] == [p.source_path for p in reference]
    assert [p.probability_covid for p in rows] == [p.probability_covid for p in reference]


def test_only_new_leaves_out_what_other_runs_scored(tmp_path, store, model):
    for n in range(3):
        (tmp_path / f"old-{n}.png").write_bytes(png(n))
    scorer(store, model, run="yesterday")[0](list(list_inputs(str(tmp_path), store)))
    (tmp_path / "new.png").write_bytes(png(50))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    score, counting = scorer(store, model, run="today", only_new=True)
    paths = list(list_inputs(str(tmp_path), store))
    scored = score(paths)
    assert [p.source_path.rsplit("/", 1)[-1] for p in scored.predictions] == [
        "broken.png",
        "new.png",
    ]
    assert (scored.summary.skipped, counting.images) == (3, 1)
    # a retry within the same run keeps its own rows
    assert len(score(paths).predictions) == 2


def test_a_chunk_stores_its_new_scores_in_one_batch(tmp_path, store, model):
    for n in range(5):
        (tmp_path / f"{n}.png").write_bytes(png(n))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = list(list_inputs(str(tmp_path), store))
    score, _ = scorer(store, model)
    first = score(paths)
    assert first.summary.predicted == 5
    assert len(list(store.list_keys("scores/"))) == 1  # one write for the chunk, none per file
    again = score(paths)
    assert again.summary.reused == 5 and len(list(store.list_keys("scores/"))) == 1


def test_the_earliest_batch_wins_in_whatever_order_it_is_found(store):
    sha, unknown = "ab" * 32, "cd" * 32
    reader = ScoreStore(store, "test-model", 1)
    reader.save({sha: 0.9}, run="late")
    assert reader.lookup([sha])[sha].probability_covid == 0.9
    # a racing run's batch with an earlier key, found after the later one
    early = ScoreBatch(run="early", scored_at="2026-01-01T00:00:00+00:00", probabilities={sha: 0.2})
    store.put_bytes(
        f"{reader.prefix}20260101T000000000000Z-00000000.json", early.model_dump_json().encode()
    )
    for scores in (reader, ScoreStore(store, "test-model", 1)):
        found = scores.lookup([sha, unknown])
        assert list(found) == [sha]
        assert (found[sha].probability_covid, found[sha].run) == (0.2, "early")


def test_deleted_scores_are_predicted_again(tmp_path, store, model):
    for n in range(3):
        (tmp_path / f"{n}.png").write_bytes(png(n))
    paths = list(list_inputs(str(tmp_path), store))
    score, counting = scorer(store, model)
    score(paths)
    for key in list(store.list_keys("scores/")):
        store.client.delete_object(Bucket=store.bucket, Key=key)
    assert score(paths).summary.predicted == 3 and counting.images == 6


def test_the_predictor_gives_what_keras_predict_gives_for_any_count(model):
    pixels = np.random.default_rng(0).integers(0, 256, (PREDICT_BATCH + 9, SIZE, SIZE, 3))
    expected = model.predict(pixels.astype(np.float32), verbose=0).reshape(-1)
    predicted = keras_predictor(model)(pixels.astype(np.uint8))
    assert predicted.shape == (PREDICT_BATCH + 9,)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert keras_predictor(model)(pixels[:0]).shape == (0,)
    # a last, smaller batch is padded to a power of two, not to a whole batch
    assert [padded_size(n) for n in (1, 2, 3, 5, 9, 17, 32)] == [1, 2, 4, 8, 16, 32, 32]


def test_chunk_tables_merge_into_one_in_order(tmp_path, store, model):
    for n in range(5):
        (tmp_path / f"{n}.png").write_bytes(png(n))
    score, _ = scorer(store, model)
    keys = []
    for number, paths in enumerate(chunked(list_inputs(str(tmp_path), store), 2)):
        frame = predictions_frame(score(paths).predictions)
        store.put_bytes(f"run/chunks/{number}.csv", frame.to_csv(index=False).encode())
        keys.append(f"run/chunks/{number}.csv")
    (tmp_path / "5.png").write_bytes(b"\x89PNG broken")
    frame = predictions_frame(score([str(tmp_path / "5.png")]).predictions)  # an error row
    store.put_bytes("run/chunks/3.csv", frame.to_csv(index=False).encode())
    keys.append("run/chunks/3.csv")
    preview = merge_tables(
        store, keys, "run/predictions.csv", "run/predictions.parquet", preview_rows=3
    )
    merged = pd.read_csv(io.BytesIO(store.get_bytes("run/predictions.csv")), dtype=str)
    assert list(merged["source_path"]) == sorted(str(p) for p in tmp_path.iterdir())
    assert [row["source_path"] for row in preview] == list(merged["source_path"][:3])
    scored = score(list(merged["source_path"][:5])).predictions
    expected = [repr(p.probability_covid) for p in scored]
    assert list(merged["probability_covid"][:5]) == expected  # probabilities copied exactly
    assert merged["status"].iloc[5] == "error"

    typed = pd.read_parquet(io.BytesIO(store.get_bytes("run/predictions.parquet")))
    assert list(typed.columns) == list(merged.columns)
    assert list(typed["source_path"]) == list(merged["source_path"])
    assert typed["probability_covid"].tolist()[:5] == [p.probability_covid for p in scored]
    assert np.isnan(typed["probability_covid"].iloc[5])
    assert typed["model_version"].dtype == "int64" and typed["reused"].dtype == "bool"
    assert typed["error"].iloc[5] == merged["error"].iloc[5]
    assert typed["error"][:5].isna().all()


def test_a_damaged_chunk_table_is_named_in_the_error(store):
    store.put_bytes("run/chunks/0.csv", b'source_path,sha256\n"unterminated')
    with pytest.raises(ScoringError, match="run/chunks/0.csv"):
        merge_tables(store, ["run/chunks/0.csv"], "run/p.csv", "run/p.parquet", 1)


def test_summaries_add_up():
    a = ScoreSummary(files=3, scored=2, errors=1, predicted=2, errors_by_reason={"x": 1})
    b = ScoreSummary(files=2, scored=2, reused=2, skipped=4, by_label={"covid": 2})
    total = a + b
    assert (total.files, total.scored, total.errors, total.predicted) == (5, 4, 1, 2)
    assert (total.reused, total.skipped) == (2, 4)
    assert total.errors_by_reason == {"x": 1} and total.by_label == {"covid": 2}


def test_chunks_stream_without_losing_items():
    assert list(chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_missing_folder_is_a_clear_error(tmp_path, store):
    with pytest.raises(ScoringError, match="does not exist"):
        list(list_inputs(str(tmp_path / "nope"), store))
