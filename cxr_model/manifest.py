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
import threading
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from cxr_model import images as imaging
from cxr_model.markdown import markdown_table
from cxr_model.safe_text import spreadsheet_cell, spreadsheet_value
from cxr_model.sources import SourceRecord, read_failure
from cxr_model.storage import AlreadyExists, ObjectStore
from cxr_model.windowed import in_order

RAW_PREFIX = "raw/sha256"
QUARANTINE_PREFIX = "quarantine"
INDEX_PREFIX = "ingest-index"
INDEX_SAVE_EVERY = 200
FACTS_VERSION = 2  # bump when inspect_image's facts change (2: 256-bit dhash)
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
FACT_COLUMNS = [
    "format",
    "mode",
    "width",
    "height",
    "bytes",
    "decodable",
    "error",
    "dhash",
    "duplicate_of",
]
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
    facts: dict = field(default_factory=dict)  # what inspect_image found in the bytes


def _record_fields(record: SourceRecord) -> dict[str, str | None]:
    return dict(
        label=record.label,
        source=record.source,
        patient_id=record.patient_id,
        original_path=record.original_path,
        view=record.metadata.get("view"),
        license=record.metadata.get("license"),
    )


def ingest_record(
    store: ObjectStore, record: SourceRecord, already_stored: Collection[str] = frozenset()
) -> IngestedImage:
    """Store one record's bytes under their sha256 unless already there (never twice).

    ``already_stored`` holds raw keys known to exist (from one listing), so no request is spent
    asking the store about each file.
    """
    meta = _record_fields(record)
    key = f"{record.source}/{record.original_path}"
    try:
        data = record.read()
    except OSError as exc:
        error = read_failure(exc)
        return IngestedImage(
            key=key, raw_key="", sha256="", read_error=error, facts=unread_facts(error), **meta
        )
    sha256 = hashlib.sha256(data).hexdigest()
    content_key = raw_key(sha256)
    stored_now = False
    if content_key not in already_stored:
        try:
            store.put_bytes(
                content_key, data, content_type="application/octet-stream", create_only=True
            )
            stored_now = True
        except AlreadyExists:
            pass  # stored before (or by another run meanwhile)
    return IngestedImage(
        key=key,
        raw_key=content_key,
        sha256=sha256,
        stored_now=stored_now,
        facts=imaging.inspect_facts(data),
        **meta,
    )


class IngestIndex:
    """What earlier runs found at each path of one source: fingerprint, sha256 and facts.

    A record whose source gives a cheap fingerprint (size and mtime of a local file, a zip
    member's CRC, an S3 ETag) that matches the index, and whose bytes are still in the raw store,
    is neither read nor decoded again: re-running unchanged sources fetches nothing. The index is
    saved every few hundred files, so an interrupted run resumes where it stopped.
    """

    def __init__(self, store: ObjectStore, source: str, stored: set[str]):
        self.store = store
        self.stored = stored
        self.key = f"{INDEX_PREFIX}/{hashlib.sha256(source.encode()).hexdigest()[:24]}.json"
        found = store.get_with_etag(self.key)
        self.entries: dict[str, dict] = json.loads(found[0])["entries"] if found else {}
        self.source = source
        self.changed = 0

    def known(self, path: str, fingerprint: str | None) -> dict | None:
        """The index entry of an unchanged file whose bytes are still stored, else None."""
        entry = self.entries.get(path)
        if not fingerprint or not entry or entry["fingerprint"] != fingerprint:
            return None
        if entry.get("facts_version") != FACTS_VERSION:
            return None  # inspected by older code: inspect again
        return entry if raw_key(entry["sha256"]) in self.stored else None

    def remember(self, path: str, fingerprint: str | None, image: IngestedImage) -> None:
        if fingerprint:
            self.entries[path] = {
                "fingerprint": fingerprint,
                "sha256": image.sha256,
                "facts": image.facts,
                "facts_version": FACTS_VERSION,
            }
            self.changed += 1

    def save(self) -> None:
        if self.changed:
            body = {"source": self.source, "entries": self.entries}
            self.store.put_bytes(
                self.key, json.dumps(body).encode(), content_type="application/json"
            )
            self.changed = 0


