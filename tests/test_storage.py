"""The object store against a real SeaweedFS server: create-only puts, compare-and-swap, errors."""

from __future__ import annotations

import pytest

from cxr_model.config import Settings
from cxr_model.storage import AlreadyExists, ChangedSinceRead, StoreError, open_store, parse_s3_uri


def test_create_only_put_never_overwrites(store):
    store.put_bytes("a/key", b"first", create_only=True)
    with pytest.raises(AlreadyExists):
        store.put_bytes("a/key", b"second", create_only=True)
    assert store.get_bytes("a/key") == b"first"


def test_compare_and_swap_rejects_a_stale_etag(store):
    etag = store.put_bytes("alias.json", b"v1")
    new_etag = store.replace_if_unchanged("alias.json", b"v2", etag)
    assert new_etag != etag
    with pytest.raises(ChangedSinceRead):
        store.replace_if_unchanged("alias.json", b"v3", etag)
    assert store.get_with_etag("alias.json") == (b"v2", new_etag)


def test_listing_and_missing_keys(store):
    for name in ("x/1", "x/2", "y/3"):
        store.put_bytes(name, b"-")
    assert sorted(store.list_keys("x/")) == ["x/1", "x/2"]
    assert store.get_with_etag("nope") is None
    assert not store.exists("nope")


def test_wrong_credentials_are_refused(s3_server, tmp_path, monkeypatch):
    server, _ = s3_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "intruder")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    settings = Settings(s3_endpoint_url=server.endpoint_url, state_dir=tmp_path)
    with pytest.raises(StoreError, match="credentials were refused"):
        open_store(settings)


def test_unreachable_endpoint_is_one_clear_error(tmp_path):
    settings = Settings(s3_endpoint_url="http://127.0.0.1:9", state_dir=tmp_path)
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:9.*CXR_S3_ENDPOINT_URL"):
        open_store(settings)


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(ValueError):
        parse_s3_uri("/local/path")


def test_a_store_that_stops_mid_run_is_one_line_saying_so(tmp_path):
    """Issue 11: not "Could not connect to the endpoint URL: ...?list-type=2..."."""
    from cxr_model import embedded_store

    settings = Settings(state_dir=tmp_path / "state", bucket="cxr-stops")
    try:
        store = open_store(settings)
        store.put_bytes("runs/a.json", b"{}")
        embedded_store.stop(settings.state_dir)  # the store dies between two operations
        for operation in (
            lambda: store.get_bytes("runs/a.json"),
            lambda: list(store.list_keys("runs/")),
            lambda: store.put_bytes("runs/b.json", b"{}"),
            lambda: store.exists("runs/a.json"),
        ):
            with pytest.raises(StoreError) as stopped:
                operation()
            message = str(stopped.value)
            assert message == (
                f"the S3 store at {store.endpoint_url} stopped responding; rerun to resume"
            )
            assert isinstance(stopped.value, ConnectionError)  # tasks still retry it
    finally:
        embedded_store.stop(settings.state_dir)
