"""``kaggle:``: Kaggle's chest-xray-pneumonia dataset, from a folder, a zip or the Kaggle API.

The layout is ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*``. NORMAL is label ``normal``;
PNEUMONIA is left out unless asked for (label ``pneumonia``, which the data-quality suite
rejects). Patient ids come from the file names. A zip is read member by member from one shared
handle and never extracted; an unsafe entry (a link, an absolute path, ``..``) gets a record whose
``read`` refuses it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr_model.sources.http import fetch_to_file
from cxr_model.sources.layout import is_ignored
from cxr_model.sources.reading import (
    file_cap,
    file_fingerprint,
    file_reader,
    local_entries,
    read_capped,
    too_large,
)
from cxr_model.sources.records import FetchError, SourceError, SourceRecord, failing_reader

KAGGLE_API_URL = "https://www.kaggle.com/api/v1"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_LICENSE = "CC BY 4.0"
KAGGLE_SPLITS = {"train", "val", "test"}
KAGGLE_CLASSES = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}

_KAGGLE_PATIENT_PATTERNS = (
    # person1_bacteria_1.jpeg, person1000_virus_1681.jpeg -> person1, person1000
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$", re.IGNORECASE),
    # IM-0115-0001.jpeg, IM-0505-0001-0002.jpeg -> IM-0115, IM-0505;
    # NORMAL2-IM-1427-0001.jpeg -> NORMAL2-IM-1427 (a separate numbering from IM-)
    re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE),
)


def kaggle_patient_id(filename: str) -> str | None:
    """Patient id from a Kaggle chest-xray-pneumonia file name, or None when it has no pattern.

    ``person<N>_{bacteria,virus}_<M>`` → ``person<N>``; ``IM-<N>-<M>[-<K>]`` → ``IM-<N>``;
    ``NORMAL2-IM-<N>-<M>`` → ``NORMAL2-IM-<N>``. Ids are not prefixed with the split: the same
    number in train and test is taken to be the same patient (the safe side for leakage).
    """
    stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    for pattern in _KAGGLE_PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return None


@dataclass(frozen=True)
class _KaggleFile:
    name: str  # the entry name / relative path as found
    relative: str  # split/CLASS/file, relative to the layout root
    split: str
    class_folder: str


def _kaggle_layout(names: Iterable[str]) -> list[_KaggleFile]:
    """Files in ``[<root>/]{train,val,test}/{NORMAL,PNEUMONIA}/<file>`` under the shallowest root.

    The shallowest root wins so that nested copies (Kaggle's zip holds ``chest_xray/chest_xray/...``
    next to ``chest_xray/train/...``) and ``__MACOSX`` folders are not read twice.
    """
    found: list[tuple[int, _KaggleFile]] = []
    for name in names:
        parts = name.split("/")
        base = parts[-1]
        if (
            len(parts) < 3
            or "__MACOSX" in parts
            or base.startswith("._")
            or is_ignored(base)
            or parts[-3].lower() not in KAGGLE_SPLITS
            or parts[-2].upper() not in KAGGLE_CLASSES
        ):
            continue
        found.append(
            (
                len(parts),
                _KaggleFile(
                    name=name,
                    relative="/".join(parts[-3:]),
                    split=parts[-3].lower(),
                    class_folder=parts[-2].upper(),
                ),
            )
        )
    if not found:
        return []
    shallowest = min(depth for depth, _ in found)
    return [f for depth, f in found if depth == shallowest]


def _unsafe_zip_entry(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry must not be read (as a reason string), or None when it is fine."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link entry"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path entry"
    if ".." in re.split(r"[/\\]", name):
        return "path with '..' entry"
    if "\x00" in name:
        return "NUL in entry name"
    return None


class _ZipArchive:
    """A zip read member by member from many threads (one shared handle; never extracted)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None

    def _open(self) -> zipfile.ZipFile:
        with self._lock:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return self._zip

    def infos(self) -> list[zipfile.ZipInfo]:
        return self._open().infolist()

    def reader(self, info: zipfile.ZipInfo) -> Callable[[], bytes]:
        where = f"{self.path}!{info.filename}"

        def read() -> bytes:
            cap = file_cap()
            if info.file_size > cap:
                raise too_large(where, info.file_size, cap)
            try:
                with self._open().open(info) as member:
                    return read_capped(member, where, cap)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise FetchError(where, f"cannot read zip member ({exc})") from exc

        return read


