"""The embedded store: started once per state folder, reused, stopped, data kept across restarts."""

from __future__ import annotations

import json
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from cxr_model import embedded_store
from cxr_model.config import Settings
from cxr_model.storage import open_store


@pytest.mark.slow
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


# --- issue 11, item 1: only the S3 port may answer, and only with credentials -------------------

# Paths that read, write or administer data on SeaweedFS's master, volume, filer and admin ports.
# (Read-only status pages stay: the master's "/" and "/cluster/status", the volume's "/status".)
ANONYMOUS_PROBES = [
    ("GET", "/buckets/{bucket}/secret.txt"),
    ("GET", "/buckets/{bucket}/"),
    ("PUT", "/buckets/{bucket}/planted.txt"),
    ("POST", "/buckets/{bucket}/planted.txt"),
    ("DELETE", "/buckets/{bucket}/secret.txt"),
    ("GET", "/dir/status"),
    ("GET", "/dir/assign"),
    ("GET", "/dir/lookup?volumeId=1"),
    ("GET", "/col/delete?collection={bucket}"),
    ("GET", "/vol/status"),
    ("GET", "/{fid}"),
    ("PUT", "/{fid}"),
    ("DELETE", "/{fid}"),
]
REFUSED = {400, 401, 403, 404, 405}  # any client error: nothing served, nothing changed


def _listening_ports(pid: int) -> set[int]:
    import psutil

    process = psutil.Process(pid)
    ports = set()
    for proc in [process, *process.children(recursive=True)]:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                ports.add(conn.laddr.port)
    return ports


def _volume_fids(data_dir) -> list[str]:
    """File ids of stored needles, read from the volume index files (volume,needle+cookie)."""
    fids = []
    for idx in data_dir.rglob("*.idx"):
        volume = idx.stem.rsplit("_", 1)[-1]
        raw = idx.read_bytes()
        for offset in range(0, len(raw) - 15, 16):
            needle = int.from_bytes(raw[offset : offset + 8], "big")
            if needle:
                fids.append(f"{volume},{needle:x}00000000")
    return fids


def _refused_over_http(port: int, method: str, path: str) -> int | None:
    """The HTTP status, or None when the port does not speak plain HTTP (refused/reset/TLS)."""
    import httpx

    try:
        reply = httpx.request(method, f"http://127.0.0.1:{port}{path}", content=b"x", timeout=5)
    except httpx.HTTPError:
        return None
    return reply.status_code


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def _grpc_serves_anonymously(port: int) -> bool:
    """True when an HTTP/2 client without the store's certificate gets an answer on ``port``.

    Tried both in clear text (how SeaweedFS's gRPC ports listen by default) and over TLS
    without a client certificate; a server that accepts the client answers with a SETTINGS frame.
    """
    import socket
    import ssl

    def answers(wrap) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with wrap(raw) as conn:
                    conn.sendall(H2_PREFACE)
                    reply = conn.recv(9)
                    return len(reply) == 9 and reply[3] == 0x4  # a SETTINGS frame
        except (OSError, ssl.SSLError):
            return False

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return answers(lambda raw: raw) or answers(context.wrap_socket)


@pytest.mark.slow
def test_every_port_but_s3_refuses_anonymous_access(s3_server, tmp_path):
    server, creds = s3_server
    client = embedded_store.s3_client(server.endpoint_url, creds)
    bucket = "cxr-doors"
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError:
        pass
    client.put_object(Bucket=bucket, Key="secret.txt", Body=b"patient data")
    fids = _volume_fids(Path(server.data_dir)) or ["1,0100000000"]

    ports = _listening_ports(server.pid)
    s3_port = int(server.endpoint_url.rsplit(":", 1)[1])
    assert s3_port in ports and len(ports) > 1  # the store opens more than S3: check them all
    for port in sorted(ports - {s3_port}):
        for method, template in ANONYMOUS_PROBES:
            for fid in fids[:3]:
                path = template.format(bucket=bucket, fid=fid)
                status = _refused_over_http(port, method, path)
                assert status is None or status in REFUSED, (
                    f"port {port} answered {status} to anonymous {method} {path}"
                )
        if _refused_over_http(port, "GET", "/") is None:  # not HTTP: a gRPC port
            assert not _grpc_serves_anonymously(port), f"gRPC port {port} serves anyone"

    # nothing was deleted or planted behind S3's back, and S3 still works with credentials
    assert client.get_object(Bucket=bucket, Key="secret.txt")["Body"].read() == b"patient data"
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == ["secret.txt"]
    anonymous = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    with pytest.raises(ClientError):
        anonymous.get_object(Bucket=bucket, Key="secret.txt")


def test_state_folder_is_private(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", bucket="cxr-private")
    settings.state_dir.mkdir(mode=0o755)
    try:
        store = open_store(settings)
        store.put_bytes("x-ray.png", b"private pixels")
        embedded_store.stop(settings.state_dir)
        assert settings.state_dir.stat().st_mode & 0o777 == 0o700
        folder = settings.state_dir / "s3"
        checked = 0
        for path in [folder, *folder.rglob("*")]:
            if path.is_symlink() or path.is_socket():
                continue
            mode = path.stat().st_mode & 0o777
            expected = 0o700 if path.is_dir() else 0o600
            if path.suffix == ".vif":  # volume info written by SeaweedFS after start
                continue
            assert mode == expected, f"{path} has mode {oct(mode)}"
            checked += 1
        assert any(folder.rglob("*.dat")) and checked > 5
    finally:
        embedded_store.stop(settings.state_dir)


# --- issue 11, item 10: a pid recorded for a store that died may now be someone else's ----------


@pytest.mark.slow
def test_a_stale_record_never_signals_an_unrelated_process(tmp_path, caplog):
    state_dir = tmp_path / "state"
    folder = state_dir / "s3"
    folder.mkdir(parents=True)
    unrelated = subprocess.Popen(["sleep", "60"])
    record = {
        "endpoint_url": "http://127.0.0.1:9",
        "pid": unrelated.pid,  # the store died and its pid went to this process
        "data_dir": str(folder / "data"),
        "ports": {},
    }
    (folder / "server.json").write_text(json.dumps(record))
    try:
        with caplog.at_level(logging.WARNING, logger="cxr_model.embedded_store"):
            assert embedded_store.status(state_dir) is None
            assert unrelated.poll() is None
            (folder / "server.json").write_text(json.dumps(record))
            assert embedded_store.stop(state_dir) is False
            assert unrelated.poll() is None
            (folder / "server.json").write_text(json.dumps(record))
            server, _ = embedded_store.ensure_running(state_dir)  # what any store command does
        assert unrelated.poll() is None, "an unrelated process was signalled"
        assert server.pid != unrelated.pid
        assert f"process {unrelated.pid} is not this store's SeaweedFS" in caplog.text
        assert "stale record" in caplog.text
    finally:
        embedded_store.stop(state_dir)
        unrelated.kill()
        unrelated.wait()
