"""Batch scoring: every file under a folder or S3 prefix, in chunks, into one predictions table.

Each file gets one row: its path, sha256, the covid probability, the predicted label, the model
version, and a status. A file that cannot be read or decoded gets ``status=error`` and the reason;
it never stops the run, and no file is skipped.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cxr_model.images import ImageError, to_model_input
from cxr_model.storage import ObjectStore, parse_s3_uri

PREDICTION_COLUMNS = [
    "source_path",
    "sha256",
    "probability_covid",
    "predicted_label",
    "model_version",
    "status",
    "error",
]
OK, ERROR = "ok", "error"
PREDICT_BATCH = 32


class ScoringError(ValueError):
    """The input location cannot be listed at all (missing folder, empty prefix)."""


@dataclass(frozen=True)
class Prediction:
    source_path: str
    sha256: str
    probability_covid: float | None
    predicted_label: str | None
    model_version: int
    status: str
    error: str | None


def list_inputs(location: str, store: ObjectStore) -> Iterator[str]:
    """Every file under a local folder or ``s3://bucket/prefix``, streamed in a stable order."""
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_uri(location)
        for key in store.in_bucket(bucket).list_keys(prefix):
            if not key.endswith("/"):
                yield f"s3://{bucket}/{key}"
        return
    root = Path(location).expanduser()
    if not root.is_dir():
        raise ScoringError(f"input folder {root} does not exist or is not a folder")
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield str(path.resolve())


def chunked(items: Iterator[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of at most ``size`` items, without materialising the whole input."""
    while chunk := list(islice(items, size)):
        yield chunk


def read_input(path: str, store: ObjectStore) -> bytes:
    if path.startswith("s3://"):
        bucket, key = parse_s3_uri(path)
        return store.in_bucket(bucket).get_bytes(key)
    return Path(path).read_bytes()


def score_files(
    paths: list[str],
    store: ObjectStore,
    model: keras.Model,
    *,
    model_version: int,
    image_size: int,
    threshold: float,
) -> list[Prediction]:
    """Predictions for ``paths`` in input order; unreadable files become error rows."""
    rows: dict[int, Prediction] = {}
    pixels: list[np.ndarray] = []
    readable: list[tuple[int, str]] = []
    for index, path in enumerate(paths):
        sha256 = ""
        try:
            data = read_input(path, store)
            sha256 = hashlib.sha256(data).hexdigest()
            pixels.append(to_model_input(data, image_size, name=path))
            readable.append((index, sha256))
        except (OSError, ImageError) as exc:
            reason = exc.reason if isinstance(exc, ImageError) else f"cannot read: {exc}"
            rows[index] = Prediction(path, sha256, None, None, model_version, ERROR, reason)
    if pixels:
        batch = np.stack(pixels).astype(np.float32)
        probabilities = model.predict(batch, batch_size=PREDICT_BATCH, verbose=0).reshape(-1)
        for (index, sha256), probability in zip(readable, probabilities, strict=True):
            label = "covid" if probability >= threshold else "normal"
            rows[index] = Prediction(
                paths[index], sha256, float(probability), label, model_version, OK, None
            )
    return [rows[i] for i in range(len(paths))]


def predictions_frame(predictions: list[Prediction]) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in predictions], columns=PREDICTION_COLUMNS)


def frame_to_csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring run did, for people."""

    files: int
    scored: int
    errors: int
    errors_by_reason: dict[str, int]
    by_label: dict[str, int]


def summarise(frame: pd.DataFrame) -> ScoreSummary:
    errors = frame[frame["status"] == ERROR]
    # group reasons by their kind (text before the first colon) so counts stay readable
    reasons = errors["error"].fillna("unknown").str.split(":").str[0].value_counts()
    return ScoreSummary(
        files=len(frame),
        scored=int((frame["status"] == OK).sum()),
        errors=len(errors),
        errors_by_reason={str(k): int(v) for k, v in reasons.items()},
        by_label={str(k): int(v) for k, v in frame["predicted_label"].value_counts().items()},
    )
