"""Remote and archive sources against real servers on loopback: ieee8023 over HTTP, Kaggle folders,
zips and the Kaggle API, S3 prefixes and manifests with URLs. Every test checks what happens to
each file, not merely that nothing raised."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest
from local_servers import QuietFiles, serve

from cxr_model import manifest, sources
from cxr_model.sources import (
    FetchError,
    SourceError,
    SourceRecord,
    fetch_bytes,
    parse_source,
)

FRONTAL = ["PA", "AP", "AP Supine", "AP Erect"]


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr("cxr_model.sources.http.HTTP_BACKOFF_S", 0.01)


@pytest.fixture(scope="module")
def ieee_dir(real_data) -> Path:
    return real_data / "ieee8023"


@pytest.fixture(scope="module")
def mirror(ieee_dir) -> Iterator[str]:
    """A partial ieee8023 mirror: metadata.csv and 53 of its images; 404 for the rest."""
    with serve(partial(QuietFiles, directory=str(ieee_dir))) as url:
        yield url


def outcome(record: SourceRecord) -> bytes | OSError:
    try:
        return record.read()
    except OSError as exc:
        return exc


def read_all(records: list[SourceRecord]) -> list[bytes | OSError]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(outcome, records))


def expected_ieee_rows(ieee_dir: Path, views: list[str]) -> pd.DataFrame:
    """The rows a default ieee8023 source should select, computed here with pandas."""
    meta = pd.read_csv(ieee_dir / "metadata.csv", dtype=str, keep_default_na=False)
    parts = meta["finding"].str.split(r"[,/]", regex=True).map(lambda ps: {p.strip() for p in ps})
    chosen = meta[
        parts.map(lambda p: "COVID-19" in p)
        & (meta["modality"] == "X-ray")
        & meta["view"].isin(views)
    ]
    return chosen.drop_duplicates(["folder", "filename"])


# --- ieee8023 ---------------------------------------------------------------------------------


def test_ieee8023_mirror_selects_rows_and_reads_each_file(mirror, ieee_dir):
    expected = expected_ieee_rows(ieee_dir, FRONTAL)
    on_disk = set(os.listdir(ieee_dir / "images"))
    expected_present = int(expected["filename"].isin(on_disk).sum())
    assert (len(expected), expected_present) == (434, 49)  # this June-2020 metadata, 53 images

    source = parse_source(f"ieee8023:{mirror}")
    records = list(source.records())
    assert [r.original_path for r in records] == (
        expected["folder"] + "/" + expected["filename"]
    ).tolist()
    assert [r.patient_id for r in records] == expected["patientid"].tolist()
    assert [r.metadata["view"] for r in records] == expected["view"].tolist()
    assert {r.label for r in records} == {"covid"}
    assert {r.source for r in records} == {f"ieee8023:{mirror}"}
    first = records[0]
    assert first.metadata["url"] == f"{mirror}/images/{expected['filename'].iloc[0]}"
    assert first.metadata["finding"] == "COVID-19"
    # an HTTP file's fingerprint is a HEAD request, made by ingest's workers when needed
    exists = next(r for r in records if (ieee_dir / r.original_path).exists())
    assert exists.fingerprint().startswith("modified:")
    gone = next(r for r in records if not (ieee_dir / r.original_path).exists())
    assert gone.fingerprint() is None

    results = read_all(records)
    present = missing = 0
    for record, result in zip(records, results, strict=True):
        filename = record.original_path.split("/", 1)[1]
        if filename in on_disk:
            assert result == (ieee_dir / "images" / filename).read_bytes(), record.original_path
            present += 1
        else:
            assert isinstance(result, FetchError), record.original_path
            assert result.status == 404 and result.url == record.metadata["url"]
            assert str(result) == f"HTTP 404 Not Found: {record.metadata['url']}"
            missing += 1
    assert (present, missing) == (expected_present, len(expected) - expected_present)


def test_ieee8023_lateral_views_are_left_out_unless_asked_for(mirror, ieee_dir):
    meta = pd.read_csv(ieee_dir / "metadata.csv", dtype=str, keep_default_na=False)
    on_disk = set(os.listdir(ieee_dir / "images"))
    lateral = meta[(meta["view"] == "L") & meta["filename"].isin(on_disk)]
    assert len(lateral) == 4
    lateral_paths = set("images/" + lateral["filename"])
    default_paths = {r.original_path for r in parse_source(f"ieee8023:{mirror}").records()}
    assert not lateral_paths & default_paths

    only_lateral = list(parse_source(f"ieee8023:{mirror}?views=L").records())
    assert len(only_lateral) == len(expected_ieee_rows(ieee_dir, ["L"]))
    assert {r.metadata["view"] for r in only_lateral} == {"L"}
    assert lateral_paths <= {r.original_path for r in only_lateral}
    by_path = {r.original_path: r for r in only_lateral}
    for path in lateral_paths:
        assert by_path[path].read() == (ieee_dir / path).read_bytes()


@pytest.mark.slow
def test_ingest_reports_404s_per_file_and_stores_the_rest(mirror, ieee_dir, store):
    records = list(parse_source(f"ieee8023:{mirror}").records())
    images = manifest.ingest(store, records)
    errors = [i for i in images if i.read_error]
    stored = [i for i in images if not i.read_error]
    assert (len(stored), len(errors)) == (49, 385)
    assert all(i.read_error.startswith("cannot read: HTTP 404 Not Found: http://") for i in errors)
    assert all(store.exists(i.raw_key) and i.view and i.label == "covid" for i in stored)
    assert len({i.key for i in images}) == len(images)


# --- HTTP behaviour: retries, 404s, timeouts, the size cap ---------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers per path from ``script``: a list of statuses (the last one repeats)."""

    script: dict[str, list[int]] = {}
    bodies: dict[str, bytes] = {}
    delays: dict[str, float] = {}
    seen: Counter = Counter()
    lock = threading.Lock()

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.lock:
            self.seen[self.path] += 1
            attempt = self.seen[self.path]
        time.sleep(self.delays.get(self.path, 0))
        statuses = self.script.get(self.path, [404])
        status = statuses[min(attempt, len(statuses)) - 1]
        body = self.bodies.get(self.path, b"") if status == 200 else b"nope"
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "ftp://127.0.0.1/etc/passwd")
        if self.path != "/unsized":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    class Handler(_Scripted):
        script = {
            "/flaky.png": [500, 500, 200],
            "/broken.png": [500],
            "/gone.png": [404],
            "/forbidden.png": [403],
            "/down/metadata.csv": [503],
            "/big.png": [200],
            "/unsized": [200],
            "/slow.png": [200],
            "/to-file": [302],
        }
        bodies = {
            "/flaky.png": b"flaky-but-fine",
            "/big.png": b"b" * 5000,
            "/unsized": b"u" * (2 * 1024 * 1024),
            "/slow.png": b"slow",
        }
        delays = {"/slow.png": 1.0}
        seen = Counter()
        lock = threading.Lock()

    with serve(Handler) as url:
        yield url, Handler


