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
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pandas as pd

from cxr_model.images import inspect_image
from cxr_model.sources import SourceRecord
from cxr_model.storage import AlreadyExists, ObjectStore

RAW_PREFIX = "raw/sha256"
QUARANTINE_PREFIX = "quarantine"
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
    """The ingest manifest, plus ``stored_now`` (whether this run stored the bytes)."""
    return pd.DataFrame([asdict(i) for i in images], columns=INGEST_COLUMNS + ["stored_now"])


def ingest_summary(frame: pd.DataFrame, limit: int = 50) -> str:
    """Markdown: files per source and label, how many were new, and every file not fetched."""
    failed = frame["read_error"].notna() & (frame["read_error"] != "")
    table = (
        frame.assign(label=frame["label"].fillna("(none)"), failed=failed, new=frame["stored_now"])
        .groupby("source")
        .agg(files=("key", "size"), new=("new", "sum"), not_fetched=("failed", "sum"))
    )
    labels = pd.crosstab(frame["source"], frame["label"].fillna("(none)"))
    table = table.join(labels)
    lines = [
        f"### Images ingested: {len(frame)} files, {int(frame['stored_now'].sum())} new, "
        f"{int(failed.sum())} not fetched",
        "",
        "| source | " + " | ".join(table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
    ]
    lines += [
        f"| {source} | " + " | ".join(str(int(v)) for v in row) + " |"
        for source, row in table.iterrows()
    ]
    if failed.any():
        lines += [
            "",
            f"**Not fetched ({int(failed.sum())})** — kept in the manifest and reported:",
            "",
        ]
        rows = frame[failed].head(limit)
        lines += [f"- `{r.original_path}` ({r.source}): {r.read_error}" for r in rows.itertuples()]
        if failed.sum() > limit:
            lines.append(f"- … and {int(failed.sum()) - limit} more (see the ingest manifest)")
    return "\n".join(lines)


def quarantine(
    store: ObjectStore, images: pd.DataFrame, reasons: dict[str, list[str]]
) -> list[str]:
    """Keep each rejected file under ``quarantine/<sha256>`` with a JSON note of why.

    ``reasons`` maps manifest keys to their rejection reasons. Files that could not be read have
    no bytes to keep; their note is written under ``quarantine/unread/``. Returns the note keys.
    """
    notes = []
    rows = images.set_index("key", drop=False)
    for key, why in reasons.items():
        row = rows.loc[key]
        fields = ("key", "source", "original_path", "label", "sha256")
        note = {f: None if pd.isna(row[f]) else row[f] for f in fields} | {"reasons": why}
        if row["raw_key"] and pd.notna(row["raw_key"]):
            store.copy(row["raw_key"], f"{QUARANTINE_PREFIX}/{row['sha256']}")
            note_key = f"{QUARANTINE_PREFIX}/{row['sha256']}.json"
        else:
            note_key = (
                f"{QUARANTINE_PREFIX}/unread/{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
            )
        store.put_bytes(note_key, json.dumps(note, indent=2, default=str).encode())
        notes.append(note_key)
    return notes


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
