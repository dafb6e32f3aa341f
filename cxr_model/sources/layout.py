"""The self-sorted folder layout shared by local folders and S3 prefixes.

``[Train|Val|...]/<class>/<file>``: with split folders at the top, each split's subfolders are
the classes; without, the top folders are. An optional ``manifest.csv`` at the root maps files
(``file``, relative to the root) to patient ids (``patient_id``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from cxr_model.sources.reading import read_file_capped
from cxr_model.sources.records import SourceError

SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}
IGNORED_FILES = {"manifest.csv", "readme.txt", "readme.md", ".ds_store"}
PATIENT_MANIFEST = "manifest.csv"


def is_split_folder(name: str) -> bool:
    """Whether a top folder named ``name`` is a split (``Train``, ``val``, ...), not a class."""
    return name.lower() in SPLIT_FOLDERS


def is_ignored(name: str) -> bool:
    """Whether a file named ``name`` is the layout's own (a manifest, a readme), not an image."""
    return name.lower() in IGNORED_FILES


def class_folder(parts: Sequence[str], split_layout: bool) -> str | None:
    """The class folder of a file at ``parts`` (relative to the root), or None when the file
    is not where the layout keeps images."""
    if split_layout:
        return parts[1] if len(parts) >= 3 and is_split_folder(parts[0]) else None
    return parts[0] if len(parts) >= 2 else None


def has_split_files(files: Iterable[Sequence[str]]) -> bool:
    """Whether any file (as ``parts`` relative to the root) lies in a split's class folder."""
    return any(class_folder(parts, split_layout=True) is not None for parts in files)


def no_class_folders(where: str) -> SourceError:
    return SourceError(
        f"{where} has no class folders: expected covid/ and normal/ "
        "(optionally under Train/ and Val/)"
    )


def patient_map(handle: Iterable[str]) -> dict[str, str]:
    """``file`` → ``patient_id`` from a patient manifest's rows (rows missing either left out)."""
    return {
        row["file"]: row["patient_id"]
        for row in csv.DictReader(handle)
        if row.get("file") and row.get("patient_id")
    }


def patient_ids(root: Path) -> dict[str, str]:
    """The patient ids of a local folder's ``manifest.csv``; none when it has none."""
    manifest = root / PATIENT_MANIFEST
    if not manifest.exists() and not manifest.is_symlink():
        return {}
    try:
        text = read_file_capped(manifest).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read the patient ids in {manifest}: {exc}") from exc
    return patient_map(io.StringIO(text, newline=""))
