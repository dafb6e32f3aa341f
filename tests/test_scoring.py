"""Scoring files in chunks: one row per file, errors as rows, nothing skipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr_model.model import seed_cnn
from cxr_model.scoring import (
    ERROR,
    OK,
    ScoringError,
    chunked,
    list_inputs,
    predictions_frame,
    score_files,
    summarise,
)


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50), value, np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_file_gets_a_row_in_input_order(tmp_path, store):
    (tmp_path / "a.png").write_bytes(png(10))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(png(200))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    paths = list(list_inputs(str(tmp_path), store))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.png", "empty.png", "notes.txt", "b.png"]

    predictions = score_files(
        paths, store, seed_cnn(32), model_version=3, image_size=32, threshold=0.5
    )
    assert [p.status for p in predictions] == [OK, ERROR, ERROR, OK]
    assert predictions[1].error == "empty file (0 bytes)"
    assert predictions[2].error.startswith("not an image")
    ok = predictions[0]
    assert 0 <= ok.probability_covid <= 1 and ok.model_version == 3
    assert ok.predicted_label == ("covid" if ok.probability_covid >= 0.5 else "normal")
    assert len(ok.sha256) == 64

    summary = summarise(predictions_frame(predictions))
    assert (summary.files, summary.scored, summary.errors) == (4, 2, 2)
    assert sum(summary.errors_by_reason.values()) == 2


def test_s3_prefix_inputs_are_listed_and_read(store):
    store.put_bytes("inbox/one.png", png(30))
    store.put_bytes("inbox/two.png", png(60))
    paths = list(list_inputs(f"s3://{store.bucket}/inbox/", store))
    assert paths == [f"s3://{store.bucket}/inbox/one.png", f"s3://{store.bucket}/inbox/two.png"]
    predictions = score_files(
        paths, store, seed_cnn(32), model_version=1, image_size=32, threshold=0.5
    )
    assert [p.status for p in predictions] == [OK, OK]


def test_chunks_stream_without_losing_items():
    assert list(chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_missing_folder_is_a_clear_error(tmp_path, store):
    with pytest.raises(ScoringError, match="does not exist"):
        list(list_inputs(str(tmp_path / "nope"), store))
