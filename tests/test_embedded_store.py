"""The embedded store: started once per state folder, reused, stopped, data kept across restarts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from cxr_model import embedded_store
from cxr_model.config import Settings
from cxr_model.storage import open_store


def test_commands_share_one_server_and_data_survives_a_restart(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", bucket="cxr-embedded")
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            servers = list(
                pool.map(lambda _: embedded_store.ensure_running(settings.state_dir), range(3))
            )
        assert len({server.pid for server, _ in servers}) == 1  # three commands, one server
        server, creds = servers[0]
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        assert (settings.state_dir / "s3" / "credentials.json").stat().st_mode & 0o077 == 0

        store = open_store(settings)
        store.put_bytes("kept", b"across restarts")
        assert embedded_store.stop(settings.state_dir) is True
        assert embedded_store.status(settings.state_dir) is None
        assert embedded_store.stop(settings.state_dir) is False

        assert open_store(settings).get_bytes("kept") == b"across restarts"
        restarted = embedded_store.status(settings.state_dir)
        assert restarted is not None and restarted.pid != server.pid
        assert embedded_store.load_or_create_credentials(settings.state_dir / "s3") == creds
    finally:
        embedded_store.stop(settings.state_dir)


def test_anonymous_and_wrong_credentials_are_refused(s3_server):
    server, creds = s3_server
    anonymous = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    with pytest.raises(ClientError) as refused:
        anonymous.put_object(Bucket=embedded_store.PROBE_BUCKET, Key="anon", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    wrong = embedded_store.Credentials(access_key=creds.access_key, secret_key="not-the-secret")
    assert embedded_store.probe(server.endpoint_url, wrong) is False
    assert embedded_store.probe(server.endpoint_url, creds) is True
