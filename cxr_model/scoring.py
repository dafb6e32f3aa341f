"""Batch scoring: every file under a folder or S3 prefix, in chunks, into one predictions table.

Each file gets one row: its path, sha256, the covid probability, the predicted label, the model
version, the status, and whether the probability was reused from an earlier scoring. A file that
cannot be read or decoded gets ``status=error`` and the reason; it never stops the run, and no
file is skipped.

**Scores are kept by content and model version**, so that no image is predicted twice:

- ``scores/<model name>/v<version>/<ab>/<sha256>.json`` (:class:`ScoreStore`) holds the
  probability that version gave to the image with that sha256, when, and by which run. It is
  written create-only after the image was predicted and never changes; when two runs race on the
  same image, the first write stays. Listing ``scores/<model name>/v<version>/`` tells which
  contents a version has scored.
- Scoring a chunk (:func:`score_chunk`) reads each file once, hashes it and looks the sha256 up.
  Found: the stored probability is used (``reused=True``). Not found: the image is decoded and
  predicted, and its score stored before the chunk returns. Files with the same content at
  several paths are predicted once per chunk, and every path gets its row. The label is applied
  from the probability in each run, so a threshold override reuses stored scores as well.
- Files that cannot be read or decoded are not stored: they get an error row in every run (a
  fixed decoder may read them next time).
- A run writes each chunk's rows under its own output prefix as the chunk finishes, then
  concatenates them into one table (:func:`merge_tables`), one chunk in memory at a time. A run
  killed halfway has stored the scores of its finished chunks; rerunning it reads every file again
  but predicts only the images without a stored score, and writes a complete table.
- ``only_new`` (the inbox): rows whose content was scored by another run are left out and counted
  as ``skipped``; content scored earlier in the same run (a retried chunk) is kept.

Cost: one GET per file per run for the lookup and one small PUT per newly predicted image.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from botocore.exceptions import ClientError
from pydantic import BaseModel

from cxr_model.images import ImageError, to_model_input
from cxr_model.storage import AlreadyExists, ObjectStore, parse_s3_uri

if TYPE_CHECKING:
    import keras

PREDICTION_COLUMNS = [
    "source_path",
    "sha256",
    "probability_covid",
    "predicted_label",
    "model_version",
    "status",
    "error",
    "reused",
]
OK, ERROR = "ok", "error"
COVID, NORMAL = "covid", "normal"
SCORES_PREFIX = "scores"
PREDICT_BATCH = 32
# Files of a chunk read, hashed, looked up and decoded at once: reads wait on the store or disk,
# and Pillow's decoders release the GIL.
PARALLEL_READS = 8
MISSING_KEY_CODES = {"NoSuchKey", "404"}

Predict = Callable[[np.ndarray], np.ndarray]
"""Pixels ``(n, size, size, 3)`` → covid probabilities ``(n,)``."""


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
    reused: bool = False


@dataclass(frozen=True)
class ScoreSummary:
    """What scoring did, in counts; summaries of chunks add up to the summary of a run.

    ``predicted`` counts images run through the model (distinct contents), ``reused`` rows whose
    probability came from an earlier scoring, ``skipped`` files left out as already scored.
    """

    files: int = 0
    scored: int = 0
    errors: int = 0
    predicted: int = 0
    reused: int = 0
    skipped: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: ScoreSummary) -> ScoreSummary:
        counts = {
            name: getattr(self, name) + getattr(other, name)
            for name in ("files", "scored", "errors", "predicted", "reused", "skipped")
        }
        return ScoreSummary(
            **counts,
            errors_by_reason=dict(Counter(self.errors_by_reason) + Counter(other.errors_by_reason)),
            by_label=dict(Counter(self.by_label) + Counter(other.by_label)),
        )


@dataclass(frozen=True)
class ChunkScores:
    """The rows of one chunk and its summary."""

    predictions: list[Prediction]
    summary: ScoreSummary


class StoredScore(BaseModel):
    """The probability one model version gave to one image content."""

    sha256: str
    probability_covid: float
    scored_at: str
    run: str


class ScoreStore:
    """Stored scores of one model version, by image sha256 (see the module docstring)."""

    def __init__(self, store: ObjectStore, model_name: str, version: int):
        self.store = store
        self.version = version
        self.prefix = f"{SCORES_PREFIX}/{model_name}/v{version}"

    def key(self, sha256: str) -> str:
        return f"{self.prefix}/{sha256[:2]}/{sha256}.json"

    def lookup(self, sha256: str) -> StoredScore | None:
        found = self.store.get_with_etag(self.key(sha256))
        return StoredScore.model_validate_json(found[0]) if found else None

    def save(self, sha256: str, probability: float, run: str) -> None:
        """Store a score once; a score already stored (by a concurrent run) is kept."""
        score = StoredScore(
            sha256=sha256,
            probability_covid=probability,
            scored_at=datetime.now(UTC).isoformat(timespec="seconds"),
            run=run,
        )
        try:
            self.store.put_bytes(
                self.key(sha256),
                score.model_dump_json().encode(),
                content_type="application/json",
                create_only=True,
            )
        except AlreadyExists:
            pass  # same bytes, same model: the stored probability is the same one

    def scored(self) -> Iterator[str]:
        """The sha256 of every content this version has a score for, streamed."""
        for key in self.store.list_keys(self.prefix + "/"):
            yield key.rsplit("/", 1)[-1].removesuffix(".json")


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
    for path in _files_under(root):
        yield str(path.resolve())


def _files_under(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder``, depth first, each folder's entries sorted by name.

    Only one folder's entries are held at a time (not the whole tree); symbolic links are not
    followed, so a link cannot lead outside the folder or round in a loop.
    """
    with os.scandir(folder) as found:
        entries = sorted(found, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_symlink():
            continue
        if entry.is_dir():
            yield from _files_under(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def chunked(items: Iterator[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of at most ``size`` items, without materialising the whole input."""
    while chunk := list(islice(items, size)):
        yield chunk


def read_input(path: str, store: ObjectStore) -> bytes:
    """The bytes of a local file or ``s3://`` object; a vanished object is FileNotFoundError."""
    if not path.startswith("s3://"):
        return Path(path).read_bytes()
    bucket, key = parse_s3_uri(path)
    try:
        return store.in_bucket(bucket).get_bytes(key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING_KEY_CODES:
            raise FileNotFoundError(f"{path} was removed after it was listed") from exc
        raise


def keras_predictor(model: keras.Model) -> Predict:
    """:data:`Predict` for a Keras model, one call at a time per model.

    TensorFlow already spreads one batch over every core, and Keras builds its predict function
    lazily on first use, so concurrent chunks take turns at the model (reading and decoding
    still overlap). Inputs are padded to whole batches: every batch then has the same shape, and
    TensorFlow traces the predict function once instead of once per leftover batch size.
    """
    lock = threading.Lock()

    def predict(pixels: np.ndarray) -> np.ndarray:
        padding = np.zeros((-len(pixels) % PREDICT_BATCH, *pixels.shape[1:]), pixels.dtype)
        with lock:
            probabilities = model.predict(
                np.concatenate([pixels, padding]), batch_size=PREDICT_BATCH, verbose=0
            )
        return probabilities.reshape(-1)[: len(pixels)]

    return predict


@dataclass(frozen=True)
class _Examined:
    """One file after reading: its content's stored score, or its pixels, or why neither."""

    path: str
    sha256: str
    stored: StoredScore | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


def _examine(path: str, store: ObjectStore, scores: ScoreStore, image_size: int) -> _Examined:
    sha256 = ""
    try:
        data = read_input(path, store)
        sha256 = hashlib.sha256(data).hexdigest()
        stored = scores.lookup(sha256)
        if stored is not None:
            return _Examined(path, sha256, stored=stored)
        return _Examined(path, sha256, pixels=to_model_input(data, image_size, name=path))
    except (OSError, ImageError) as exc:
        reason = exc.reason if isinstance(exc, ImageError) else f"cannot read: {exc}"
        return _Examined(path, sha256, error=reason)


def _predict_new(examined: list[_Examined], predict: Predict) -> dict[str, float]:
    """Probabilities of the contents without a stored score, each content predicted once."""
    pixels = {item.sha256: item.pixels for item in examined if item.pixels is not None}
    if not pixels:
        return {}
    batch = np.stack(list(pixels.values())).astype(np.float32)
    probabilities = predict(batch)
    return {sha: float(p) for sha, p in zip(pixels, probabilities, strict=True)}


def score_chunk(
    paths: list[str],
    store: ObjectStore,
    scores: ScoreStore,
    predict: Predict,
    *,
    image_size: int,
    threshold: float,
    run: str,
    only_new: bool = False,
) -> ChunkScores:
    """Rows for ``paths`` in input order, predicting only contents ``scores`` does not hold.

    New scores are stored (as ``run``) before this returns. With ``only_new``, files whose content
    another run scored are left out (counted as skipped).
    """
    with ThreadPoolExecutor(max_workers=PARALLEL_READS) as pool:
        examined = list(pool.map(lambda p: _examine(p, store, scores, image_size), paths))
        fresh = _predict_new(examined, predict)
        list(pool.map(lambda sha256: scores.save(sha256, fresh[sha256], run), fresh))
    rows: list[Prediction] = []
    for item in examined:
        if item.error is not None:
            rows.append(
                Prediction(item.path, item.sha256, None, None, scores.version, ERROR, item.error)
            )
            continue
        if only_new and item.stored is not None and item.stored.run != run:
            continue
        reused = item.stored is not None
        probability = item.stored.probability_covid if item.stored else fresh[item.sha256]
        label = COVID if probability >= threshold else NORMAL
        rows.append(
            Prediction(item.path, item.sha256, probability, label, scores.version, OK, None, reused)
        )
    summary = summarise(rows, predicted=len(fresh), skipped=len(paths) - len(rows))
    return ChunkScores(rows, summary)


def summarise(
    predictions: list[Prediction], *, predicted: int = 0, skipped: int = 0
) -> ScoreSummary:
    """Counts of a list of rows; ``predicted`` and ``skipped`` are what the rows cannot tell."""
    errors = [p for p in predictions if p.status == ERROR]
    # group reasons by their kind (text before the first colon) so counts stay readable
    reasons = Counter((p.error or "unknown").split(":")[0] for p in errors)
    labels = Counter(p.predicted_label for p in predictions if p.status == OK)
    return ScoreSummary(
        files=len(predictions),
        scored=len(predictions) - len(errors),
        errors=len(errors),
        predicted=predicted,
        reused=sum(p.reused for p in predictions),
        skipped=skipped,
        errors_by_reason=dict(reasons),
        by_label={str(k): v for k, v in labels.items()},
    )


def predictions_frame(predictions: list[Prediction]) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in predictions], columns=PREDICTION_COLUMNS)


def frame_to_csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def merge_tables(
    store: ObjectStore, keys: Iterable[str], output_key: str, preview_rows: int
) -> list[dict[str, str]]:
    """Concatenate the CSV tables at ``keys`` into ``output_key``; return its first rows.

    The tables are copied row by row through a local temporary file, one table in memory at a
    time, so a run of any size merges in flat memory. Values are copied as text, unchanged.
    """
    preview: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="cxr-merge-") as folder:
        merged = Path(folder) / "predictions.csv"
        with merged.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=PREDICTION_COLUMNS)
            writer.writeheader()
            for key in keys:
                text = store.get_bytes(key).decode("utf-8")
                for row in csv.DictReader(io.StringIO(text, newline="")):
                    writer.writerow(row)
                    if len(preview) < preview_rows:
                        preview.append(row)
        store.put_file(output_key, merged)
    return preview
