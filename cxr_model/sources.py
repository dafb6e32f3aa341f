"""Image sources: where x-rays come from, each yielding the same kind of record.

Every source yields :class:`SourceRecord` s: label, patient id, source name, original path (or URL),
metadata (view, license, ...) and a ``read()`` that fetches the bytes. A file that cannot be read
(missing, HTTP 404, too large, unsafe name) is still a record: its ``read()`` raises an ``OSError``
(usually :class:`FetchError`) that ingest reports for that file alone. A source that cannot be read
at all (missing folder, unreachable metadata, bad spec) raises :class:`SourceError`.

A source is named by a spec string (on the CLI and as a flow parameter):

- ``folder:<path>`` or a bare path: a self-sorted folder, either the study's layout
  ``Train|Val/{covid,normal}/...`` or a flat ``{covid,normal}/...``. Labels come from the class
  folder names (case-insensitive). An optional ``manifest.csv`` at the root with columns
  ``file,patient_id`` gives patient ids; without one each image is its own patient.
- ``manifest:<csv>``: a CSV with ``label`` and ``file`` (or ``uri``), optional ``patient_id`` and
  ``source``. A value is a local path (relative to the CSV's folder, or absolute), an
  ``http(s)://`` URL or an ``s3://bucket/key`` URI (read through the object store). ``source``, when
  present, names the record's source; every other non-empty column (``view``, ``license``, ...)
  goes into the record's metadata.
- ``s3://bucket/prefix``: the same layouts as ``folder:`` under an S3 prefix (optional
  ``manifest.csv`` there too), read through the object store given to :func:`parse_source`.
- ``ieee8023:[<base-url>][?views=PA,AP&findings=COVID-19&modalities=X-ray]``: the ieee8023
  covid-chestxray-dataset (default base URL :data:`IEEE8023_BASE_URL`). ``<base>/metadata.csv``
  is read and its rows selected by :class:`Ieee8023Filters`; each image is fetched from
  ``<base>/<folder>/<filename>``. Label ``covid`` for COVID-19 findings.
- ``kaggle:[<folder-or-zip>][?pneumonia=include]``: Kaggle's chest-xray-pneumonia dataset in its
  layout ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*``, from a folder or a zip. NORMAL is
  label ``normal``; PNEUMONIA is left out unless ``pneumonia=include`` (label ``pneumonia``, which
  the data-quality suite rejects). Without a path the dataset zip is downloaded with the Kaggle API
  (credentials: ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``).

Every file is capped at :data:`MAX_FILE_BYTES`. Names taken from remote metadata, zip entries or S3
keys are never used as local filesystem paths; zip archives are read member by member, never
extracted.
"""

from __future__ import annotations

import base64
import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import parse_qsl, quote, urlsplit

from cxr_model.config import get_settings

if TYPE_CHECKING:
    from cxr_model.storage import ObjectStore

SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}
IGNORED_FILES = {"manifest.csv", "readme.txt", "readme.md", ".ds_store"}

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest file any source reads; a bigger one's ``read()`` raises :class:`FetchError`."""
MAX_ARCHIVE_BYTES = 16 * 1024**3
"""Largest dataset archive downloaded (the Kaggle zip is about 2.5 GB)."""
HTTP_TIMEOUT_S = 30.0
"""Connect and per-read timeout of every HTTP request."""
HTTP_ATTEMPTS = 3
"""Tries per HTTP request; only 5xx, connection errors and timeouts are tried again."""
HTTP_BACKOFF_S = 1.0
"""Delay before the first retry; doubled before each further one."""
USER_AGENT = "cxr/0.1 (python-urllib)"

IEEE8023_BASE_URL = "https://raw.githubusercontent.com/ieee8023/covid-chestxray-dataset/master"
KAGGLE_API_URL = "https://www.kaggle.com/api/v1"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_LICENSE = "CC BY 4.0"
KAGGLE_SPLITS = {"train", "val", "test"}
KAGGLE_CLASSES = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
_CHUNK = 1024 * 1024


class SourceError(ValueError):
    """A source cannot be read at all (missing folder, bad spec); the message says which."""


class FetchError(OSError):
    """One file could not be fetched: ``url`` names it, ``status`` is the HTTP status if any.

    An ``OSError``, so ingest reports it for that file and goes on with the others.
    """

    def __init__(
        self, url: str, reason: str, status: int | None = None, *, retryable: bool = False
    ) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        self.retryable = retryable
        prefix = f"HTTP {status} {reason}" if status is not None else reason
        super().__init__(f"{prefix}: {url}")

    def __reduce__(self):  # keep url/status when pickled (e.g. across processes)
        return (_rebuild_fetch_error, (self.url, self.reason, self.status, self.retryable))


