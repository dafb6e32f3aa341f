"""Sources: self-sorted folders in both layouts, CSV manifests, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from cxr_model.sources import (
    IEEE8023_BASE_URL,
    FetchError,
    FolderSource,
    Ieee8023Filters,
    Ieee8023Source,
    KaggleSource,
    ManifestSource,
    RefusedFile,
    SourceError,
    ieee8023_label,
    kaggle_patient_id,
    parse_source,
)

T = TypeVar("T")


def touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_study_layout_reads_train_and_val_class_folders(tmp_path):
    for name in ("Train/covid/a.png", "Train/normal/b.png", "Val/COVID/c.png", "Val/normal/d.jpg"):
        touch(tmp_path / name)
    records = list(parse_source(f"folder:{tmp_path}").records())
    assert [(r.original_path, r.label) for r in records] == [
        ("Train/covid/a.png", "covid"),
        ("Train/normal/b.png", "normal"),
        ("Val/COVID/c.png", "covid"),
        ("Val/normal/d.jpg", "normal"),
    ]
    assert records[0].read() == b"x"


def test_local_files_carry_a_size_and_mtime_fingerprint(tmp_path):
    touch(tmp_path / "covid/a.png", b"one")
    touch(tmp_path / "covid/b.png", b"two")
    before = {r.original_path: r.fingerprint for r in FolderSource(tmp_path).records()}
    touch(tmp_path / "covid/b.png", b"three")
    after = {r.original_path: r.fingerprint for r in FolderSource(tmp_path).records()}
    assert before["covid/a.png"] == after["covid/a.png"] is not None
    assert before["covid/b.png"] != after["covid/b.png"]


def test_flat_layout_with_patient_ids_from_manifest(tmp_path):
    touch(tmp_path / "covid/a.png")
    touch(tmp_path / "normal/b.png")
    touch(tmp_path / "normal/notes.txt")  # not an image, but still listed: validation decides
    (tmp_path / "manifest.csv").write_text("file,label,patient_id\ncovid/a.png,covid,P1\n")
    records = {r.original_path: r for r in FolderSource(tmp_path).records()}
    assert set(records) == {"covid/a.png", "normal/b.png", "normal/notes.txt"}
    assert records["covid/a.png"].patient_id == "P1"
    assert records["normal/b.png"].patient_id is None


def finishes(work: Callable[[], T], seconds: float = 10) -> T:
    """``work()``'s result, failing the test (instead of hanging it) when it takes too long.

    The work runs in a daemon thread, so a read stuck for good cannot keep pytest from exiting.
    """
    done: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            done.append((True, work()))
        except BaseException as exc:  # handed to the test's thread below
            done.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not done:
        pytest.fail(f"still running after {seconds} s: a read hangs")
    ok, value = done[0]
    if not ok:
        raise value
    return value


def outcome(record) -> str:
    """What reading a record gives: ``read <n> bytes`` or the error's message."""
    try:
        return f"read {len(finishes(record.read))} bytes"
    except OSError as exc:
        return str(exc)


def test_symlinks_are_not_followed_out_of_the_folder(tmp_path):
    outside = tmp_path / "secret.png"
    touch(outside)
    touch(tmp_path / "src/covid/a.png")
    (tmp_path / "src/covid/link.png").symlink_to(outside)
    records = {r.original_path: r for r in FolderSource(tmp_path / "src").records()}
    assert list(records) == ["covid/a.png", "covid/link.png"]  # the link has a row of its own
    assert outcome(records["covid/a.png"]) == "read 1 bytes"
    with pytest.raises(RefusedFile, match="^skipped: symbolic link not followed: .*link.png$"):
        records["covid/link.png"].read()


def test_symlinked_class_and_split_folders_are_refused_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    for n in range(3):
        touch(elsewhere / f"{n}.png")
    touch(tmp_path / "src/Train/normal/a.png")
    (tmp_path / "src/Train/covid").symlink_to(elsewhere)
    (tmp_path / "src/Val").symlink_to(elsewhere)
    records = {r.original_path: r for r in FolderSource(tmp_path / "src").records()}
    assert sorted(records) == ["Train/covid", "Train/normal/a.png", "Val"]
    for name in ("Train/covid", "Val"):
        assert records[name].label is None
        assert outcome(records[name]).startswith("skipped: symbolic link not followed")