def test_5xx_is_retried_with_backoff_and_4xx_is_not(scripted):
    url, handler = scripted
    assert fetch_bytes(f"{url}/flaky.png") == b"flaky-but-fine"
    assert handler.seen["/flaky.png"] == 3

    with pytest.raises(FetchError) as gone:
        fetch_bytes(f"{url}/gone.png")
    assert (gone.value.status, handler.seen["/gone.png"]) == (404, 1)
    with pytest.raises(FetchError) as forbidden:
        fetch_bytes(f"{url}/forbidden.png")
    assert (forbidden.value.status, handler.seen["/forbidden.png"]) == (403, 1)

    with pytest.raises(FetchError) as broken:
        fetch_bytes(f"{url}/broken.png")
    assert broken.value.status == 500 and handler.seen["/broken.png"] == sources.HTTP_ATTEMPTS == 3
    assert str(broken.value) == f"HTTP 500 Internal Server Error: {url}/broken.png"

    with pytest.raises(FetchError, match="redirect to a non-HTTP address refused"):
        fetch_bytes(f"{url}/to-file")
    with pytest.raises(FetchError, match="only http:// and https://"):
        fetch_bytes("file:///etc/passwd")


def test_manifest_rows_with_urls_are_fetched_per_file(scripted, tmp_path, store):
    url, handler = scripted
    store.put_bytes("inbox/s3.png", b"from-s3")
    (tmp_path / "local.png").write_bytes(b"from-disk")
    (tmp_path / "m.csv").write_text(
        "uri,label,patient_id,source,view,license\n"
        f"{url}/flaky.png,covid,P1,webby,PA,CC BY 4.0\n"
        f"{url}/gone.png,normal,P2,webby,AP,\n"
        f"s3://{store.bucket}/inbox/s3.png,normal,P3,,AP,\n"
        f"s3://{store.bucket}/inbox/absent.png,normal,P4,,AP,\n"
        "local.png,covid,P5,,PA,\n"
    )
    records = list(parse_source(f"manifest:{tmp_path / 'm.csv'}", store=store).records())
    name = f"manifest:{tmp_path / 'm.csv'}"
    assert [(r.source, r.label, r.patient_id) for r in records] == [
        ("webby", "covid", "P1"),
        ("webby", "normal", "P2"),
        (name, "normal", "P3"),
        (name, "normal", "P4"),
        (name, "covid", "P5"),
    ]
    assert dict(records[0].metadata) == {
        "view": "PA",
        "license": "CC BY 4.0",
        "url": f"{url}/flaky.png",
    }
    flaky, gone, s3, absent, local = read_all(records)
    assert flaky == b"flaky-but-fine" and handler.seen["/flaky.png"] == 3
    assert isinstance(gone, FetchError) and gone.status == 404 and handler.seen["/gone.png"] == 1
    assert s3 == b"from-s3"
    assert isinstance(absent, FetchError) and absent.status == 404
    assert absent.url == f"s3://{store.bucket}/inbox/absent.png"
    assert local == b"from-disk"


