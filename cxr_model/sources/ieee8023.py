"""``ieee8023:``: the ieee8023 covid-chestxray-dataset at a base URL (GitHub raw or a mirror).

``<base>/metadata.csv`` is read and its rows selected by :class:`Ieee8023Filters`; each image is
fetched from ``<base>/<folder>/<filename>``. Names from the metadata are URL-quoted, never used as
local paths; one that could climb out of its folder gets a record whose ``read`` refuses it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from cxr_model.sources.http import fetch_bytes, url_fingerprint, url_reader
from cxr_model.sources.records import FetchError, SourceError, SourceRecord, failing_reader

IEEE8023_BASE_URL = "https://raw.githubusercontent.com/ieee8023/covid-chestxray-dataset/master"
METADATA_COLUMNS = {"patientid", "finding", "view", "modality", "folder", "filename"}


@dataclass(frozen=True)
class Ieee8023Filters:
    """Which metadata.csv rows an ieee8023 source selects (all matches case-insensitive).

    ``findings``: a row is selected if any of its finding's parts (split on ``,`` and ``/``, so
    both ``COVID-19, ARDS`` and ``Pneumonia/Viral/COVID-19`` have the part ``COVID-19``) is one of
    these. ``modalities`` and ``views``: the row's value must be one of these. Frontal views only
    by default (no lateral ``L``, no CT).
    """

    findings: tuple[str, ...] = ("COVID-19",)
    modalities: tuple[str, ...] = ("X-ray",)
    views: tuple[str, ...] = ("PA", "AP", "AP Supine", "AP Erect")

    def selects(self, row: Mapping[str, str]) -> bool:
        findings = {f.lower() for f in self.findings}
        return (
            bool(_finding_parts(row.get("finding") or "") & findings)
            and (row.get("modality") or "").strip().lower() in {m.lower() for m in self.modalities}
            and (row.get("view") or "").strip().lower() in {v.lower() for v in self.views}
        )


def _finding_parts(finding: str) -> set[str]:
    return {part.strip().lower() for part in re.split(r"[,/]", finding) if part.strip()}


def ieee8023_label(finding: str) -> str:
    """``covid`` for a COVID-19 finding, ``normal`` for ``No Finding``, else the finding itself."""
    parts = _finding_parts(finding)
    if "covid-19" in parts:
        return "covid"
    if parts == {"no finding"}:
        return "normal"
    return (re.split(r"[,/]", finding)[-1].strip() or finding).lower()


def _unsafe_name_part(part: str) -> bool:
    return part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part


@dataclass(frozen=True)
class Ieee8023Source:
    """The ieee8023 covid-chestxray-dataset at a base URL (a GitHub raw URL or any mirror)."""

    base_url: str = IEEE8023_BASE_URL
    filters: Ieee8023Filters = Ieee8023Filters()

    @property
    def name(self) -> str:
        return f"ieee8023:{self.base_url.rstrip('/')}"

    def image_url(self, folder: str, filename: str) -> str:
        return f"{self.base_url.rstrip('/')}/{quote(folder, safe='')}/{quote(filename, safe='')}"

    def _metadata_rows(self) -> list[dict[str, str]]:
        url = f"{self.base_url.rstrip('/')}/metadata.csv"
        try:
            data = fetch_bytes(url)
        except FetchError as exc:
            raise SourceError(
                f"cannot read ieee8023 metadata {url}: {exc.reason}"
                + (f" (HTTP {exc.status})" if exc.status else "")
            ) from exc
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace")))
        missing = METADATA_COLUMNS - set(reader.fieldnames or [])
        if missing:
            raise SourceError(f"ieee8023 metadata {url} lacks column(s) {sorted(missing)}")
        return list(reader)

    def records(self) -> Iterator[SourceRecord]:
        seen: set[tuple[str, str]] = set()
        for row in self._metadata_rows():
            if not self.filters.selects(row):
                continue
            folder = (row.get("folder") or "").strip()
            filename = (row.get("filename") or "").strip()
            if (folder, filename) in seen:
                continue  # the same image listed twice: one record
            seen.add((folder, filename))
            finding = (row.get("finding") or "").strip()
            metadata = {
                "view": (row.get("view") or "").strip(),
                "license": (row.get("license") or "").strip(),
                "finding": finding,
                "modality": (row.get("modality") or "").strip(),
                "article_url": (row.get("url") or "").strip(),
                "doi": (row.get("doi") or "").strip(),
            }
            if _unsafe_name_part(folder) or _unsafe_name_part(filename):
                url = f"{self.base_url.rstrip('/')}/{folder}/{filename}"
                read = failing_reader(FetchError(url, "unsafe file name in metadata.csv"))
                fingerprint = None
            else:
                url = self.image_url(folder, filename)
                read = url_reader(url)
                fingerprint = url_fingerprint(url)
            metadata["url"] = url
            yield SourceRecord(
                source=self.name,
                original_path=f"{folder}/{filename}",
                label=ieee8023_label(finding),
                patient_id=(row.get("patientid") or "").strip() or None,
                read=read,
                metadata={k: v for k, v in metadata.items() if v},
                fingerprint=fingerprint,
            )