def test_fifos_sockets_and_swapped_files_are_reported_without_hanging(tmp_path):
    touch(tmp_path / "covid/a.png")
    touch(tmp_path / "covid/swapped.png")
    os.mkfifo(tmp_path / "covid/fifo.png")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "covid/sock.png"))
        records = {r.original_path: r for r in FolderSource(tmp_path).records()}
        # replaced by a FIFO after it was listed: the opened file is checked, not the listing
        (tmp_path / "covid/swapped.png").unlink()
        os.mkfifo(tmp_path / "covid/swapped.png")
        outcomes = {name: outcome(record) for name, record in records.items()}
    assert outcomes == {
        "covid/a.png": "read 1 bytes",
        "covid/fifo.png": f"skipped: not a regular file (a FIFO): {tmp_path}/covid/fifo.png",
        "covid/sock.png": (
            f"skipped: not a regular file (a socket or device): {tmp_path}/covid/sock.png"
        ),
        "covid/swapped.png": f"skipped: not a regular file (a FIFO): {tmp_path}/covid/swapped.png",
    }


def test_manifest_paths_are_confined_to_the_manifest_folder(tmp_path, monkeypatch):
    state = tmp_path / "state"
    touch(state / "s3/credentials.json", b'{"secret": "s"}')
    touch(tmp_path / "data/images/a.png", b"A")
    touch(tmp_path / "other/b.png", b"B")
    os.mkfifo(tmp_path / "data/images/fifo.png")
    (tmp_path / "data/images/out.png").symlink_to(tmp_path / "other/b.png")
    monkeypatch.setenv("CXR_STATE_DIR", str(state))
    monkeypatch.setenv("CXR_MANIFEST_ROOTS", json.dumps([str(tmp_path)]))  # even when allowed
    rows = [
        "images/a.png",
        "../../../../../../../../etc/passwd",
        "/etc/passwd",
        "/proc/self/environ",
        "/dev/zero",
        str(state / "s3/credentials.json"),
        "images/fifo.png",
        "images/out.png",
    ]
    (tmp_path / "data/m.csv").write_text("file,label\n" + "".join(f"{r},covid\n" for r in rows))
    monkeypatch.setenv("CXR_MANIFEST_ROOTS", "[]")
    outcomes = {
        r.original_path: outcome(r) for r in ManifestSource(tmp_path / "data/m.csv").records()
    }
    outside = (
        "skipped: outside the manifest's folder (add its folder to CXR_MANIFEST_ROOTS to allow it)"
    )
    system = "skipped: a system or cxr state path; manifests may not name it"
    assert outcomes == {
        "images/a.png": "read 1 bytes",
        rows[1]: f"{outside}: {rows[1]}",
        "/etc/passwd": f"{outside}: /etc/passwd",
        "/proc/self/environ": f"{system}: /proc/self/environ",
        "/dev/zero": f"{system}: /dev/zero",
        rows[5]: f"{system}: {rows[5]}",
        "images/fifo.png": f"skipped: not a regular file (a FIFO): {tmp_path}/data/images/fifo.png",
        "images/out.png": f"{outside}: images/out.png",
    }

    # An allowed root opens the folders it names, never the system or state folders.
    monkeypatch.setenv("CXR_MANIFEST_ROOTS", json.dumps([str(tmp_path)]))
    outcomes = {
        r.original_path: outcome(r) for r in ManifestSource(tmp_path / "data/m.csv").records()
    }
    assert outcomes["images/out.png"] == "read 1 bytes"
    assert outcomes[rows[5]] == f"{system}: {rows[5]}"
    assert outcomes["/proc/self/environ"] == f"{system}: /proc/self/environ"


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list(parse_source(str(tmp_path / "nope")).records())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no class folders: expected covid/ and normal/"):
        list(parse_source(str(tmp_path / "empty")).records())


def test_manifest_source_reads_the_real_manifest(real_data):
    records = list(ManifestSource(real_data / "manifest.csv").records())
    assert len(records) == 599
    first = records[0]
    assert first.label == "covid" and first.patient_id == "b0f73b8c"
    assert first.read()[:8] == b"\x89PNG\r\n\x1a\n"
    # The manifest's own source column names each record's source; view/license are metadata.
    assert first.source == "hannover"
    assert first.metadata["view"] == "pa" and first.metadata["license"] == "CC BY 3.0"
    assert first.metadata["source_repo"] == "ml-workgroup/covid-19-image-repository"
    assert {r.source for r in records} == {
        "hannover",
        "nih-cxr8",
        "actualmed",
        "ieee8023",
        "kaggle-pediatric",
    }


def test_unknown_source_kind_is_rejected():
    with pytest.raises(SourceError, match="unknown source kind 'dicom'"):
        parse_source("dicom:chest-xray")


