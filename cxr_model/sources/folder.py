"""``folder:<path>``: a self-sorted local folder of class subfolders (see :mod:`.layout`).

Symbolic links where split or class folders belong are never followed (``Train/covid ->
/elsewhere`` would read files from outside); they, and links, FIFOs or devices among the images,
each get a record whose ``read`` says why it is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cxr_model.sources.layout import is_ignored, is_split_folder, no_class_folders, patient_ids
from cxr_model.sources.reading import file_fingerprint, file_reader, local_entries
from cxr_model.sources.records import SourceError, SourceRecord


@dataclass(frozen=True)
class FolderSource:
    """A self-sorted folder of class subfolders, optionally under Train/Val folders."""

    root: Path

    @property
    def name(self) -> str:
        return f"folder:{self.root}"

    def _layout(self) -> tuple[list[Path], list[Path]]:
        """The class folders, and the symbolic links found where split or class folders belong."""
        links: list[Path] = []

        def folders(parent: Path) -> list[Path]:
            found = []
            for path in sorted(parent.iterdir()):
                if path.is_symlink():
                    links.append(path)
                elif path.is_dir():
                    found.append(path)
            return found

        children = folders(self.root)
        split_dirs = [p for p in children if is_split_folder(p.name)]
        if split_dirs:
            return [c for s in split_dirs for c in folders(s)], links
        return children, links

    def _record(self, path: Path, label: str | None, patients: Mapping[str, str]) -> SourceRecord:
        relative = path.relative_to(self.root).as_posix()
        return SourceRecord(
            source=self.name,
            original_path=relative,
            label=label,
            patient_id=patients.get(relative),
            read=file_reader(path),
            fingerprint=file_fingerprint(path),
        )

    def records(self) -> Iterator[SourceRecord]:
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a folder")
        patients = patient_ids(self.root)
        class_dirs, links = self._layout()
        if not class_dirs and not links:
            raise no_class_folders(f"source folder {self.root}")
        # A link among the split and class folders gets a row (its read says why), unlabelled.
        for link in links:
            yield self._record(link, None, patients)
        for class_dir in class_dirs:
            for path in local_entries(class_dir):
                # Links, FIFOs and other non-regular entries are listed; their read refuses them.
                if not is_ignored(path.name) or path.is_symlink():
                    yield self._record(path, class_dir.name.lower(), patients)
