"""The report server and links: stored outputs open in a browser, read-only, from loopback only."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from cxr_model.html_report import data_uri
from cxr_model.links import LinkSettings, object_link
from cxr_model.report_server import NotLoopback, ReportServer, key_for
from cxr_model.storage import ObjectStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def server(store: ObjectStore) -> Iterator[ReportServer]:
    running = ReportServer(store, "127.0.0.1", 0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join(timeout=10)


def raw(server: ReportServer, method: str, path: str, host: str | None = None, body=None):
    """The status, headers and body of a request sent with ``path`` exactly as written."""
    address, port = server.server_address[:2]
    connection = http.client.HTTPConnection(address, port, timeout=10)
    headers = {"Host": host} if host else {}
    connection.request(method, path, body=body, headers=headers)
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    return reply.status, reply.headers, data


def test_get_answers_each_object_with_a_type_a_browser_shows(
    store: ObjectStore, server: ReportServer
) -> None:
    files = {
        "runs/retrain/r1/evaluation/evaluation.html": (b"<h1>report</h1>", "text/html"),
        "runs/retrain/r1/evaluation/roc.png": (PNG, "image/png"),
        "runs/score/s1/predictions.csv": (b"path,probability\na.png,0.9\n", "text/csv"),
        "models/cxr-covid/v1/model_card.md": (b"# Model card\n", "text/plain"),
    }
    for key, (data, _) in files.items():
        store.put_bytes(key, data)
    for key, (data, kind) in files.items():
        reply = httpx.get(f"{server.url}/{key}")
        assert reply.status_code == 200, key
        assert reply.content == data
        assert reply.headers["content-type"].split(";")[0] == kind
        assert reply.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(f"{server.url}/runs/retrain/r1/evaluation/roc.png")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(PNG))


def test_a_folder_answers_its_index_page(store: ObjectStore, server: ReportServer) -> None:
    store.put_bytes("runs/retrain/r1/quality/data_docs/index.html", b"<p>docs</p>")
    reply = httpx.get(f"{server.url}/runs/retrain/r1/quality/data_docs/")
    assert reply.status_code == 200 and reply.content == b"<p>docs</p>"


def test_a_missing_key_is_404(server: ReportServer) -> None:
    reply = httpx.get(f"{server.url}/runs/none/report.html")
    assert reply.status_code == 404
    assert "runs/none/report.html" in reply.text


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_nothing_but_reading_is_allowed(
    store: ObjectStore, server: ReportServer, method: str
) -> None:
    store.put_bytes("runs/x/report.html", b"original")
    status, headers, _ = raw(server, method, "/runs/x/report.html", body=b"changed")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert store.get_bytes("runs/x/report.html") == b"original"


@pytest.mark.parametrize(
    "path",
    [
        "/../other/secret.txt",
        "/%2e%2e/other/secret.txt",
        "/runs/../../other/secret.txt",
        "/runs/%2E%2E/%2e%2e/other/secret.txt",
        "/runs//secret.txt",
        "/runs/./secret.txt",
        "/..%2fother%2fsecret.txt",
        "/runs\\..\\..\\other\\secret.txt",
    ],
)
def test_no_path_leaves_the_bucket(store: ObjectStore, server: ReportServer, path: str) -> None:
    other = store.in_bucket(f"{store.bucket}-other")
    other.ensure_bucket()
    other.put_bytes("other/secret.txt", b"secret")
    other.put_bytes("secret.txt", b"secret")
    status, _, body = raw(server, "GET", path)
    assert status == 400
    assert b"secret" not in body


def test_key_for_maps_paths_to_plain_keys() -> None:
    assert key_for("/runs/a%20b/report.html?x=1") == "runs/a b/report.html"
    assert key_for("/") == "index.html"
    assert key_for("/runs/..") is None


def test_requests_for_another_host_are_refused(store: ObjectStore, server: ReportServer) -> None:
    store.put_bytes("runs/x/report.html", b"report")
    status, _, body = raw(server, "GET", "/runs/x/report.html", host="attacker.example:80")
    assert status == 421 and b"report" not in body
    port = server.server_address[1]
    assert raw(server, "GET", "/runs/x/report.html", host=f"localhost:{port}")[0] == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_it_listens_on_loopback_only(store: ObjectStore, host: str) -> None:
    with pytest.raises(NotLoopback, match="loopback"):
        ReportServer(store, host, 0)


def test_links_point_at_the_report_server_when_there_is_one(
    store: ObjectStore, server: ReportServer
) -> None:
    store.put_bytes("runs/score/s 1/predictions.csv", b"a,b\n")
    link = object_link(
        store, "runs/score/s 1/predictions.csv", LinkSettings(reports_url=server.url)
    )
    assert link == f"{server.url}/runs/score/s%201/predictions.csv"
    assert httpx.get(link).content == b"a,b\n"


def test_links_are_presigned_get_urls_without_a_report_server(store: ObjectStore) -> None:
    store.put_bytes("runs/score/s1/predictions.csv", b"a,b\n")
    link = object_link(store, "runs/score/s1/predictions.csv", LinkSettings(reports_url=None))
    query = urlsplit(link).query
    assert "X-Amz-Expires=604800" in query and "X-Amz-Signature=" in query
    secret = store.client._request_signer._credentials.secret_key
    assert secret not in link
    assert httpx.get(link).content == b"a,b\n"  # no credentials needed
    short = object_link(
        store,
        "runs/score/s1/predictions.csv",
        LinkSettings(reports_url=None, link_expiry_seconds=600),
    )
    assert "X-Amz-Expires=600" in urlsplit(short).query


def test_link_expiry_cannot_pass_the_sigv4_maximum() -> None:
    with pytest.raises(ValueError):
        LinkSettings(link_expiry_seconds=8 * 24 * 3600)


def test_data_uri_carries_the_bytes_and_their_type() -> None:
    assert data_uri("roc.png", b"\x89PNG").startswith("data:image/png;base64,iVBORw")