def _kaggle_credentials() -> tuple[str, str] | None:
    username, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if username and key:
        return username, key
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    candidates = (
        [Path(config_dir) / "kaggle.json"]
        if config_dir
        else [Path.home() / ".kaggle" / "kaggle.json", Path.home() / ".config/kaggle/kaggle.json"]
    )
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            return str(data["username"]), str(data["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SourceError(
                f"{path} is not a Kaggle credentials file with 'username' and 'key' "
                f"({type(exc).__name__})"
            ) from exc
    return None


@dataclass(frozen=True)
class KaggleSource:
    """Kaggle's chest-xray-pneumonia dataset from a folder or zip, or downloaded with the API.

    ``location`` may be the ``chest_xray`` folder, its parent, or a zip holding either (with any
    extra top-level folders). ``None`` downloads the dataset zip into ``cache_dir`` (default: a
    ``cxr-sources`` folder in the system temp dir) and reuses it on later runs.
    """

    location: Path | None = None
    include_pneumonia: bool = False
    cache_dir: Path | None = None
    dataset: str = KAGGLE_DATASET

    @property
    def name(self) -> str:
        return f"kaggle:{self.location if self.location is not None else self.dataset}"

    def download(self) -> Path:
        """The dataset zip, downloaded with the Kaggle API unless already cached."""
        credentials = _kaggle_credentials()
        if credentials is None:
            raise SourceError(
                "kaggle: without a path downloads the dataset, which needs Kaggle API "
                "credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json (from "
                "kaggle.com → Settings → API → Create New Token) in ~/.kaggle/; or give a "
                "downloaded copy as kaggle:<folder-or-zip>"
            )
        cache = self.cache_dir or Path(tempfile.gettempdir()) / "cxr-sources"
        target = cache / "kaggle" / (self.dataset.replace("/", "__") + ".zip")
        if target.is_file() and zipfile.is_zipfile(target):
            return target
        api = os.environ.get("CXR_KAGGLE_API_URL") or KAGGLE_API_URL
        url = f"{api.rstrip('/')}/datasets/download/{self.dataset}"
        try:
            fetch_to_file(url, target, auth=credentials)
        except FetchError as exc:
            hint = (
                ": check KAGGLE_USERNAME/KAGGLE_KEY (or kaggle.json) and that the account "
                "accepted the dataset's terms"
                if exc.status in (401, 403)
                else ""
            )
            raise SourceError(
                f"cannot download Kaggle dataset {self.dataset}: {exc}{hint}"
            ) from exc
        if not zipfile.is_zipfile(target):
            target.unlink(missing_ok=True)
            raise SourceError(f"the Kaggle download from {url} is not a zip archive")
        return target

    def _record(
        self, file: _KaggleFile, read: Callable[[], bytes], fingerprint: str | None
    ) -> SourceRecord:
        return SourceRecord(
            source=self.name,
            original_path=file.relative,
            label=KAGGLE_CLASSES[file.class_folder],
            patient_id=kaggle_patient_id(file.relative),
            read=read,
            metadata={"split": file.split, "license": KAGGLE_LICENSE},
            fingerprint=fingerprint,
        )

    def _wanted(self, file: _KaggleFile) -> bool:
        return file.class_folder == "NORMAL" or self.include_pneumonia

    def _no_layout(self, where: Path) -> SourceError:
        return SourceError(
            f"{where} has no Kaggle chest-xray-pneumonia files: expected "
            "[chest_xray/]{train,val,test}/{NORMAL,PNEUMONIA}/<image>"
        )

    def _folder_records(self, root: Path) -> Iterator[SourceRecord]:
        # Links (to files or folders) are listed, never followed: their read refuses them.
        names = [path.relative_to(root).as_posix() for path in local_entries(root)]
        layout = _kaggle_layout(names)
        if not layout:
            raise self._no_layout(root)
        for file in layout:
            if not self._wanted(file):
                continue
            path = root / file.name
            yield self._record(file, file_reader(path), file_fingerprint(path))

    def _zip_records(self, path: Path) -> Iterator[SourceRecord]:
        archive = _ZipArchive(path)
        try:
            infos = [i for i in archive.infos() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"cannot read zip {path}: {exc}") from exc
        unsafe = {i.filename: reason for i in infos if (reason := _unsafe_zip_entry(i))}
        safe = {i.filename: i for i in infos if i.filename not in unsafe}
        layout = _kaggle_layout(safe)
        if not layout:
            raise self._no_layout(path)
        # Unsafe entries are reported, never read and never skipped silently.
        for name, reason in unsafe.items():
            yield SourceRecord(
                source=self.name,
                original_path=name,
                label=None,
                patient_id=None,
                read=failing_reader(FetchError(f"{path}!{name}", f"unsafe zip entry: {reason}")),
                metadata={"license": KAGGLE_LICENSE},
            )
        for file in layout:
            if self._wanted(file):
                info = safe[file.name]
                fingerprint = f"crc{info.CRC:08x}-{info.file_size}"
                yield self._record(file, archive.reader(info), fingerprint)

    def records(self) -> Iterator[SourceRecord]:
        location = self.location if self.location is not None else self.download()
        if location.is_dir():
            yield from self._folder_records(location)
        elif location.is_file():
            if not zipfile.is_zipfile(location):
                raise SourceError(f"{location} is neither a folder nor a zip archive")
            yield from self._zip_records(location)
        else:
            raise SourceError(f"Kaggle source {location} does not exist")
