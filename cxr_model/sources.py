"""Image sources: where x-rays come from, each yielding the same kind of record.

A source is named by a spec string (on the CLI and as a flow parameter):

- ``folder:<path>`` or a bare path: a self-sorted folder, either the study's layout
  ``Train|Val/{covid,normal}/...`` or a flat ``{covid,normal}/...``. Labels come from the class
  folder names (case-insensitive). An optional ``manifest.csv`` at the root with columns
  ``file,patient_id`` gives patient ids; without one each image is its own patient.
- ``manifest:<csv>``: a CSV with ``file,label[,patient_id]`` where ``file`` is relative to the
  CSV's folder (or absolute).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}
IGNORED_FILES = {"manifest.csv", "readme.txt", "readme.md", ".ds_store"}


class SourceError(ValueError):
    """A source cannot be read at all (missing folder, bad spec); the message says which."""


@dataclass(frozen=True)
class SourceRecord:
    """One image as a source offers it; ``read`` fetches its bytes."""

    source: str
    original_path: str
    label: str | None
    patient_id: str | None
    read: Callable[[], bytes] = field(repr=False, compare=False)
    metadata: Mapping[str, str] = field(default_factory=dict)  # view, license, url, ...


def _patient_ids(root: Path) -> dict[str, str]:
    manifest = root / "manifest.csv"
    if not manifest.exists():
        return {}
    with manifest.open(newline="") as handle:
        return {
            row["file"]: row["patient_id"]
            for row in csv.DictReader(handle)
            if row.get("file") and row.get("patient_id")
        }


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


@dataclass(frozen=True)
class FolderSource:
    """A self-sorted folder of class subfolders, optionally under Train/Val folders."""

    root: Path

    @property
    def name(self) -> str:
        return f"folder:{self.root}"

    def _class_dirs(self) -> list[Path]:
        children = [p for p in sorted(self.root.iterdir()) if p.is_dir() and not p.is_symlink()]
        split_dirs = [p for p in children if p.name.lower() in SPLIT_FOLDERS]
        if split_dirs:
            return [c for s in split_dirs for c in sorted(s.iterdir()) if c.is_dir()]
        return children

    def records(self) -> Iterator[SourceRecord]:
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a folder")
        patients = _patient_ids(self.root)
        class_dirs = self._class_dirs()
        if not class_dirs:
            raise SourceError(
                f"source folder {self.root} has no class folders: expected covid/ and normal/ "
                "(optionally under Train/ and Val/)"
            )
        for class_dir in class_dirs:
            for path in sorted(class_dir.rglob("*")):
                # Symlinks are not followed: a source folder may not reach outside itself.
                if path.is_symlink() or not path.is_file() or path.name.lower() in IGNORED_FILES:
                    continue
                relative = path.relative_to(self.root).as_posix()
                yield SourceRecord(
                    source=self.name,
                    original_path=relative,
                    label=class_dir.name.lower(),
                    patient_id=patients.get(relative),
                    read=_file_reader(path),
                )


@dataclass(frozen=True)
class ManifestSource:
    """A CSV listing local image files with their labels and, optionally, patient ids."""

    csv_path: Path

    @property
    def name(self) -> str:
        return f"manifest:{self.csv_path}"

    def records(self) -> Iterator[SourceRecord]:
        if not self.csv_path.is_file():
            raise SourceError(f"manifest {self.csv_path} does not exist")
        base = self.csv_path.parent
        with self.csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"file", "label"} - set(reader.fieldnames or [])
            if missing:
                raise SourceError(f"manifest {self.csv_path} lacks column(s) {sorted(missing)}")
            rows = list(reader)
        for row in rows:
            path = Path(row["file"])
            yield SourceRecord(
                source=self.name,
                original_path=row["file"],
                label=(row.get("label") or "").strip().lower() or None,
                patient_id=(row.get("patient_id") or "").strip() or None,
                read=_file_reader(path if path.is_absolute() else base / path),
            )


Source = FolderSource | ManifestSource


def parse_source(spec: str) -> Source:
    """Turn a source spec (see the module docstring) into a source."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "folder":
        return FolderSource(Path(rest).expanduser().resolve())
    if sep and kind == "manifest":
        return ManifestSource(Path(rest).expanduser().resolve())
    if sep and len(kind) > 1 and kind not in ("file",):
        raise SourceError(
            f"unknown source kind {kind!r} in {spec!r}: use folder:<path> or manifest:<csv>"
        )
    return FolderSource(Path(spec).expanduser().resolve())
