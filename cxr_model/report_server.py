"""A read-only HTTP view of the bucket on 127.0.0.1, so that reports and outputs open in a browser.

``GET /<key>`` answers the object at ``<key>`` with a content type a browser shows (HTML pages,
PNG plots, CSV, Markdown as text); ``/<folder>/`` answers ``<folder>/index.html`` (Data Docs).
Nothing else: other methods are refused (405), keys with ``.``/``..`` or empty segments are
refused (400), requests naming another host than the loopback address it listens on are refused
(421, against DNS rebinding), and it never listens on anything but a loopback address.

Run it with ``python -m cxr_model.report_server --port 4210`` (``make up`` does) and set
``CXR_REPORTS_URL=http://127.0.0.1:4210`` where flows run, so their links point here
(:mod:`cxr_model.links`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import mimetypes
import shutil
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from cxr_model.config import get_settings
from cxr_model.storage import MISSING_KEY_CODES, ObjectStore, open_store

DEFAULT_PORT = 4210
CHUNK = 1 << 20
SHOWN_AS_TEXT = {".md": "text/plain", ".log": "text/plain", ".jsonl": "text/plain"}
logger = logging.getLogger("cxr.report_server")


class NotLoopback(ValueError):
    """The report server was asked to listen beyond this machine."""


def key_for(path: str) -> str | None:
    """The object key a request path names, or None when it is not a plain key in the bucket."""
    text = unquote(urlsplit(path).path)
    if not text.startswith("/") or "\\" in text or any(ord(c) < 32 for c in text):
        return None
    key = text[1:]
    if key == "" or key.endswith("/"):
        key += "index.html"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return None
    return key


def content_type(key: str, stored: str | None) -> str:
    """What a browser should take the object for: by its name first, then as it was stored."""
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
    kind = SHOWN_AS_TEXT.get(suffix) or mimetypes.guess_type(key)[0] or stored
    kind = kind or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


class _Handler(BaseHTTPRequestHandler):
    server: ReportServer
    server_version = "cxr-report-server"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(with_body=False)

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def _plain(self, status: HTTPStatus, text: str, with_body: bool = True) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _answer(self, with_body: bool) -> None:
        if self.headers.get("Host", "").rsplit(":", 1)[0].strip("[]") not in self.server.names:
            self._plain(HTTPStatus.MISDIRECTED_REQUEST, "unknown host", with_body)
            return
        key = key_for(self.path)
        if key is None:
            self._plain(HTTPStatus.BAD_REQUEST, "not an object key", with_body)
            return
        store = self.server.store
        try:
            reply = store.client.get_object(Bucket=store.bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_KEY_CODES:
                self._plain(HTTPStatus.NOT_FOUND, f"no object {key}", with_body)
            else:
                self._plain(HTTPStatus.BAD_GATEWAY, f"the store refused {key}: {code}", with_body)
            return
        except BotoCoreError:
            self._plain(HTTPStatus.BAD_GATEWAY, "the store is not answering", with_body)
            return
        body = reply["Body"]
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type(key, reply.get("ContentType")))
            self.send_header("Content-Length", str(reply["ContentLength"]))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if with_body:
                shutil.copyfileobj(body, self.wfile, CHUNK)
        finally:
            body.close()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        logger.info("%s " + format, self.address_string(), *args)


class ReportServer(ThreadingHTTPServer):
    """Serves ``store``'s objects read-only at ``http://<host>:<port>/<key>``."""

    daemon_threads = True

    def __init__(self, store: ObjectStore, host: str = "127.0.0.1", port: int = DEFAULT_PORT):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise NotLoopback(f"the report server listens on loopback addresses only, not {host}")
        self.store = store
        super().__init__((host, port), _Handler)
        self.names = {host, "localhost"}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    server = ReportServer(open_store(settings), args.host, args.port)
    logger.info("serving s3://%s read-only at %s", settings.bucket, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
