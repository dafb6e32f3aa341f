"""Batch scoring: every file under a folder or S3 prefix, in chunks, into one predictions table.

Each file gets one row: its path, sha256, the covid probability, the predicted label, the model
version, the status, and whether the probability was reused from an earlier scoring. A file that
cannot be read or decoded gets ``status=error`` and the reason; it never stops the run, and no
file is skipped.

**Scores are kept by content and model version**, so that no image is predicted twice:

- ``scores/<model name>/v<version>/batches/<UTC time>-<random>.json`` (:class:`ScoreStore`) each
  hold the probabilities one chunk's newly predicted images got from that version, by sha256,
  with when and by which run. A batch is written create-only, once per chunk, after its images
  were predicted, and never changes. When two runs race on the same image, both batches hold
  it and the batch whose key sorts first (the earlier one) is the one every reader uses.
- Scoring a chunk (:func:`score_chunk`) reads each file once and hashes it, then looks all its
  sha256 up at once. Found: the stored probability is used (``reused=True``). Not found: the
  image is decoded and predicted, and the chunk's new scores stored before it returns. Files with
  the same content at several paths are predicted once per chunk, and every path gets its row.
  The label is applied from the probability in each run, so a threshold override reuses stored
  scores as well.
- Files that cannot be read or decoded are not stored: they get an error row in every run (a
  fixed decoder may read them next time).
- A run writes each chunk's rows under its own output prefix as the chunk finishes, then
  concatenates them into one table (:func:`merge_tables`), one chunk in memory at a time: CSV,
  and Parquet with typed columns. A run
  killed halfway has stored the scores of its finished chunks; rerunning it reads every file again
  but predicts only the images without a stored score, and writes a complete table.
- ``only_new`` (the inbox): rows whose content was scored by another run are left out and counted
  as ``skipped``; content scored earlier in the same run (a retried chunk) is kept.

Speed: within a chunk, files are read, hashed and decoded in threads while the model predicts
whole batches of :data:`PREDICT_BATCH` (Pillow and TensorFlow release the GIL), so the model
does not wait for the files. Store requests per chunk: one listing of the version's batches
(per 1,000 batches), one GET per batch this process has not read yet, and one PUT of the
chunk's new scores. Per file there is no store request (beyond reading ``s3://`` inputs): a
lookup and a write per file cost several milliseconds of CPU (boto3 and the server), a large
share of the ~25 ms of CPU the study's CNN needs per 224 px image (``bench/score_throughput.py``
measured the whole path without the model at ~15 ms of CPU per image that way, ~3 ms now).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import secrets
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from cxr_model.image_checks import ImageChecks, scoring_facts
from cxr_model.images import (
    LEGACY_PREPROCESSING,
    ImageError,
    Preprocessing,
    image_header,
    to_model_input,
)
from cxr_model.memory import ByteBudget
from cxr_model.ood import OodDetector, with_features
from cxr_model.safe_text import spreadsheet_cell
from cxr_model.sources import (
    local_entries,
    open_input,
    read_capped,
    read_failure,
    read_input,
    sha256_capped,
)
from cxr_model.storage import ObjectStore, parse_s3_uri

if TYPE_CHECKING:
    import keras

    from cxr_model.inference import OnnxModel

PREDICTION_COLUMNS = [
    "source_path",
    "sha256",
    "probability_covid",
    "predicted_label",
    "model_version",
    "status",
    "error",
    "reused",
    "ood_score",
    "in_distribution",
]
OK, ERROR = "ok", "error"
REJECTED = "rejected"  # fails a per-image expectation of the image suite: not predicted
OUT_OF_DISTRIBUTION = "out_of_distribution"  # predicted, but unlike every training image
SKIPPED = "skipped"  # a link, FIFO, socket or device: not read
STATUSES = (OK, OUT_OF_DISTRIBUTION, REJECTED, ERROR, SKIPPED)
SKIP_REASON = "skipped:"
FOLDER_OOD_SHARE = 0.5
"""Share of a run's predicted images out of distribution at which the run itself is flagged."""
COVID, NORMAL = "covid", "normal"
SCORES_PREFIX = "scores"
BATCHES_FOLDER = "batches"
BATCH_TOKEN_BYTES = 4  # random hex in a batch's key, so two chunks never pick the same key
PREDICT_BATCH = 32  # a power of two (see padded_size)
# ONNX Runtime's memory grows with the batch (its arena holds the activations): small batches
# keep a scoring worker's peak low at a modest cost in speed (BENCHMARKS.md, issue 14).
ONNX_BATCH = 4
# Files of a chunk read and hashed at once: reads mostly wait on the store or the disk.
PARALLEL_READS = 8
# Files of a chunk decoded at once: decoding is CPU work (Pillow releases the GIL), and more
# threads than cores only add switching (measured: ~20% more CPU per image with 8 on 2 cores).
DECODE_THREADS = os.cpu_count() or 1
DECODE_AHEAD = 2 * PREDICT_BATCH  # decoded images waiting for the model, at most, per chunk
MAX_BYTES_IN_FLIGHT = 256 * 1024**2
BYTES_IN_FLIGHT = ByteBudget(MAX_BYTES_IN_FLIGHT)
"""File bytes held at once by every chunk a process scores. A file read when they are spent is
hashed as it streams by, its bytes let go, and read again when it is decoded; so a folder of
large files costs reads, not memory."""

