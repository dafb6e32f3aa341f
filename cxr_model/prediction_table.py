"""The predictions table: one row per input file, its counts, and the merged CSV and Parquet.

Each file gets one row: its path, sha256, the covid probability, the predicted label, the model
version, the status, and whether the probability was reused from an earlier scoring. A run
writes each chunk's rows as the chunk finishes, then concatenates them (:func:`merge_tables`),
one chunk in memory at a time, into a CSV (cells escaped for spreadsheets) and a Parquet file
with typed columns.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cxr_model.safe_text import spreadsheet_cell

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cxr_model.storage import ObjectStore

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


class ScoringError(ValueError):
    """Scoring cannot go on: the input location cannot be listed at all (missing folder, empty
    prefix), or a chunk's stored table is not a predictions table."""


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