def test_specs_for_remote_sources():
    default = parse_source("ieee8023:")
    assert isinstance(default, Ieee8023Source)
    assert default.base_url == IEEE8023_BASE_URL and default.filters == Ieee8023Filters()
    assert default.name == f"ieee8023:{IEEE8023_BASE_URL}"
    mirror = parse_source("ieee8023:http://127.0.0.1:9/mirror/?views=PA,AP")
    assert mirror.base_url == "http://127.0.0.1:9/mirror"
    assert mirror.filters.views == ("PA", "AP") and mirror.filters.findings == ("COVID-19",)
    with pytest.raises(SourceError, match=r"unknown option\(s\) \['colour'\]"):
        parse_source("ieee8023:?colour=red")
    with pytest.raises(SourceError, match="not an http"):
        parse_source("ieee8023:/some/folder")

    kaggle = parse_source("kaggle:/data/chest_xray.zip")
    assert kaggle == KaggleSource(location=Path("/data/chest_xray.zip"))
    assert not kaggle.include_pneumonia
    assert parse_source("kaggle:/data/x?pneumonia=include").include_pneumonia
    assert parse_source("kaggle:").location is None
    with pytest.raises(SourceError, match="include or exclude"):
        parse_source("kaggle:/data/x?pneumonia=maybe")

    with pytest.raises(SourceError, match="needs an object store"):
        parse_source("s3://bucket/inbox")


def test_kaggle_patient_ids_follow_the_file_name_patterns():
    assert kaggle_patient_id("person1_bacteria_1.jpeg") == "person1"
    assert kaggle_patient_id("train/PNEUMONIA/person1000_virus_1681.jpeg") == "person1000"
    assert kaggle_patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert kaggle_patient_id("IM-0505-0001-0002.jpeg") == "IM-0505"
    assert kaggle_patient_id("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert kaggle_patient_id("scan.jpeg") is None
    assert kaggle_patient_id("IM-0115.jpeg") is None


def test_ieee8023_filters_handle_old_and_new_finding_names():
    row = dict(finding="COVID-19", modality="X-ray", view="PA")
    filters = Ieee8023Filters()
    assert filters.selects(row)
    assert filters.selects({**row, "finding": "COVID-19, ARDS"})
    assert filters.selects({**row, "finding": "Pneumonia/Viral/COVID-19"})
    assert filters.selects({**row, "view": "AP Supine"})
    assert not filters.selects({**row, "finding": "Pneumonia/Viral/SARS"})
    assert not filters.selects({**row, "view": "L"})
    assert not filters.selects({**row, "modality": "CT", "view": "Axial"})
    assert ieee8023_label("Pneumonia/Viral/COVID-19") == "covid"
    assert ieee8023_label("No Finding") == "normal"
    assert ieee8023_label("Pneumonia/Viral/SARS") == "sars"


def test_fetch_error_is_an_os_error_with_status_and_url():
    error = FetchError("http://x/a.png", "Not Found", 404)
    assert isinstance(error, OSError)
    assert str(error) == "HTTP 404 Not Found: http://x/a.png"
    assert (error.url, error.status) == ("http://x/a.png", 404)
    assert str(FetchError("/a.png", "file too large (9 bytes > cap 8)")) == (
        "file too large (9 bytes > cap 8): /a.png"
    )


def test_size_cap_applies_to_folder_files(tmp_path, monkeypatch):
    touch(tmp_path / "covid/big.png", b"x" * 100)
    touch(tmp_path / "covid/small.png", b"x" * 10)
    monkeypatch.setattr("cxr_model.sources.reading.MAX_FILE_BYTES", 50)
    records = {r.original_path: r for r in FolderSource(tmp_path).records()}
    assert records["covid/small.png"].read() == b"x" * 10
    with pytest.raises(FetchError, match=r"file too large \(100 bytes > cap 50\)"):
        records["covid/big.png"].read()


def test_manifest_with_uri_column_and_s3_rows_needs_a_store(tmp_path):
    touch(tmp_path / "a.png", b"A")
    (tmp_path / "m.csv").write_text("uri,label,view\na.png,COVID,PA\ns3://bucket/b.png,normal,AP\n")
    with pytest.raises(SourceError, match="no object store was given"):
        list(parse_source(f"manifest:{tmp_path / 'm.csv'}").records())
    (tmp_path / "m.csv").write_text("uri,label,view\na.png,COVID,PA\n")
    [record] = parse_source(f"manifest:{tmp_path / 'm.csv'}").records()
    assert (record.label, record.read(), dict(record.metadata)) == ("covid", b"A", {"view": "PA"})
    (tmp_path / "bad.csv").write_text("path,label\na.png,covid\n")
    with pytest.raises(SourceError, match=r"lacks column\(s\) \['file \(or uri\)'\]"):
        list(parse_source(f"manifest:{tmp_path / 'bad.csv'}").records())
