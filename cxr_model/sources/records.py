"""What every source yields (:class:`SourceRecord`) and the errors sources raise.

A file that cannot be read is still a record: its ``read()`` raises an ``OSError`` (usually
:class:`FetchError`) that ingest reports for that file alone. A source that cannot be read at all
raises :class:`SourceError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


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


class RefusedFile(FetchError):
    """A file deliberately not read (a symbolic link, a FIFO or device, a path outside where a
    source may read); ``reason`` starts with ``skipped:`` so reports group these together."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, f"skipped: {reason}")

    def __reduce__(self):
        return (_rebuild_refused, (self.url, self.reason.removeprefix("skipped: ")))


def _rebuild_refused(url: str, reason: str) -> RefusedFile:
    return RefusedFile(url, reason)


def read_failure(exc: OSError) -> str:
    """The reason a report gives for a file that could not be read."""
    return str(exc) if isinstance(exc, RefusedFile) else f"cannot read: {exc}"


def failing_reader(error: OSError) -> Callable[[], bytes]:
    """A ``read`` for a record that must not be read: it raises ``error``."""

    def read() -> bytes:
        raise error

    return read


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