def ingest(store: ObjectStore, records: Iterable[SourceRecord]) -> list[IngestedImage]:
    """Ingest records with bounded parallelism, skipping unchanged ones; keeps the input order."""
    indexes: dict[str, IngestIndex] = {}
    lock = threading.Lock()
    stored: set[str] = set()

    def index_for(source: str) -> IngestIndex:
        with lock:
            if not indexes:  # one listing answers "still stored?" for every known file
                stored.update(store.list_keys(RAW_PREFIX + "/"))
            if source not in indexes:
                indexes[source] = IngestIndex(store, source, stored)
            return indexes[source]

    def one(record: SourceRecord) -> IngestedImage:
        index = index_for(record.source)
        fingerprint = record.fingerprint() if callable(record.fingerprint) else record.fingerprint
        entry = index.known(record.original_path, fingerprint)
        if entry:
            return IngestedImage(
                key=f"{record.source}/{record.original_path}",
                raw_key=raw_key(entry["sha256"]),
                sha256=entry["sha256"],
                facts=entry["facts"],
                **_record_fields(record),
            )
        image = ingest_record(store, record, stored)
        if not image.read_error:
            with lock:
                index.remember(record.original_path, fingerprint, image)
                if index.changed >= INDEX_SAVE_EVERY:
                    index.save()
        return image

    with ThreadPoolExecutor(max_workers=PARALLEL_IO) as pool:
        images = list(in_order((pool.submit(one, r) for r in records), PARALLEL_IO * 4))
    for index in indexes.values():
        index.save()
    return images


def unread_facts(error: str) -> dict:
    """Facts of a file whose bytes could not be fetched: not decodable, for that reason."""
    return dict(
        format=None,
        mode=None,
        width=None,
        height=None,
        bytes=0,
        decodable=False,
        error=error,
        dhash=None,
    )


def to_frame(images: Iterable[IngestedImage]) -> pd.DataFrame:
    """The ingest manifest with each file's facts, plus ``stored_now`` (stored by this run)."""
    rows = [{**asdict(i), **i.facts} for i in images]
    columns = [c for c in IMAGE_COLUMNS if c != "duplicate_of"] + ["stored_now"]
    return pd.DataFrame(rows, columns=columns)


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
        *markdown_table(
            ["source", *table.columns],
            ([source, *(int(v) for v in row)] for source, row in table.iterrows()),
        ),
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
    """Keep each rejected image under ``quarantine/<sha256>`` with a JSON note of why.

    ``reasons`` maps manifest keys to their rejection reasons. Bytes are kept only for a file in
    one of the accepted image formats (a truncated PNG, say): the note of anything else (text, an
    unsupported format, an empty file) says why, without its bytes, so whatever a file held that
    was not an x-ray is not copied further. Files that could not be read have no bytes to keep;
    their note is written under ``quarantine/unread/``. Returns the note keys.
    """
    notes = []
    rows = images.set_index("key", drop=False)
    for key, why in reasons.items():
        row = rows.loc[key]
        fields = ("key", "source", "original_path", "label", "sha256")
        note = {f: None if pd.isna(row[f]) else row[f] for f in fields} | {"reasons": why}
        if row["raw_key"] and pd.notna(row["raw_key"]):
            keep = row["format"] in imaging.SUPPORTED_FORMATS
            if keep:
                store.copy(row["raw_key"], f"{QUARANTINE_PREFIX}/{row['sha256']}")
            note["bytes_kept"] = bool(keep)
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
    """``frame`` as a CSV a person can open in a spreadsheet: no text cell runs as a formula."""
    # CRLF rows (RFC 4180): a value with a carriage return is then quoted, not a row break
    table = _text_cells(frame, spreadsheet_cell).to_csv(index=False, lineterminator="\r\n")
    store.put_bytes(key, table.encode(), content_type="text/csv")
    return key


def read_csv(store: ObjectStore, key: str) -> pd.DataFrame:
    """A table written by :func:`write_csv`, all text, with its raw values (empty: None)."""
    frame = pd.read_csv(io.BytesIO(store.get_bytes(key)), dtype=str, keep_default_na=False)
    return _text_cells(frame.replace({"": None}), spreadsheet_value)


def _text_cells(frame: pd.DataFrame, change: Callable[[Any], Any]) -> pd.DataFrame:
    """A copy of ``frame`` with ``change`` applied to each cell of its non-numeric columns."""
    changed = frame.copy()
    for column in changed.columns:
        values = changed[column]
        if not pd.api.types.is_numeric_dtype(values):  # same dtype back: None stays None
            changed[column] = pd.Series(map(change, values), index=values.index, dtype=values.dtype)
    return changed


def describe_images(ingested: pd.DataFrame) -> pd.DataFrame:
    """The image manifest: ingest rows with typed facts, and repeated content marked."""
    frame = ingested.reset_index(drop=True).copy()
    first_key = frame.groupby("sha256")["key"].transform("first")
    has_content = frame["sha256"].notna() & (frame["sha256"] != "")
    repeated = has_content & frame["sha256"].duplicated(keep="first")
    frame["duplicate_of"] = None
    frame.loc[repeated, "duplicate_of"] = first_key[repeated]
    for column in ("width", "height", "bytes"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    frame["decodable"] = frame["decodable"].map(lambda v: str(v) == "True").astype(bool)
    return frame[IMAGE_COLUMNS]