def _rebuild_fetch_error(url: str, reason: str, status: int | None, retryable: bool) -> FetchError:
    return FetchError(url, reason, status, retryable=retryable)


@dataclass(frozen=True)
class SourceRecord:
    """One image as a source offers it; ``read`` fetches its bytes."""

    source: str
    original_path: str
    label: str | None
    patient_id: str | None
    read: Callable[[], bytes] = field(repr=False, compare=False)
    metadata: Mapping[str, str] = field(default_factory=dict)  # view, license, url, ...
    # Cheap change marker known without reading the bytes (size+mtime of a local file, a zip
    # member's CRC and size, an S3 ETag; for HTTP a callable making a HEAD request, run by
    # ingest's worker threads). Ingest skips a record whose fingerprint is unchanged since the
    # last run; None means "cannot tell", and the record is read.
    fingerprint: str | Callable[[], str | None] | None = field(default=None, compare=False)


# --- reading with a size cap -------------------------------------------------------------------


def _cap(max_bytes: int | None) -> int:
    return MAX_FILE_BYTES if max_bytes is None else max_bytes


def _too_large(where: str, size: int | None, cap: int) -> FetchError:
    if size is None:
        return FetchError(where, f"file too large (more than {cap} bytes > cap {cap})")
    return FetchError(where, f"file too large ({size} bytes > cap {cap})")


def _chunks_capped(stream: BinaryIO, where: str, cap: int) -> Iterator[bytes]:
    """``stream``'s bytes to its end in pieces, raising once they pass ``cap`` bytes."""
    total = 0
    while chunk := stream.read(min(_CHUNK, cap + 1 - total)):
        total += len(chunk)
        if total > cap:
            raise _too_large(where, None, cap)
        yield chunk


def read_capped(stream: BinaryIO, where: str, max_bytes: int | None = None) -> bytes:
    """Read ``stream`` to its end; :class:`FetchError` once it passes the cap."""
    return b"".join(_chunks_capped(stream, where, _cap(max_bytes)))


def sha256_capped(stream: BinaryIO, where: str, max_bytes: int | None = None) -> str:
    """The sha256 of ``stream`` to its end, without keeping its bytes; capped as :func:`read_capped`."""
    digest = hashlib.sha256()
    for chunk in _chunks_capped(stream, where, _cap(max_bytes)):
        digest.update(chunk)
    return digest.hexdigest()


class RefusedFile(FetchError):
    """A file deliberately not read (a symbolic link, a FIFO or device, a path outside where a
    source may read); ``reason`` starts with ``skipped:`` so reports group these together."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, f"skipped: {reason}")

    def __reduce__(self):
        return (_rebuild_refused, (self.url, self.reason.removeprefix("skipped: ")))


def _rebuild_refused(url: str, reason: str) -> RefusedFile:
    return RefusedFile(url, reason)


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a plain file")
    return f"not a regular file ({kind})"


@contextmanager
def open_file_capped(path: Path, max_bytes: int | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """A local regular file opened for reading, with its size (at most ``max_bytes``, default
    :data:`MAX_FILE_BYTES`).

    Never blocks and never follows a link: the file is opened with ``O_NONBLOCK`` (a FIFO opens at
    once instead of waiting for a writer) and ``O_NOFOLLOW``, and the *opened* descriptor must be
    a regular file, so a file swapped for a FIFO, device or link after it was listed is refused
    too. Raises :class:`RefusedFile` for those, :class:`FetchError` for a file over the cap and
    ``OSError`` (e.g. ``FileNotFoundError``) when it cannot be opened.
    """
    cap = _cap(max_bytes)
    where = str(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedFile(where, "symbolic link not followed") from exc
        if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
            raise RefusedFile(where, "not a regular file (a socket or device)") from exc
        raise
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile(where, _not_regular(info.st_mode))
        if info.st_size > cap:
            raise _too_large(where, info.st_size, cap)
        yield handle, info.st_size


def read_file_capped(path: Path, max_bytes: int | None = None) -> bytes:
    """A local regular file's bytes (see :func:`open_file_capped`)."""
    with open_file_capped(path, max_bytes) as (handle, _):
        return read_capped(handle, str(path), max_bytes)


