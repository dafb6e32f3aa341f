"""Reading one file, local or in S3, never more than :data:`MAX_FILE_BYTES`.

Ingest (through the sources) and scoring (through :func:`open_input`) read every file here, so a
huge, endless or hostile file is refused the same way wherever it is met: a local file is opened
without following links or waiting on a FIFO, and anything over the cap raises :class:`FetchError`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cxr_model.sources.records import FetchError, RefusedFile

if TYPE_CHECKING:
    from cxr_model.storage import ObjectStore

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest file any source reads; a bigger one's ``read()`` raises :class:`FetchError`."""
CHUNK_BYTES = 1024 * 1024


def file_cap(max_bytes: int | None = None) -> int:
    """``max_bytes``, or :data:`MAX_FILE_BYTES` (read when called, so it can be changed)."""
    return MAX_FILE_BYTES if max_bytes is None else max_bytes


def too_large(where: str, size: int | None, cap: int) -> FetchError:
    if size is None:
        return FetchError(where, f"file too large (more than {cap} bytes > cap {cap})")
    return FetchError(where, f"file too large ({size} bytes > cap {cap})")


def chunks_capped(stream: BinaryIO, where: str, cap: int) -> Iterator[bytes]:
    """``stream``'s bytes to its end in pieces, raising once they pass ``cap`` bytes."""
    total = 0
    while chunk := stream.read(min(CHUNK_BYTES, cap + 1 - total)):
        total += len(chunk)
        if total > cap:
            raise too_large(where, None, cap)
        yield chunk


def read_capped(stream: BinaryIO, where: str, max_bytes: int | None = None) -> bytes:
    """Read ``stream`` to its end; :class:`FetchError` once it passes the cap."""
    return b"".join(chunks_capped(stream, where, file_cap(max_bytes)))


def sha256_capped(stream: BinaryIO, where: str, max_bytes: int | None = None) -> str:
    """The sha256 of ``stream`` to its end, without keeping its bytes; capped as :func:`read_capped`."""
    digest = hashlib.sha256()
    for chunk in chunks_capped(stream, where, file_cap(max_bytes)):
        digest.update(chunk)
    return digest.hexdigest()


# --- local files -------------------------------------------------------------------------------

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
    cap = file_cap(max_bytes)
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
            raise too_large(where, info.st_size, cap)
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


def file_reader(path: Path) -> Callable[[], bytes]:
    """A record's ``read`` for a local file."""
    return lambda: read_file_capped(path)


def file_fingerprint(path: Path) -> str | None:
    """``<size>-<mtime_ns>`` of a local file (not following symlinks), None if it is not there."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return f"{info.st_size}-{info.st_mtime_ns}" if stat.S_ISREG(info.st_mode) else None


# --- S3 objects --------------------------------------------------------------------------------


@contextmanager
def open_object_capped(
    store: ObjectStore, key: str, max_bytes: int | None = None
) -> Iterator[tuple[BinaryIO, int]]:
    """An S3 object opened for reading, with its size (at most ``max_bytes``, default
    :data:`MAX_FILE_BYTES`). Raises :class:`FetchError` with the URI, the S3 error code and the
    HTTP status when it cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    uri = store.uri(key)
    cap = file_cap(max_bytes)
    try:
        with store.open_object(key) as (body, size):
            if size > cap:
                raise too_large(uri, size, cap)
            yield body, size
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


def object_reader(store: ObjectStore, key: str) -> Callable[[], bytes]:
    """A record's ``read`` for an S3 object."""
    return lambda: read_object_capped(store, key)


# --- either, by location -----------------------------------------------------------------------


@contextmanager
def open_input(path: str, store: ObjectStore) -> Iterator[tuple[BinaryIO, int]]:
    """A local file or ``s3://`` object opened for reading, with its size, at most
    :data:`MAX_FILE_BYTES`; an object gone since it was listed is ``FileNotFoundError``. Local
    files are opened as :func:`open_file_capped` says (no link followed, nothing but a regular
    file read, never a wait)."""
    from cxr_model.storage import MISSING_KEY_CODES, parse_s3_uri

    if not path.startswith("s3://"):
        with open_file_capped(Path(path)) as opened:
            yield opened
        return
    bucket, key = parse_s3_uri(path)
    try:
        with open_object_capped(store.in_bucket(bucket), key) as opened:
            yield opened
    except FetchError as exc:
        if exc.reason in MISSING_KEY_CODES:
            raise FileNotFoundError(f"{path} was removed after it was listed") from exc
        raise


def read_input(path: str, store: ObjectStore) -> bytes:
    """The bytes of a local file or ``s3://`` object (see :func:`open_input`)."""
    with open_input(path, store) as (stream, _):
        return read_capped(stream, path)
