"""Batch scoring: every file under a folder or S3 prefix, in chunks, into one predictions table.

Files are read in chunks (:func:`score_chunk`): each file is read once and hashed, and all the
chunk's sha256 are looked up at once in the version's :class:`~cxr_model.score_store.ScoreStore`.
Found: the stored probability is used (``reused=True``). Not found: the image is decoded and
predicted, and the chunk's new scores stored before it returns. Files with the same content at
several paths are predicted once per chunk, and every path gets its row; the label is applied
from the probability in each run, so a threshold override reuses stored scores as well.

A file that cannot be read or decoded gets ``status=error`` and the reason, in every run (a fixed
decoder may read it next time); it never stops the run, and no file is skipped. A run killed
halfway has stored the scores of its finished chunks: rerunning it predicts only the images
without a stored score. ``only_new`` (the inbox): rows whose content another run scored are left
out and counted as ``skipped``.

Within a chunk, files are read, hashed and decoded in threads while the model predicts whole
batches (Pillow and the runtimes release the GIL), so the model does not wait for the files.
The rows, counts and merged tables are :mod:`cxr_model.prediction_table`; the model runners
:mod:`cxr_model.predictors`.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
from botocore.exceptions import ClientError

from cxr_model.image_checks import ImageChecks, scoring_facts
from cxr_model.images import (
    LEGACY_PREPROCESSING,
    ImageError,
    Preprocessing,
    image_header,
    to_model_input,
)
from cxr_model.memory import ByteBudget
from cxr_model.prediction_table import (
    COVID,
    ERROR,
    FOLDER_OOD_SHARE,
    NORMAL,
    OK,
    OUT_OF_DISTRIBUTION,
    PARQUET_SCHEMA,
    PREDICTION_COLUMNS,
    REJECTED,
    SKIP_REASON,
    SKIPPED,
    STATUSES,
    Prediction,
    ScoreSummary,
    ScoringError,
    distribution_warning,
    frame_to_csv_bytes,
    merge_tables,
    predictions_frame,
    summarise,
)
from cxr_model.predictors import (
    ONNX_BATCH,
    PREDICT_BATCH,
    Predict,
    RunBatch,
    batch_predictor,
    keras_predictor,
    onnx_predictor,
    padded_size,
)
from cxr_model.score_store import (
    BATCH_TOKEN_BYTES,
    BATCHES_FOLDER,
    SCORES_PREFIX,
    ScoreBatch,
    ScoreStore,
    StoredScore,
)
from cxr_model.sources import (
    local_entries,
    open_input,
    read_capped,
    read_failure,
    read_input,
    sha256_capped,
)
from cxr_model.storage import ObjectStore, parse_s3_uri
from cxr_model.windowed import in_order

__all__ = [
    "BATCHES_FOLDER",
    "BATCH_TOKEN_BYTES",
    "BYTES_IN_FLIGHT",
    "COVID",
    "ChunkScores",
    "DECODE_AHEAD",
    "DECODE_THREADS",
    "ERROR",
    "FOLDER_OOD_SHARE",
    "MAX_BYTES_IN_FLIGHT",
    "NORMAL",
    "OK",
    "ONNX_BATCH",
    "OUT_OF_DISTRIBUTION",
    "PARALLEL_READS",
    "PARQUET_SCHEMA",
    "PREDICTION_COLUMNS",
    "PREDICT_BATCH",
    "Predict",
    "Prediction",
    "REJECTED",
    "RunBatch",
    "SCORES_PREFIX",
    "SKIPPED",
    "SKIP_REASON",
    "STATUSES",
    "ScoreBatch",
    "ScoreStore",
    "ScoreSummary",
    "ScoringError",
    "StoredScore",
    "batch_predictor",
    "chunked",
    "distribution_warning",
    "frame_to_csv_bytes",
    "keras_predictor",
    "list_inputs",
    "merge_tables",
    "onnx_predictor",
    "open_input",
    "padded_size",
    "predictions_frame",
    "read_input",
    "score_chunk",
    "summarise",
]

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


@dataclass(frozen=True)
class ChunkScores:
    """The rows of one chunk and its summary."""

    predictions: list[Prediction]
    summary: ScoreSummary


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

    def decode(file: _File) -> tuple[str, np.ndarray | str | _Rejected]:
        return file.sha256, _decode(file, store, image_size, preprocessing, checks)

    def submitted() -> Iterator[Future[tuple[str, np.ndarray | str | _Rejected]]]:
        while new:
            yield pool.submit(decode, new.popleft())

    return in_order(submitted(), DECODE_AHEAD)


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
