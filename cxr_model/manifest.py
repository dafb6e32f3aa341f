"""Manifests: the tables that describe which images a run works with.

- The *ingest manifest* has one row per source file: ``key`` names the file (source + path, unique
  per row), with its label and patient and ``raw_key``, the content address of its bytes in the raw
  store (``raw/sha256/ab/abcdef...``); two files with the same bytes share one raw object.
- The *image manifest* adds what Pillow found in each file (format, mode, size, decodable, error)
  and marks repeated content; it is what the data-quality suites validate.

Manifests are CSV objects in the store; only their keys cross task boundaries.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pandas as pd

from cxr_model.images import inspect_image
from cxr_model.sources import SourceRecord
from cxr_model.storage import AlreadyExists, ObjectStore

RAW_PREFIX = "raw/sha256"
INGEST_COLUMNS = [
    "key",
    "raw_key",
    "sha256",
    "label",
    "source",
    "patient_id",
    "original_path",
    "view",
    "license",
    "read_error",
]
# What Pillow and the duplicate check add to each ingest row (the data-quality suites read these).
FACT_COLUMNS = ["format", "mode", "width", "height", "bytes", "decodable", "error", "duplicate_of"]
IMAGE_COLUMNS = INGEST_COLUMNS + FACT_COLUMNS
PARALLEL_IO = 8


def raw_key(sha256: str) -> str:
    """Content address of an image's bytes in the raw store."""
    return f"{RAW_PREFIX}/{sha256[:2]}/{sha256}"


@dataclass(frozen=True)
class IngestedImage:
    """One source file after ingest; ``read_error`` is set when its bytes could not be read."""

    key: str
    raw_key: str
    sha256: str
    label: str | None
    source: str
    patient_id: str | None
    original_path: str
    view: str | None = None
    license: str | None = None
    read_error: str | None = None
    stored_now: bool = False


def ingest_record(store: ObjectStore, record: SourceRecord) -> IngestedImage:
    """Store one record's bytes under their sha256 unless already there (never twice)."""
    meta = dict(
        label=record.label,
        source=record.source,
        patient_id=record.patient_id,
        original_path=record.original_path,
        view=record.metadata.get("view"),
        license=record.metadata.get("license"),
    )
    key = f"{record.source}/{record.original_path}"
    try:
        data = record.read()
    except OSError as exc:
        return IngestedImage(
            key=key, raw_key="", sha256="", read_error=f"cannot read: {exc}", **meta
        )
    sha256 = hashlib.sha256(data).hexdigest()
    content_key = raw_key(sha256)
    stored_now = False
    if not store.exists(content_key):
        try:
            store.put_bytes(
                content_key, data, content_type="application/octet-stream", create_only=True
            )
            stored_now = True
        except AlreadyExists:
            pass  # another run stored the same bytes meanwhile
    return IngestedImage(key=key, raw_key=content_key, sha256=sha256, stored_now=stored_now, **meta)


def ingest(store: ObjectStore, records: Iterable[SourceRecord]) -> list[IngestedImage]:
    """Ingest records with bounded parallelism; the result keeps the records' order."""
    with ThreadPoolExecutor(max_workers=PARALLEL_IO) as pool:
        return list(pool.map(lambda record: ingest_record(store, record), records))


def to_frame(images: Iterable[IngestedImage]) -> pd.DataFrame:
    return pd.DataFrame([asdict(i) for i in images], columns=INGEST_COLUMNS + ["stored_now"])[
        INGEST_COLUMNS
    ]


def content_id(frame: pd.DataFrame, columns: list[str], *extra: str) -> str:
    """A short stable id for a table's content (order-independent) plus extra parameters."""
    rows = sorted(frame[columns].fillna("").astype(str).agg("|".join, axis=1))
    digest = hashlib.sha256("\n".join([*rows, *extra]).encode())
    return digest.hexdigest()[:12]


def write_csv(store: ObjectStore, key: str, frame: pd.DataFrame) -> str:
    store.put_bytes(key, frame.to_csv(index=False).encode(), content_type="text/csv")
    return key


def read_csv(store: ObjectStore, key: str) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(store.get_bytes(key)), dtype=str, keep_default_na=False)
    return frame.replace({"": None})


def describe_images(store: ObjectStore, ingested: pd.DataFrame) -> pd.DataFrame:
    """The image manifest: ingest rows plus Pillow's facts, with repeated content marked."""

    def facts(row: pd.Series) -> dict:
        if pd.notna(row["read_error"]) and row["read_error"]:
            return dict(
                format=None,
                mode=None,
                width=None,
                height=None,
                bytes=0,
                decodable=False,
                error=row["read_error"],
            )
        return asdict(inspect_image(store.get_bytes(row["raw_key"])))

    with ThreadPoolExecutor(max_workers=PARALLEL_IO) as pool:
        described = list(pool.map(facts, (row for _, row in ingested.iterrows())))
    frame = pd.concat([ingested.reset_index(drop=True), pd.DataFrame(described)], axis=1)
    first_key = frame.groupby("sha256")["key"].transform("first")
    repeated = frame["sha256"].astype(bool) & frame["sha256"].duplicated(keep="first")
    frame["duplicate_of"] = None
    frame.loc[repeated, "duplicate_of"] = first_key[repeated]
    for column in ("width", "height", "bytes"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    frame["decodable"] = frame["decodable"].astype(bool)
    return frame[IMAGE_COLUMNS]