def test_unreachable_metadata_is_fatal(scripted):
    url, handler = scripted
    with pytest.raises(
        SourceError, match=rf"cannot read ieee8023 metadata {url}/down/metadata.csv"
    ):
        list(parse_source(f"ieee8023:{url}/down").records())
    assert handler.seen["/down/metadata.csv"] == 3  # 503 is retried, then given up
    with pytest.raises(SourceError, match=r"Not Found \(HTTP 404\)"):
        list(parse_source(f"ieee8023:{url}/nowhere").records())
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceError, match="cannot connect"):
        list(parse_source(f"ieee8023:http://127.0.0.1:{port}").records())


def test_size_cap_stops_http_reads(scripted, monkeypatch):
    url, handler = scripted
    monkeypatch.setattr("cxr_model.sources.reading.MAX_FILE_BYTES", 1000)
    with pytest.raises(FetchError, match=r"file too large \(5000 bytes > cap 1000\)"):
        fetch_bytes(f"{url}/big.png")
    # No Content-Length: the stream is cut off just past the cap, not read to its end.
    with pytest.raises(FetchError, match=r"file too large \(more than 1000 bytes"):
        fetch_bytes(f"{url}/unsized")
    assert handler.seen["/big.png"] == handler.seen["/unsized"] == 1  # not retried


def test_timeouts_are_retried_then_reported(scripted, monkeypatch):
    url, handler = scripted
    monkeypatch.setattr("cxr_model.sources.http.HTTP_TIMEOUT_S", 0.2)
    with pytest.raises(FetchError, match="timed out") as slow:
        fetch_bytes(f"{url}/slow.png")
    assert slow.value.status is None and handler.seen["/slow.png"] == 3


# --- Kaggle: folders, zips, the API -------------------------------------------------------------


@pytest.fixture(scope="module")
def kaggle_dir(real_data) -> Path:
    return real_data / "kaggle-pneumonia"


def kaggle_files(kaggle_dir: Path) -> dict[str, bytes]:
    """``train/NORMAL/<file>`` → bytes for the 16 shared images."""
    root = kaggle_dir / "chest_xray"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.jpeg")}


def test_kaggle_folder_reads_normal_images_with_patient_ids(kaggle_dir):
    files = kaggle_files(kaggle_dir)
    assert len(files) == 16
    for spec in (f"kaggle:{kaggle_dir}", f"kaggle:{kaggle_dir / 'chest_xray'}"):
        records = list(parse_source(spec).records())
        assert sorted(r.original_path for r in records) == sorted(files)
        assert {r.label for r in records} == {"normal"}
        assert all(dict(r.metadata) == {"split": "train", "license": "CC BY 4.0"} for r in records)
        by_path = {r.original_path: r for r in records}
        assert by_path["train/NORMAL/IM-0182-0001.jpeg"].patient_id == "IM-0182"
        assert by_path["train/NORMAL/IM-0505-0001-0002.jpeg"].patient_id == "IM-0505"
        assert all(by_path[p].read() == data for p, data in files.items())


