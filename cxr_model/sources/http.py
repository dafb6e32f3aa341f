"""HTTP reads for remote sources: GET with a size cap, timeouts and retries of what is transient.

Standard-library ``urllib``: redirects are followed to http(s) only, Basic-auth credentials are
never forwarded to a redirect target, and every failure is a :class:`FetchError` naming the URL.
5xx answers, connection errors and timeouts are tried again; 4xx answers and oversize files are not.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit

from cxr_model.sources.reading import CHUNK_BYTES, file_cap, read_capped, too_large
from cxr_model.sources.records import FetchError

MAX_ARCHIVE_BYTES = 16 * 1024**3
"""Largest dataset archive downloaded (the Kaggle zip is about 2.5 GB)."""
HTTP_TIMEOUT_S = 30.0
"""Connect and per-read timeout of every HTTP request."""
HTTP_ATTEMPTS = 3
"""Tries per HTTP request; only 5xx, connection errors and timeouts are tried again."""
HTTP_BACKOFF_S = 1.0
"""Delay before the first retry; doubled before each further one."""
USER_AGENT = "cxr/0.1 (python-urllib)"


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
        raise too_large(url, int(length), cap)


def fetch_bytes(
    url: str,
    *,
    max_bytes: int | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
) -> bytes:
    """The body at ``url`` (streamed, at most ``max_bytes``; default ``MAX_FILE_BYTES``).

    Raises :class:`FetchError` (an ``OSError``) with the status and URL when it cannot.
    """
    cap = file_cap(max_bytes)

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
                while chunk := response.read(CHUNK_BYTES):
                    total += len(chunk)
                    if total > cap:
                        raise too_large(url, None, cap)
                    handle.write(chunk)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest

    return _http_request(
        url, consume, auth=auth, timeout=timeout, attempts=attempts, backoff=backoff
    )


def url_reader(url: str) -> Callable[[], bytes]:
    """A record's ``read`` for an http(s) URL."""
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


def url_fingerprint(url: str) -> Callable[[], str | None]:
    """A record's deferred fingerprint for an http(s) URL (a HEAD request when called)."""
    return lambda: http_fingerprint(url)