def local_entries(folder: Path) -> Iterator[Path]:
    """Every entry under ``folder`` that is not a folder, depth first, each folder's entries
    sorted by name; symbolic links are listed (as links, never entered or followed).

    Only one folder's entries are held at a time. FIFOs, sockets and links are listed too, so
    that whoever reads them (:func:`read_file_capped`) reports each one: nothing is left out
    without a word.
    """
    with os.scandir(folder) as found:
        entries = sorted(found, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from local_entries(Path(entry.path))
        else:
            yield Path(entry.path)


def read_failure(exc: OSError) -> str:
    """The reason a report gives for a file that could not be read."""
    return str(exc) if isinstance(exc, RefusedFile) else f"cannot read: {exc}"


def _file_reader(path: Path) -> Callable[[], bytes]:
    return lambda: read_file_capped(path)


def file_fingerprint(path: Path) -> str | None:
    """``<size>-<mtime_ns>`` of a local file (not following symlinks), None if it is not there."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return f"{info.st_size}-{info.st_mtime_ns}" if stat.S_ISREG(info.st_mode) else None


def _failing_reader(error: OSError) -> Callable[[], bytes]:
    def read() -> bytes:
        raise error

    return read


# --- HTTP ------------------------------------------------------------------------------------


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (never file:, ftp:)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            fp.close()
            raise FetchError(req.full_url, f"redirect to a non-HTTP address refused ({newurl})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SafeRedirects())


def _status_phrase(code: int, reason: object) -> str:
    """The standard phrase for a status ("Not Found"), whatever the server wrote."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return str(reason or "error")


def _http_request(
    url: str,
    consume: Callable[[object], object],
    *,
    auth: tuple[str, str] | None = None,
    timeout: float | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
):
    """GET ``url`` and hand the open response to ``consume``, retrying transient failures.

    5xx answers, connection errors and timeouts are tried again (``attempts`` tries in all,
    waiting ``backoff``, then twice that, ...); 4xx answers and oversize files are not. Basic-auth
    credentials are never forwarded to a redirect target.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(url, "only http:// and https:// URLs can be fetched")
    timeout = HTTP_TIMEOUT_S if timeout is None else timeout
    attempts = max(1, HTTP_ATTEMPTS if attempts is None else attempts)
    backoff = HTTP_BACKOFF_S if backoff is None else backoff
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_unredirected_header("Authorization", f"Basic {token}")
        try:
            try:
                with _OPENER.open(request, timeout=timeout) as response:
                    return consume(response)
            except urllib.error.HTTPError as exc:
                exc.close()
                raise FetchError(
                    url, _status_phrase(exc.code, exc.reason), exc.code, retryable=exc.code >= 500
                ) from exc
            except urllib.error.URLError as exc:
                reason = exc.reason
                raise FetchError(url, f"cannot connect ({reason})", retryable=True) from exc
            except FetchError:
                raise
            except (TimeoutError, ConnectionError, HTTPException, OSError) as exc:
                what = "timed out" if isinstance(exc, TimeoutError) else f"transfer failed ({exc})"
                raise FetchError(url, what, retryable=True) from exc
        except FetchError as exc:
            if not exc.retryable or attempt == attempts:
                raise
        time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _check_length(response, url: str, cap: int) -> None:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > cap:
        raise _too_large(url, int(length), cap)


def fetch_bytes(
    url: str,
    *,
    max_bytes: int | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
) -> bytes:
    """The body at ``url`` (streamed, at most ``max_bytes``; default :data:`MAX_FILE_BYTES`).

    Raises :class:`FetchError` (an ``OSError``) with the status and URL when it cannot.
    """
    cap = _cap(max_bytes)

    def consume(response) -> bytes:
        _check_length(response, url, cap)
        return read_capped(response, url, cap)

    return _http_request(
        url, consume, auth=auth, timeout=timeout, attempts=attempts, backoff=backoff
    )


def fetch_to_file(
    url: str,
    dest: Path,
    *,
    max_bytes: int | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
) -> Path:
    """Stream ``url`` into ``dest`` (written whole or not at all); at most ``max_bytes``."""
    cap = MAX_ARCHIVE_BYTES if max_bytes is None else max_bytes
    dest.parent.mkdir(parents=True, exist_ok=True)

    def consume(response) -> Path:
        _check_length(response, url, cap)
        handle = tempfile.NamedTemporaryFile(
            dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
        )
        partial = Path(handle.name)
        try:
            with handle:
                total = 0
                while chunk := response.read(_CHUNK):
                    total += len(chunk)
                    if total > cap:
                        raise _too_large(url, None, cap)
                    handle.write(chunk)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest

    return _http_request(
        url, consume, auth=auth, timeout=timeout, attempts=attempts, backoff=backoff
    )


def _url_reader(url: str) -> Callable[[], bytes]:
    return lambda: fetch_bytes(url)


def http_fingerprint(url: str) -> str | None:
    """The ETag, or Last-Modified and size, of ``url`` from a HEAD request; None when unknown."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=HTTP_TIMEOUT_S) as response:
            headers = response.headers
    except (OSError, HTTPException):
        return None  # the GET that follows reports what is wrong
    if headers.get("ETag"):
        return f"etag:{headers['ETag']}"
    if headers.get("Last-Modified") and headers.get("Content-Length"):
        return f"modified:{headers['Last-Modified']}-{headers['Content-Length']}"
    return None


def _url_fingerprint(url: str) -> Callable[[], str | None]:
    return lambda: http_fingerprint(url)


# --- S3 ----------------------------------------------------------------------------------------


@contextmanager
def open_object_capped(
    store: ObjectStore, key: str, max_bytes: int | None = None
) -> Iterator[tuple[BinaryIO, int]]:
    """An S3 object opened for reading, with its size (at most ``max_bytes``, default
    :data:`MAX_FILE_BYTES`). Raises :class:`FetchError` with the URI, the S3 error code and the
    HTTP status when it cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    uri = store.uri(key)
    cap = _cap(max_bytes)
    try:
        reply = store.client.get_object(Bucket=store.bucket, Key=key)
        body = reply["Body"]
        try:
            size = int(reply.get("ContentLength") or 0)
            if size > cap:
                raise _too_large(uri, size, cap)
            yield body, size
        finally:
            body.close()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = error.get("Code") or error.get("Message") or "error"
        raise FetchError(uri, str(reason), status) from exc
    except BotoCoreError as exc:
        raise FetchError(uri, f"S3 request failed ({exc})") from exc


def read_object_capped(store: ObjectStore, key: str, max_bytes: int | None = None) -> bytes:
    """An S3 object's bytes (see :func:`open_object_capped`)."""
    with open_object_capped(store, key, max_bytes) as (body, _):
        return read_capped(body, store.uri(key), max_bytes)


def _s3_reader(store: ObjectStore, key: str) -> Callable[[], bytes]:
    return lambda: read_object_capped(store, key)


def _list_etags(store: ObjectStore, prefix: str) -> dict[str, str]:
    """Every key under ``prefix`` with ``<ETag>-<size>`` as its fingerprint."""
    found: dict[str, str] = {}
    paginator = store.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=store.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            etag = str(item.get("ETag", "")).strip('"')
            found[item["Key"]] = f"{etag}-{item.get('Size', '')}"
    return found


def _split_s3_uri(uri: str) -> tuple[str, str]:
    from cxr_model.storage import parse_s3_uri

    try:
        return parse_s3_uri(uri)
    except ValueError as exc:
        raise SourceError(str(exc)) from exc


# --- folder and S3 layouts -----------------------------------------------------------------------


def _patient_ids(root: Path) -> dict[str, str]:
    manifest = root / "manifest.csv"
    if not manifest.exists() and not manifest.is_symlink():
        return {}
    try:
        text = read_file_capped(manifest).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read the patient ids in {manifest}: {exc}") from exc
    return _patient_map(io.StringIO(text, newline=""))


def _patient_map(handle: Iterable[str]) -> dict[str, str]:
    return {
        row["file"]: row["patient_id"]
        for row in csv.DictReader(handle)
        if row.get("file") and row.get("patient_id")
    }


@dataclass(frozen=True)
class FolderSource:
    """A self-sorted folder of class subfolders, optionally under Train/Val folders."""

    root: Path

    @property
    def name(self) -> str:
        return f"folder:{self.root}"

    def _layout(self) -> tuple[list[Path], list[Path]]:
        """The class folders, and the symbolic links found where split or class folders belong
        (never followed: ``Train/covid -> /elsewhere`` would read files from outside)."""
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
        split_dirs = [p for p in children if p.name.lower() in SPLIT_FOLDERS]
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
            read=_file_reader(path),
            fingerprint=file_fingerprint(path),
        )

    def records(self) -> Iterator[SourceRecord]:
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a folder")
        patients = _patient_ids(self.root)
        class_dirs, links = self._layout()
        if not class_dirs and not links:
            raise SourceError(
                f"source folder {self.root} has no class folders: expected covid/ and normal/ "
                "(optionally under Train/ and Val/)"
            )
        # A link among the split and class folders gets a row (its read says why), unlabelled.
        for link in links:
            yield self._record(link, None, patients)
        for class_dir in class_dirs:
            for path in local_entries(class_dir):
                # Links, FIFOs and other non-regular entries are listed; their read refuses them.
                if path.name.lower() not in IGNORED_FILES or path.is_symlink():
                    yield self._record(path, class_dir.name.lower(), patients)