def test_kaggle_pneumonia_is_left_out_unless_included(kaggle_dir, tmp_path):
    shutil.copytree(kaggle_dir, tmp_path / "k")
    root = tmp_path / "k" / "chest_xray"
    (root / "train/PNEUMONIA").mkdir()
    (root / "train/PNEUMONIA/person1_bacteria_1.jpeg").write_bytes(b"p1")
    (root / "test/NORMAL").mkdir(parents=True)
    (root / "test/NORMAL/NORMAL2-IM-1427-0001.jpeg").write_bytes(b"n2")
    (root / "test/NORMAL/link.jpeg").symlink_to(root / "train/PNEUMONIA/person1_bacteria_1.jpeg")

    default = {r.original_path: r for r in parse_source(f"kaggle:{tmp_path / 'k'}").records()}
    assert len(default) == 18 and {r.label for r in default.values()} == {"normal"}
    assert default["test/NORMAL/NORMAL2-IM-1427-0001.jpeg"].patient_id == "NORMAL2-IM-1427"
    assert default["test/NORMAL/NORMAL2-IM-1427-0001.jpeg"].metadata["split"] == "test"
    with pytest.raises(FetchError, match="symbolic link not followed"):
        default["test/NORMAL/link.jpeg"].read()

    spec = f"kaggle:{tmp_path / 'k'}?pneumonia=include"
    included = {r.original_path: r for r in parse_source(spec).records()}
    pneumonia = included["train/PNEUMONIA/person1_bacteria_1.jpeg"]
    assert (pneumonia.label, pneumonia.patient_id, pneumonia.read()) == (
        "pneumonia",
        "person1",
        b"p1",
    )
    assert len(included) == 19


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            archive.writestr(info, target)
    return path


def kaggle_zip(path: Path, files: dict[str, bytes]) -> Path:
    """Kaggle's archive shape: an extra top folder, a nested duplicate copy, __MACOSX debris."""
    members = {f"archive/chest_xray/{name}": data for name, data in files.items()}
    members |= {f"archive/chest_xray/chest_xray/{name}": data for name, data in files.items()}
    members["archive/chest_xray/__MACOSX/train/NORMAL/._IM-0182-0001.jpeg"] = b"mac"
    members["archive/chest_xray/train/PNEUMONIA/person7_virus_12.jpeg"] = b"pneu"
    members["archive/chest_xray/train/NORMAL/.DS_Store"] = b"ds"
    return make_zip(path, members)


def test_kaggle_zip_reads_members_without_extracting(kaggle_dir, tmp_path, monkeypatch):
    files = kaggle_files(kaggle_dir)
    archive = kaggle_zip(tmp_path / "chest-xray.zip", files)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    records = list(parse_source(f"kaggle:{archive}").records())
    assert sorted(r.original_path for r in records) == sorted(files)  # no nested copies
    assert {r.label for r in records} == {"normal"}
    results = read_all(records)
    assert all(res == files[r.original_path] for r, res in zip(records, results, strict=True))
    assert list(work.iterdir()) == []
    assert all(r.fingerprint and r.fingerprint.startswith("crc") for r in records)

    monkeypatch.setattr("cxr_model.sources.reading.MAX_FILE_BYTES", 1000)
    capped = read_all(list(parse_source(f"kaggle:{archive}").records()))
    assert all(isinstance(res, FetchError) and "file too large" in str(res) for res in capped)
    assert len(capped) == 16