Predict = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
"""Pixels ``(n, size, size, 3)`` → covid probabilities ``(n,)``, or ``(probabilities, OOD
scores)`` for a model with an out-of-distribution check (:mod:`cxr_model.ood`; above 1.0 is out)."""


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
    ood_score: float | None = None
    in_distribution: bool | None = None  # None: rejected, failed, or the model has no OOD check


@dataclass(frozen=True)
class ScoreSummary:
    """What scoring did, in counts; summaries of chunks add up to the summary of a run.

    ``predicted`` counts images run through the model (distinct contents), ``reused`` rows whose
    probability came from an earlier scoring or an earlier row of the same content, ``skipped``
    files left out as already scored. ``by_status`` counts the rows by status (``ok``,
    ``out_of_distribution``, ``rejected``, ``error``, ``skipped``); ``errors`` counts the rows
    without a result for a reason of the file (``error`` and ``skipped``), ``scored`` those with a
    probability (``ok`` and ``out_of_distribution``).
    """

    files: int = 0
    scored: int = 0
    errors: int = 0
    predicted: int = 0
    reused: int = 0
    skipped: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    ood_checked: bool = False  # the model had an OOD check (otherwise in_distribution is empty)

    @property
    def out_of_distribution(self) -> int:
        return self.by_status.get(OUT_OF_DISTRIBUTION, 0)

    @property
    def mostly_out_of_distribution(self) -> bool:
        """Most predicted images of the run look like none of the training images."""
        return self.scored > 0 and self.out_of_distribution >= FOLDER_OOD_SHARE * self.scored

    def __add__(self, other: ScoreSummary) -> ScoreSummary:
        counts = {
            name: getattr(self, name) + getattr(other, name)
            for name in ("files", "scored", "errors", "predicted", "reused", "skipped")
        }
        return ScoreSummary(
            **counts,
            errors_by_reason=dict(Counter(self.errors_by_reason) + Counter(other.errors_by_reason)),
            by_label=dict(Counter(self.by_label) + Counter(other.by_label)),
            by_status=dict(Counter(self.by_status) + Counter(other.by_status)),
            rejected_by_reason=dict(
                Counter(self.rejected_by_reason) + Counter(other.rejected_by_reason)
            ),
            ood_checked=self.ood_checked or other.ood_checked,
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
    ood_score: float | None = None


class ScoreBatch(BaseModel):
    """The scores one chunk stored: probability (and OOD score) by sha256, when, by which run."""

    run: str
    scored_at: str
    probabilities: dict[str, float]
    ood_scores: dict[str, float] = Field(default_factory=dict)


class ScoreStore:
    """Stored scores of one model version, by image sha256 (see the module docstring).

    An instance remembers the batches it has read and reads only newer ones, so one instance
    should serve every chunk a process scores with a version; it is safe to share between
    threads. It holds every score of the version in memory, about 0.2 KB each.
    """

    def __init__(self, store: ObjectStore, model_name: str, version: int):
        self.store = store
        self.version = version
        self.prefix = f"{SCORES_PREFIX}/{model_name}/v{version}/{BATCHES_FOLDER}/"
        self._lock = threading.Lock()
        self._batch_numbers: dict[str, int] = {}  # batch key → its position in _batches
        self._batches: list[tuple[str, str, str]] = []  # (key, run, scored_at)
        # sha256 → (batch number, probability, OOD score)
        self._best: dict[str, tuple[int, float, float | None]] = {}

    def lookup(self, sha256s: Iterable[str]) -> dict[str, StoredScore]:
        """The stored scores of those of ``sha256s`` this version has scored, by sha256."""
        with self._lock:
            self._catch_up()
            return {sha: self._stored(sha) for sha in set(sha256s) if sha in self._best}

    def save(
        self,
        probabilities: Mapping[str, float],
        run: str,
        ood_scores: Mapping[str, float] | None = None,
    ) -> None:
        """Store new scores as one create-only batch; with no scores nothing is written."""
        if not probabilities:
            return
        now = datetime.now(UTC)
        batch = ScoreBatch(
            run=run,
            scored_at=now.isoformat(timespec="seconds"),
            probabilities=dict(probabilities),
            ood_scores=dict(ood_scores or {}),
        )
        key = f"{self.prefix}{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(BATCH_TOKEN_BYTES)}.json"
        self.store.put_bytes(
            key, batch.model_dump_json().encode(), content_type="application/json", create_only=True
        )
        with self._lock:
            self._add(key, batch)

    def scored(self) -> set[str]:
        """The sha256 of every content this version has a score for."""
        with self._lock:
            self._catch_up()
            return set(self._best)

    def _catch_up(self) -> None:
        """Read the batches stored since the last look; start again if some were deleted."""
        listed = [key for key in self.store.list_keys(self.prefix) if key.endswith(".json")]
        if not self._batch_numbers.keys() <= set(listed):
            self._batch_numbers, self._batches, self._best = {}, [], {}
        unread = [key for key in listed if key not in self._batch_numbers]
        if not unread:
            return
        with ThreadPoolExecutor(max_workers=PARALLEL_READS) as pool:
            for key, data in zip(unread, pool.map(self.store.get_bytes, unread), strict=True):
                self._add(key, ScoreBatch.model_validate_json(data))

    def _add(self, key: str, batch: ScoreBatch) -> None:
        """Take in a batch; where a content is in several, the batch whose key sorts first wins."""
        if key in self._batch_numbers:
            return
        number = len(self._batches)
        self._batch_numbers[key] = number
        self._batches.append((key, batch.run, batch.scored_at))
        for sha256, probability in batch.probabilities.items():
            held = self._best.get(sha256)
            if held is None or key < self._batches[held[0]][0]:
                self._best[sha256] = (number, probability, batch.ood_scores.get(sha256))

    def _stored(self, sha256: str) -> StoredScore:
        number, probability, ood_score = self._best[sha256]
        _, run, scored_at = self._batches[number]
        return StoredScore(
            sha256=sha256,
            probability_covid=probability,
            scored_at=scored_at,
            run=run,
            ood_score=ood_score,
        )


def list_inputs(location: str, store: ObjectStore) -> Iterator[str]:
    """Every file under a local folder or ``s3://bucket/prefix``, streamed in a stable order.

    Local symbolic links, FIFOs and other entries that are not regular files are listed too
    (never followed or entered): reading them gives their row its ``skipped:`` reason.
    """
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_uri(location)
        try:
            for key in store.in_bucket(bucket).list_keys(prefix):
                if not key.endswith("/"):
                    yield f"s3://{bucket}/{key}"
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code") or "error"
            why = f"bucket {bucket} does not exist" if code == "NoSuchBucket" else code
            raise ScoringError(f"cannot list {location}: {why}") from exc
        return
    root = Path(location).expanduser()
    if not root.is_dir():
        raise ScoringError(f"input folder {root} does not exist or is not a folder")
    for path in local_entries(root.resolve()):
        yield str(path)


def chunked(items: Iterator[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of at most ``size`` items, without materialising the whole input."""
    while chunk := list(islice(items, size)):
        yield chunk


RunBatch = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]
"""One batch of pixels → covid probabilities ``(n,)`` and the penultimate features ``(n, k)``
(None for a model run without them)."""


def batch_predictor(
    run: RunBatch, ood: OodDetector | None = None, batch_size: int = PREDICT_BATCH
) -> Predict:
    """:data:`Predict` over a model's ``run``: batches of at most ``batch_size``, one batch at a
    time. With ``ood`` (the version's fitted out-of-distribution check) ``run`` also gives the
    penultimate features, and each image gets its OOD score with its probability.

    A last, smaller batch is padded to :func:`padded_size` rather than to a whole batch, so a
    run of 100 images predicts 100, not 128. The runtime already spreads one batch over every
    core, so concurrent chunks take turns at the model batch by batch, while their reading and
    decoding go on.
    """
    lock = threading.Lock()

    def predict(pixels: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        probabilities, scores = [np.empty(0, np.float32)], [np.empty(0)]
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size].astype(np.float32, copy=False)
            size = padded_size(len(batch), batch_size)
            padding = np.zeros((size - len(batch), *batch.shape[1:]), np.float32)
            whole = np.concatenate([batch, padding]) if len(padding) else batch
            with lock:
                predicted, features = run(whole)
            if ood is not None:
                if features is None:
                    raise ValueError(
                        "the model gives no features for its out-of-distribution check"
                    )
                scores.append(ood.scores(np.asarray(features)[: len(batch)], batch))
            probabilities.append(np.asarray(predicted).reshape(-1)[: len(batch)])
        if ood is None:
            return np.concatenate(probabilities)
        return np.concatenate(probabilities), np.concatenate(scores)

    return predict


def keras_predictor(model: keras.Model, ood: OodDetector | None = None) -> Predict:
    """:func:`batch_predictor` for a Keras model (versions registered before ONNX exports, and
    models being trained): ``predict_on_batch``, which skips what ``model.predict`` sets up on
    every call (a data adapter, an iterator, callbacks)."""
    network = model if ood is None else with_features(model)

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        predicted = network.predict_on_batch(pixels)
        if ood is None:
            return np.asarray(predicted), None
        return np.asarray(predicted[0]), np.asarray(predicted[1])

    return batch_predictor(run, ood)


def onnx_predictor(model: OnnxModel, ood: OodDetector | None = None) -> Predict:
    """:func:`batch_predictor` for a version's ONNX export in ONNX Runtime (no TensorFlow), in
    batches of :data:`ONNX_BATCH`."""
    return batch_predictor(model.run, ood, ONNX_BATCH)


def padded_size(count: int, batch_size: int = PREDICT_BATCH) -> int:
    """The batch size ``count`` images (1 to ``batch_size``) are predicted as: the next power of
    two. Few distinct shapes mean few traces of the predict function (TensorFlow generalises
    after the second; JAX would compile each), and little padding."""
    return min(batch_size, 1 << (count - 1).bit_length())


@dataclass(frozen=True)
class _File:
    """One input file after reading: its sha256, and its bytes when the process's budget had
    room for them (``held`` of it), or why it could not be read."""

    path: str
    sha256: str = ""
    data: bytes | None = None
    error: str | None = None
    held: int = 0


def _why(exc: OSError | ImageError) -> str:
    return exc.reason if isinstance(exc, ImageError) else read_failure(exc)


def _read(path: str, store: ObjectStore) -> _File:
    """Read and hash one file; its bytes are kept only if :data:`BYTES_IN_FLIGHT` has room."""
    try:
        with open_input(path, store) as (stream, size):
            if not BYTES_IN_FLIGHT.try_take(size):
                return _File(path, sha256_capped(stream, path))  # read again when decoded
            try:
                data = read_capped(stream, path)
            except BaseException:
                BYTES_IN_FLIGHT.give(size)
                raise
            return _File(path, hashlib.sha256(data).hexdigest(), data, held=size)
    except OSError as exc:
        return _File(path, error=_why(exc))


def _contents(file: _File, store: ObjectStore) -> bytes:
    """A file's bytes: those read with it, or read again (and checked against its sha256)."""
    if file.data is not None:
        return file.data
    data = read_input(file.path, store)
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise ImageError(file.path, "changed while it was being scored; score it again")
    return data


@dataclass(frozen=True)
class _Rejected:
    """Why the image suite refuses an image (its expectations' reasons)."""

    reasons: list[str]


def _decode(
    file: _File,
    store: ObjectStore,
    image_size: int,
    preprocessing: Preprocessing,
    checks: ImageChecks | None,
) -> np.ndarray | str | _Rejected:
    """The model input of a file's bytes, why the image suite refuses it, or why it cannot be
    one (an error)."""
    try:
        data = _contents(file, store)
        header = image_header(data) if checks is not None else None
        if header is not None and checks is not None:
            reasons = checks.failures(scoring_facts(*header, len(data)))
            if reasons:
                return _Rejected(reasons)
        return to_model_input(data, image_size, name=file.path, preprocessing=preprocessing)
    except (OSError, ImageError) as exc:
        return _why(exc)


def _new_contents(files: list[_File], stored: Mapping[str, StoredScore]) -> deque[_File]:
    """The first readable file of each content without a stored score, in input order."""
    first: dict[str, _File] = {}
    for file in files:
        if file.error is None and file.sha256 not in stored:
            first.setdefault(file.sha256, file)
    return deque(first.values())


def _decoded(
    new: deque[_File],
    pool: ThreadPoolExecutor,
    store: ObjectStore,
    image_size: int,
    preprocessing: Preprocessing,
    checks: ImageChecks | None,
) -> Iterator[tuple[str, np.ndarray | str | _Rejected]]:
    """``(sha256, model input or why not)`` of each file in ``new``, in order, emptying ``new``.

    At most :data:`DECODE_AHEAD` files are decoded ahead of the caller, and a file's bytes are let
    go once it is decoded, so a chunk holds its files' bytes but only a few decoded images.
    """
    pending: deque[tuple[str, Future[np.ndarray | str | _Rejected]]] = deque()
    while new or pending:
        while new and len(pending) < DECODE_AHEAD:
            file = new.popleft()
            decoding = pool.submit(_decode, file, store, image_size, preprocessing, checks)
            pending.append((file.sha256, decoding))
        sha256, decoding = pending.popleft()
        yield sha256, decoding.result()


@dataclass
class _NewScores:
    """What a chunk learnt about its new contents, by sha256."""

    probabilities: dict[str, float] = field(default_factory=dict)
    ood_scores: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # why it could not be decoded
    rejected: dict[str, list[str]] = field(default_factory=dict)  # the image suite's reasons


def _predict_new(
    new: deque[_File],
    store: ObjectStore,
    predict: Predict,
    image_size: int,
    preprocessing: Preprocessing,
    checks: ImageChecks | None,
) -> _NewScores:
    """Probabilities (and OOD scores) of the ``new`` contents, and why others were refused or
    could not be decoded.

    The contents are decoded in threads while each whole batch decoded so far is predicted.
    """
    found = _NewScores()
    waiting: list[tuple[str, np.ndarray]] = []

    def predict_waiting() -> None:
        batch = np.stack([pixels for _, pixels in waiting]).astype(np.float32)
        predicted = predict(batch)
        probabilities, scores = predicted if isinstance(predicted, tuple) else (predicted, None)
        for n, ((sha256, _), probability) in enumerate(zip(waiting, probabilities, strict=True)):
            found.probabilities[sha256] = float(probability)
            if scores is not None:
                found.ood_scores[sha256] = float(scores[n])
        waiting.clear()

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for sha256, pixels in _decoded(new, pool, store, image_size, preprocessing, checks):
            if isinstance(pixels, str):
                found.failed[sha256] = pixels
            elif isinstance(pixels, _Rejected):
                found.rejected[sha256] = pixels.reasons
            else:
                waiting.append((sha256, pixels))
                if len(waiting) == PREDICT_BATCH:
                    predict_waiting()
    if waiting:
        predict_waiting()
    return found


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
    preprocessing: Preprocessing = LEGACY_PREPROCESSING,
    checks: ImageChecks | None = None,
) -> ChunkScores:
    """Rows for ``paths`` in input order, predicting only contents ``scores`` does not hold.

    ``checks`` (the image suite's per-image expectations, with the model's quality settings)
    refuses images training would have quarantined: they get ``status=rejected`` and the reasons,
    and no probability. A model with an OOD check gives each prediction an ``ood_score``; one
    above 1.0 is ``status=out_of_distribution``, with its probability but no label. New scores are
    stored (as ``run``) before this returns. With ``only_new``, files whose content another run
    scored are left out (counted as skipped).
    """
    with ThreadPoolExecutor(max_workers=PARALLEL_READS) as pool:
        files = list(pool.map(lambda path: _read(path, store), paths))
    held = sum(file.held for file in files)  # this chunk's share of BYTES_IN_FLIGHT
    try:
        stored = scores.lookup(file.sha256 for file in files if file.error is None)
        new = _new_contents(files, stored)
        decoding = sum(file.held for file in new)  # held until the chunk is decoded
        BYTES_IN_FLIGHT.give(held - decoding)
        held = decoding
        files = [replace(file, data=None) for file in files]  # bytes stay only until decoded
        fresh = _predict_new(new, store, predict, image_size, preprocessing, checks)
    finally:
        BYTES_IN_FLIGHT.give(held)
    scores.save(fresh.probabilities, run, fresh.ood_scores)
    rows: list[Prediction] = []
    seen: set[str] = set()  # contents that already have a row: later rows reuse that result
    for file in files:
        found = stored.get(file.sha256)
        if only_new and found is not None and found.run != run:
            continue
        rows.append(_row(file, found, fresh, scores.version, threshold, file.sha256 in seen))
        seen.add(file.sha256)
    summary = summarise(rows, predicted=len(fresh.probabilities), skipped=len(paths) - len(rows))
    return ChunkScores(rows, summary)


def _row(
    file: _File,
    found: StoredScore | None,
    fresh: _NewScores,
    version: int,
    threshold: float,
    seen: bool,
) -> Prediction:
    """One file's row: an error, a rejection, or a probability (stored, or new in this chunk)."""
    error = file.error or fresh.failed.get(file.sha256)
    if error is not None:
        status = SKIPPED if error.startswith(SKIP_REASON) else ERROR
        return Prediction(file.path, file.sha256, None, None, version, status, error)
    if file.sha256 in fresh.rejected:
        reasons = "; ".join(fresh.rejected[file.sha256])
        return Prediction(file.path, file.sha256, None, None, version, REJECTED, reasons)
    if found is not None:
        probability, ood_score = found.probability_covid, found.ood_score
    else:
        probability, ood_score = fresh.probabilities[file.sha256], fresh.ood_scores.get(file.sha256)
    inside = None if ood_score is None else bool(ood_score <= 1.0)
    label = COVID if probability >= threshold else NORMAL
    return Prediction(
        file.path,
        file.sha256,
        probability,
        label if inside is not False else None,
        version,
        OK if inside is not False else OUT_OF_DISTRIBUTION,
        None,
        reused=found is not None or seen,
        ood_score=ood_score,
        in_distribution=inside,
    )


def summarise(
    predictions: list[Prediction], *, predicted: int = 0, skipped: int = 0
) -> ScoreSummary:
    """Counts of a list of rows; ``predicted`` and ``skipped`` are what the rows cannot tell."""
    failed = [p for p in predictions if p.status in (ERROR, SKIPPED)]
    # group reasons by their kind (text before the first colon) so counts stay readable
    reasons = Counter((p.error or "unknown").split(":")[0] for p in failed)
    refused = Counter(kind for p in predictions if p.status == REJECTED for kind in _kinds(p.error))
    labels = Counter(p.predicted_label for p in predictions if p.status == OK)
    statuses = Counter(p.status for p in predictions)
    return ScoreSummary(
        files=len(predictions),
        scored=statuses[OK] + statuses[OUT_OF_DISTRIBUTION],
        errors=len(failed),
        predicted=predicted,
        reused=sum(p.reused for p in predictions),
        skipped=skipped,
        errors_by_reason=dict(reasons),
        by_label={str(k): v for k, v in labels.items()},
        by_status=dict(statuses),
        rejected_by_reason=dict(refused),
        ood_checked=any(p.in_distribution is not None for p in predictions),
    )


def distribution_warning(summary: ScoreSummary) -> str | None:
    """A loud line when the run's images mostly look like none of the training images, or when
    the model could not tell (no OOD check); None otherwise."""
    if summary.scored and not summary.ood_checked:
        return (
            "this model version has no out-of-distribution check: its probabilities are given "
            "even for images unlike any it was trained on (retrain to add one)"
        )
    if summary.mostly_out_of_distribution:
        return (
            f"{summary.out_of_distribution} of {summary.scored} predicted images look like none "
            "of the training images: the model's probabilities do not apply to this folder"
        )
    return None


def _kinds(reasons: str | None) -> list[str]:
    """The kinds of a rejection's reasons: ``shorter side``, ``aspect ratio``, ``format``…"""
    kinds = []
    for reason in (reasons or "").split("; "):
        words = reason.split(" ")
        kinds.append(" ".join(words[:2]) if words[0] in {"shorter", "aspect"} else words[0])
    return kinds


def predictions_frame(predictions: list[Prediction]) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in predictions], columns=PREDICTION_COLUMNS)


def frame_to_csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\r\n")  # a "\r" in a name is quoted
    return buffer.getvalue().encode()


# The predictions table's column types in Parquet; in the CSV an empty field is a missing value.
PARQUET_SCHEMA = pa.schema(
    [
        ("source_path", pa.string()),
        ("sha256", pa.string()),
        ("probability_covid", pa.float64()),
        ("predicted_label", pa.string()),
        ("model_version", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("reused", pa.bool_()),
        ("ood_score", pa.float64()),
        ("in_distribution", pa.bool_()),
    ]
)


def merge_tables(
    store: ObjectStore, keys: Iterable[str], csv_key: str, parquet_key: str, preview_rows: int
) -> list[dict[str, str]]:
    """Concatenate the CSV tables at ``keys`` into one CSV at ``csv_key`` and one Parquet file
    at ``parquet_key`` (columns typed by :data:`PARQUET_SCHEMA`); return the first rows.

    The tables are copied through local temporary files, one table in memory at a time (one
    Parquet row group per table), so a run of any size merges in flat memory. CSV values are
    copied as text, a leading formula character escaped (:func:`spreadsheet_cell`); the
    Parquet file keeps the raw values.
    """
    preview: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="cxr-merge-") as folder:
        merged = Path(folder) / "predictions.csv"
        typed = Path(folder) / "predictions.parquet"
        with (
            merged.open("w", newline="", encoding="utf-8") as out,
            pq.ParquetWriter(typed, PARQUET_SCHEMA) as parquet,
        ):
            writer = csv.DictWriter(out, fieldnames=PREDICTION_COLUMNS)
            writer.writeheader()
            for key in keys:
                data = store.get_bytes(key)
                for row in csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")):
                    writer.writerow({name: spreadsheet_cell(v) for name, v in row.items()})
                    if len(preview) < preview_rows:
                        preview.append(row)
                parquet.write_table(_typed_table(data, key))
        store.put_file(csv_key, merged)
        store.put_file(parquet_key, typed)
    return preview


def _typed_table(data: bytes, key: str) -> pa.Table:
    """One chunk's CSV table with :data:`PARQUET_SCHEMA`'s types."""
    options = pa_csv.ConvertOptions(
        column_types=PARQUET_SCHEMA,
        include_columns=PARQUET_SCHEMA.names,
        strings_can_be_null=True,
        true_values=["True"],
        false_values=["False"],
    )
    try:
        table = pa_csv.read_csv(io.BytesIO(data), convert_options=options)
    except pa.ArrowException as error:
        raise ScoringError(f"{key}: not a predictions table: {error}") from error
    return table.cast(PARQUET_SCHEMA)