@dataclass(frozen=True)
class S3Source:
    """The folder layouts of :class:`FolderSource` under an S3 prefix, read through the store."""

    uri: str
    store: ObjectStore = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/")

    def records(self) -> Iterator[SourceRecord]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = _split_s3_uri(self.uri)
        store = self.store if bucket == self.store.bucket else self.store.in_bucket(bucket)
        prefix = prefix.strip("/")
        prefix = f"{prefix}/" if prefix else ""
        try:
            etags = _list_etags(store, prefix)
            manifest = store.get_with_etag(f"{prefix}manifest.csv")
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(f"cannot list {self.name}: {exc}") from exc
        patients = _patient_map(io.StringIO(manifest[0].decode("utf-8-sig"))) if manifest else {}
        files = [
            (key, key[len(prefix) :].split("/"))
            for key in sorted(etags)
            if not key.endswith("/") and key.rsplit("/", 1)[-1].lower() not in IGNORED_FILES
        ]
        has_splits = any(
            len(parts) >= 3 and parts[0].lower() in SPLIT_FOLDERS for _, parts in files
        )
        if has_splits:
            chosen = [
                (key, parts, parts[1])
                for key, parts in files
                if len(parts) >= 3 and parts[0].lower() in SPLIT_FOLDERS
            ]
        else:
            chosen = [(key, parts, parts[0]) for key, parts in files if len(parts) >= 2]
        if not chosen:
            raise SourceError(
                f"{self.name} has no class folders: expected covid/ and normal/ "
                "(optionally under Train/ and Val/)"
            )
        for key, parts, class_name in chosen:
            relative = "/".join(parts)
            yield SourceRecord(
                source=self.name,
                original_path=relative,
                label=class_name.lower(),
                patient_id=patients.get(relative),
                read=_s3_reader(store, key),
                metadata={"url": store.uri(key)},
                fingerprint=etags[key],
            )