def test_unsafe_zip_entries_are_reported_never_written(tmp_path, monkeypatch):
    archive = make_zip(
        tmp_path / "evil.zip",
        {
            "chest_xray/train/NORMAL/IM-0001-0001.jpeg": b"good",
            "../evil.png": b"evil",
            "/tmp/abs-evil.png": b"evil",
            "chest_xray/train/NORMAL/../../../../evil2.png": b"evil",
        },
        symlinks={"chest_xray/train/NORMAL/link.jpeg": "/etc/passwd"},
    )
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    records = list(parse_source(f"kaggle:{archive}").records())
    results = dict(zip([r.original_path for r in records], read_all(records), strict=True))
    assert results.pop("train/NORMAL/IM-0001-0001.jpeg") == b"good"
    reasons = {name: str(error) for name, error in results.items()}
    assert set(reasons) == {
        "../evil.png",
        "/tmp/abs-evil.png",
        "chest_xray/train/NORMAL/../../../../evil2.png",
        "chest_xray/train/NORMAL/link.jpeg",
    }
    assert all(isinstance(e, FetchError) for e in results.values())
    assert "unsafe zip entry: path with '..' entry" in reasons["../evil.png"]
    assert "unsafe zip entry: absolute path entry" in reasons["/tmp/abs-evil.png"]
    assert "unsafe zip entry: symbolic link entry" in reasons["chest_xray/train/NORMAL/link.jpeg"]
    assert all(r.label is None for r in records if r.original_path in reasons)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/abs-evil.png").exists()
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_missing_kaggle_layout_and_path_are_clear_errors(tmp_path):
    make_zip(tmp_path / "other.zip", {"covid/a.png": b"a"})
    with pytest.raises(SourceError, match="no Kaggle chest-xray-pneumonia files"):
        list(parse_source(f"kaggle:{tmp_path / 'other.zip'}").records())
    with pytest.raises(SourceError, match="does not exist"):
        list(parse_source(f"kaggle:{tmp_path / 'nope'}").records())


class _KaggleApi(BaseHTTPRequestHandler):
    credentials = ("someone", "s3cret")
    archive = b""
    requests: list[tuple[str, str | None]] = []

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        self.requests.append((self.path, auth))
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        if self.path == "/api/v1/datasets/download/paultimothymooney/chest-xray-pneumonia":
            if auth != f"Basic {token}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(302)  # Kaggle answers with a signed storage URL
            self.send_header("Location", "/storage/archive.zip?sig=abc")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/storage/archive.zip?sig=abc":
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(self.archive)))
            self.end_headers()
            self.wfile.write(self.archive)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def kaggle_api(kaggle_dir, tmp_path, monkeypatch) -> Iterator[tuple[str, type[_KaggleApi]]]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in kaggle_files(kaggle_dir).items():
            archive.writestr(f"chest_xray/{name}", data)

    class Api(_KaggleApi):
        requests = []

    Api.archive = buffer.getvalue()
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with serve(Api) as url:
        monkeypatch.setenv("CXR_KAGGLE_API_URL", f"{url}/api/v1")
        yield url, Api


def test_kaggle_api_download_with_basic_auth(kaggle_api, kaggle_dir, tmp_path, monkeypatch):
    url, api = kaggle_api
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret")
    source = parse_source("kaggle:", cache_dir=tmp_path / "cache")
    assert source.name == "kaggle:paultimothymooney/chest-xray-pneumonia"
    records = list(source.records())
    files = kaggle_files(kaggle_dir)
    assert {r.original_path: r.read() for r in records} == files
    token = base64.b64encode(b"someone:s3cret").decode()
    assert api.requests == [
        ("/api/v1/datasets/download/paultimothymooney/chest-xray-pneumonia", f"Basic {token}"),
        ("/storage/archive.zip?sig=abc", None),  # credentials never follow the redirect
    ]
    cached = list((tmp_path / "cache").rglob("*"))
    assert [p.name for p in cached if p.is_file()] == [
        "paultimothymooney__chest-xray-pneumonia.zip"
    ]
    assert len(list(source.records())) == 16 and len(api.requests) == 2  # cached zip reused


def test_kaggle_api_credentials_from_kaggle_json_and_refusals(kaggle_api, tmp_path):
    url, api = kaggle_api
    with pytest.raises(SourceError, match="set KAGGLE_USERNAME and KAGGLE_KEY"):
        list(parse_source("kaggle:", cache_dir=tmp_path / "c0").records())
    assert api.requests == []

    config = tmp_path / "home" / ".kaggle"
    config.mkdir(parents=True)
    (config / "kaggle.json").write_text('{"username": "someone", "key": "wrong"}')
    with pytest.raises(
        SourceError, match=r"HTTP 401 .*check KAGGLE_USERNAME/KAGGLE_KEY"
    ) as refused:
        list(parse_source("kaggle:", cache_dir=tmp_path / "c1").records())
    assert "wrong" not in str(refused.value)
    assert len(api.requests) == 1  # 401 is not retried

    (config / "kaggle.json").write_text('{"username": "someone", "key": "s3cret"}')
    records = list(parse_source("kaggle:", cache_dir=tmp_path / "c2").records())
    assert len(records) == 16 and {r.label for r in records} == {"normal"}


