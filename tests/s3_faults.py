"""Faults injected into a real boto3 S3 client, for tests against the real store.

:class:`S3Faults` hooks botocore's ``before-send`` event of one client: requests of one operation
whose key ends with a given suffix can have their response lost (the request reaches the store
and takes effect, then the client sees a dropped connection, as when a network breaks after the
server answered) or get a 503 from the "store" without reaching it. botocore's own retries see
these faults exactly as they would see the real thing. Nothing is emulated: every other request,
and every request that loses its response, goes to the real server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import urllib3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

SERVICE_UNAVAILABLE = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
    b"<Message>injected by the test</Message></Error>"
)


class _Body:
    """The raw body botocore reads from an :class:`AWSResponse`."""

    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_) -> Iterator[bytes]:
        yield self.data


@dataclass
class S3Faults:
    """Faults for requests of ``operation`` (e.g. ``PutObject``) on keys ending in ``suffix``.

    ``lose`` responses are lost after the store handled the request; ``unavailable`` requests get
    a 503 without reaching the store. Lost responses come first, each fault is used once.
    """

    client: object
    operation: str
    suffix: str
    lose: int = 0
    unavailable: int = 0
    seen: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _http: urllib3.PoolManager = field(default_factory=urllib3.PoolManager)

    @property
    def event(self) -> str:
        return f"before-send.s3.{self.operation}"

    def _before_send(self, request, **_) -> AWSResponse | None:
        key = unquote(urlsplit(request.url).path)
        if not key.endswith(self.suffix):
            return None
        with self._lock:
            self.seen.append(key)
            if self.lose:
                self.lose -= 1
                fault = "lose"
            elif self.unavailable:
                self.unavailable -= 1
                fault = "unavailable"
            else:
                return None
        if fault == "unavailable":
            return AWSResponse(request.url, 503, {}, _Body(SERVICE_UNAVAILABLE))
        body = request.body.read() if hasattr(request.body, "read") else request.body
        # the store handles the request (a retried create-only put gets its 412 here); whatever
        # it answered, the client never hears it
        self._http.request(
            request.method, request.url, body=body, headers=dict(request.headers), retries=False
        )
        raise ConnectionClosedError(endpoint_url=request.url)

    @property
    def used_up(self) -> bool:
        return self.lose == 0 and self.unavailable == 0


@contextmanager
def s3_faults(client, operation: str, suffix: str, *, lose: int = 0, unavailable: int = 0):
    """Inject :class:`S3Faults` into ``client`` for the duration of the block."""
    faults = S3Faults(client, operation, suffix, lose=lose, unavailable=unavailable)
    client.meta.events.register(faults.event, faults._before_send)
    try:
        yield faults
    finally:
        client.meta.events.unregister(faults.event, faults._before_send)