# --- manifests ---------------------------------------------------------------------------------

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
    ) -> tuple[Callable[[], bytes], dict[str, str], str | None]:
        """The record's reader, extra metadata and fingerprint."""
        scheme = urlsplit(location).scheme.lower()
        if scheme in ("http", "https"):
            return _url_reader(location), {"url": location}, _url_fingerprint(location)
        if scheme == "s3":
            if self.store is None:
                raise SourceError(
                    f"manifest {self.csv_path} lists {location} but no object store was given"
                )
            bucket, key = _split_s3_uri(location)
            store = self.store if bucket == self.store.bucket else self.store.in_bucket(bucket)
            return _s3_reader(store, key), {"url": location}, None
        path = Path(location)
        path = path if path.is_absolute() else base / path
        resolved = path.resolve()  # ``..`` and links resolved, so that neither leads outside
        refusal = self._refusal(resolved)
        if refusal is not None:
            return _failing_reader(RefusedFile(location, refusal)), {}, None
        return _file_reader(resolved), {}, file_fingerprint(resolved)

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


# --- ieee8023 covid-chestxray-dataset -----------------------------------------------------------


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(v.strip() for v in values if v.strip())


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
        required = {"patientid", "finding", "view", "modality", "folder", "filename"}
        missing = required - set(reader.fieldnames or [])
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
                read = _failing_reader(FetchError(url, "unsafe file name in metadata.csv"))
                fingerprint = None
            else:
                url = self.image_url(folder, filename)
                read = _url_reader(url)
                fingerprint = _url_fingerprint(url)
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