# --- S3 prefixes --------------------------------------------------------------------------------


def put_all(store, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        store.put_bytes(key, data)


def test_s3_prefix_in_the_study_layout(store, monkeypatch):
    put_all(
        store,
        {
            "inbox/Train/covid/a.png": b"A",
            "inbox/Train/normal/b.png": b"BB",
            "inbox/Val/COVID/c.png": b"C" * 3000,
            "inbox/README.md": b"not an image",
            "inbox/manifest.csv": b"file,patient_id\nTrain/covid/a.png,P1\n",
            "inbox2/Train/covid/x.png": b"other prefix",
        },
    )
    with pytest.raises(SourceError, match="needs an object store"):
        parse_source(f"s3://{store.bucket}/inbox")
    source = parse_source(f"s3://{store.bucket}/inbox", store=store)
    records = list(source.records())
    assert [(r.original_path, r.label, r.patient_id) for r in records] == [
        ("Train/covid/a.png", "covid", "P1"),
        ("Train/normal/b.png", "normal", None),
        ("Val/COVID/c.png", "covid", None),
    ]
    assert {r.source for r in records} == {f"s3://{store.bucket}/inbox"}
    assert records[0].metadata["url"] == f"s3://{store.bucket}/inbox/Train/covid/a.png"
    assert read_all(records) == [b"A", b"BB", b"C" * 3000]
    assert all(r.fingerprint for r in records)
    store.put_bytes("inbox/Train/normal/b.png", b"changed")
    again = list(source.records())
    assert [r.fingerprint == a.fingerprint for r, a in zip(records, again, strict=True)] == [
        True,
        False,
        True,
    ]

    monkeypatch.setattr("cxr_model.sources.reading.MAX_FILE_BYTES", 1000)
    with pytest.raises(FetchError, match=r"file too large \(3000 bytes > cap 1000\)"):
        records[2].read()


def test_s3_flat_layout_and_errors(store):
    put_all(store, {"flat/covid/a.png": b"A", "flat/normal/deep/b.png": b"B"})
    records = list(parse_source(f"s3://{store.bucket}/flat/", store=store).records())
    assert [(r.original_path, r.label) for r in records] == [
        ("covid/a.png", "covid"),
        ("normal/deep/b.png", "normal"),
    ]
    store.client.delete_object(Bucket=store.bucket, Key="flat/covid/a.png")
    gone = outcome(records[0])
    assert isinstance(gone, FetchError) and gone.status == 404
    with pytest.raises(SourceError, match="has no class folders"):
        list(parse_source(f"s3://{store.bucket}/empty", store=store).records())
    with pytest.raises(SourceError, match="cannot list"):
        list(parse_source("s3://no-such-bucket-cxr/x", store=store).records())


class _CountingFiles(QuietFiles):
    """A static mirror that counts the requests it answers, by method."""

    counts: Counter = Counter()

    def do_GET(self) -> None:
        type(self).counts["GET " + ("image" if "/images/" in self.path else "other")] += 1
        super().do_GET()

    def do_HEAD(self) -> None:
        type(self).counts["HEAD"] += 1
        super().do_HEAD()


@pytest.mark.slow
def test_rerun_of_an_unchanged_http_mirror_downloads_no_image(ieee_dir, store):
    handler = type("Counting", (_CountingFiles,), {"counts": Counter()})
    with serve(partial(handler, directory=str(ieee_dir))) as url:
        first = manifest.ingest(store, parse_source(f"ieee8023:{url}").records())
        fetched = sum(1 for image in first if not image.read_error)
        assert fetched == handler.counts["GET image"] - sum(1 for i in first if i.read_error)
        handler.counts.clear()
        again = manifest.ingest(store, parse_source(f"ieee8023:{url}").records())
    missing = sum(1 for image in again if image.read_error)
    assert [i.sha256 for i in again if not i.read_error] == [
        i.sha256 for i in first if not i.read_error
    ]
    assert handler.counts["GET image"] == missing  # only the 404s are asked for again
    assert handler.counts["HEAD"] == len(again)
