"""``manifest:<csv>``: a CSV listing image files with their labels.

Each row's ``file`` (or ``uri``) is a local path (relative to the CSV's folder, or absolute), an
``http(s)://`` URL or an ``s3://bucket/key`` URI (read through the object store). A local path is
read only under the CSV's folder or a ``manifest_roots`` folder, never under /proc, /sys, /dev or
cxr's state folder, so a manifest cannot make ingest read what it should not.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cxr_model.config import get_settings
from cxr_model.sources.http import url_fingerprint, url_reader
from cxr_model.sources.reading import file_fingerprint, file_reader, object_reader
from cxr_model.sources.records import RefusedFile, SourceError, SourceRecord, failing_reader
from cxr_model.sources.s3 import split_s3_uri, store_for

if TYPE_CHECKING:
    from cxr_model.storage import ObjectStore

_MANIFEST_CORE = {"file", "uri", "label", "patient_id", "source"}
ALWAYS_REFUSED = (Path("/proc"), Path("/sys"), Path("/dev"))
"""Folders no manifest row may read from, whatever ``manifest_roots`` allows."""


@dataclass(frozen=True)
class ManifestSource:
    """A CSV listing image files (local paths, http(s) URLs or s3:// URIs) with their labels."""

    csv_path: Path
    store: ObjectStore | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"manifest:{self.csv_path}"

    def _reader(
        self, location: str, base: Path
    ) -> tuple[Callable[[], bytes], dict[str, str], str | Callable[[], str | None] | None]:
        """The record's reader, extra metadata and fingerprint."""
        scheme = urlsplit(location).scheme.lower()
        if scheme in ("http", "https"):
            return url_reader(location), {"url": location}, url_fingerprint(location)
        if scheme == "s3":
            if self.store is None:
                raise SourceError(
                    f"manifest {self.csv_path} lists {location} but no object store was given"
                )
            bucket, key = split_s3_uri(location)
            return object_reader(store_for(self.store, bucket), key), {"url": location}, None
        path = Path(location)
        path = path if path.is_absolute() else base / path
        resolved = path.resolve()  # ``..`` and links resolved, so that neither leads outside
        refusal = self._refusal(resolved)
        if refusal is not None:
            return failing_reader(RefusedFile(location, refusal)), {}, None
        return file_reader(resolved), {}, file_fingerprint(resolved)

    def _refusal(self, resolved: Path) -> str | None:
        """Why a (resolved) local path in the manifest must not be read, or None when it may be:
        only files under the manifest's own folder (or a ``manifest_roots`` folder) may be, never
        any under /proc, /sys, /dev or cxr's state folder."""
        settings = get_settings()
        never = [*ALWAYS_REFUSED, settings.state_dir.expanduser().resolve()]
        if any(resolved.is_relative_to(folder) for folder in never):
            return "a system or cxr state path; manifests may not name it"
        allowed = [self.csv_path.parent.resolve()]
        allowed += [root.expanduser().resolve() for root in settings.manifest_roots]
        if not any(resolved.is_relative_to(folder) for folder in allowed):
            return (
                "outside the manifest's folder (add its folder to CXR_MANIFEST_ROOTS to allow it)"
            )
        return None

    def records(self) -> Iterator[SourceRecord]:
        if not self.csv_path.is_file():
            raise SourceError(f"manifest {self.csv_path} does not exist")
        base = self.csv_path.parent
        with self.csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            missing = {"label"} - columns
            if not columns & {"file", "uri"}:
                missing.add("file (or uri)")
            if missing:
                raise SourceError(f"manifest {self.csv_path} lacks column(s) {sorted(missing)}")
            rows = list(reader)
        for row in rows:
            location = (row.get("uri") or "").strip() or (row.get("file") or "").strip()
            if not location:
                continue  # a blank line's worth of nothing: no file named
            read, extra, fingerprint = self._reader(location, base)
            metadata = {
                k: v.strip()
                for k, v in row.items()
                if k and k not in _MANIFEST_CORE and isinstance(v, str) and v.strip()
            }
            yield SourceRecord(
                source=(row.get("source") or "").strip() or self.name,
                original_path=location,
                label=(row.get("label") or "").strip().lower() or None,
                patient_id=(row.get("patient_id") or "").strip() or None,
                read=read,
                metadata={**metadata, **extra},
                fingerprint=fingerprint,
            )