# --- Kaggle chest-xray-pneumonia ---------------------------------------------------------------

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
            or base.lower() in IGNORED_FILES
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
            cap = MAX_FILE_BYTES
            if info.file_size > cap:
                raise _too_large(where, info.file_size, cap)
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
        names: list[str] = []
        for folder, dirs, files in os.walk(root):  # symlinked folders are not entered
            dirs.sort()
            relative = Path(folder).relative_to(root).as_posix()
            names.extend(f if relative == "." else f"{relative}/{f}" for f in sorted(files))
        layout = _kaggle_layout(names)
        if not layout:
            raise self._no_layout(root)
        for file in layout:
            if not self._wanted(file):
                continue
            path = root / file.name
            if path.is_symlink():
                read = _failing_reader(FetchError(str(path), "symbolic link not followed"))
            else:
                read = _file_reader(path)
            yield self._record(file, read, file_fingerprint(path))

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
                read=_failing_reader(FetchError(f"{path}!{name}", f"unsafe zip entry: {reason}")),
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


# --- specs -------------------------------------------------------------------------------------

Source = FolderSource | ManifestSource | S3Source | Ieee8023Source | KaggleSource

_SPEC_HELP = (
    "use folder:<path>, manifest:<csv>, s3://bucket/prefix, ieee8023:[<base-url>] or "
    "kaggle:[<folder-or-zip>]"
)


def _options(spec: str, rest: str, allowed: set[str]) -> tuple[str, dict[str, str]]:
    location, sep, query = rest.partition("?")
    if not sep:
        return rest, {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise SourceError(f"bad options {query!r} in {spec!r}: use ?name=value&...") from exc
    options = dict(pairs)
    unknown = set(options) - allowed
    if unknown:
        raise SourceError(
            f"unknown option(s) {sorted(unknown)} in {spec!r}; known: {sorted(allowed) or 'none'}"
        )
    return location, options


def _list_option(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return default if value is None else _names(value.split(","))


def _path(text: str) -> Path:
    return Path(text).expanduser().resolve()


def parse_source(
    spec: str, *, store: ObjectStore | None = None, cache_dir: Path | None = None
) -> Source:
    """Turn a source spec (see the module docstring) into a source.

    ``store`` reads ``s3://`` sources and manifest rows; ``cache_dir`` holds downloads (Kaggle).
    """
    spec = spec.strip()
    if spec.startswith("s3://"):
        if store is None:
            raise SourceError(f"source {spec!r} needs an object store, and none was given")
        _split_s3_uri(spec)
        return S3Source(spec, store)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "folder":
        return FolderSource(_path(rest))
    if sep and kind == "manifest":
        return ManifestSource(_path(rest), store=store)
    if sep and kind == "ieee8023":
        base, options = _options(spec, rest, {"views", "findings", "modalities"})
        defaults = Ieee8023Filters()
        filters = Ieee8023Filters(
            findings=_list_option(options.get("findings"), defaults.findings),
            modalities=_list_option(options.get("modalities"), defaults.modalities),
            views=_list_option(options.get("views"), defaults.views),
        )
        base = base.strip() or IEEE8023_BASE_URL
        if urlsplit(base).scheme not in ("http", "https"):
            raise SourceError(f"ieee8023 base {base!r} in {spec!r} is not an http(s):// URL")
        return Ieee8023Source(base.rstrip("/"), filters)
    if sep and kind == "kaggle":
        location, options = _options(spec, rest, {"pneumonia"})
        pneumonia = options.get("pneumonia", "exclude").lower()
        if pneumonia not in ("include", "exclude"):
            raise SourceError(f"pneumonia= must be include or exclude in {spec!r}")
        return KaggleSource(
            location=_path(location) if location.strip() else None,
            include_pneumonia=pneumonia == "include",
            cache_dir=cache_dir,
        )
    if sep and len(kind) > 1 and kind not in ("file",):
        raise SourceError(f"unknown source kind {kind!r} in {spec!r}: {_SPEC_HELP}")
    return FolderSource(_path(spec))


def check_source(spec: str) -> None:
    """Check a source spec without reading the source: its syntax, and that a local folder,
    manifest or archive it names exists. No network, no store, nothing heavy imported: the CLI
    calls it before it starts Prefect or TensorFlow, so a typo fails in a second.

    Raises :class:`SourceError` with the same message reading the source would give.
    """
    spec = spec.strip()
    if spec.startswith("s3://"):
        _split_s3_uri(spec)
        return
    source = parse_source(spec)
    if isinstance(source, FolderSource) and not source.root.is_dir():
        raise SourceError(f"source folder {source.root} does not exist or is not a folder")
    if isinstance(source, ManifestSource) and not source.csv_path.is_file():
        raise SourceError(f"manifest {source.csv_path} does not exist")
    if isinstance(source, KaggleSource) and source.location and not source.location.exists():
        raise SourceError(f"Kaggle source {source.location} does not exist")
