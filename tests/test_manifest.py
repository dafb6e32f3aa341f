"""Ingest into the content-addressed raw store, describe files, and quarantine rejected ones."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from cxr_model import manifest
from cxr_model.sources import FolderSource, SourceRecord


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((70, 80), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def folder(tmp_path):
    for name, data in {
        "covid/a.png": png(10),
        "covid/b.png": png(20),
        "normal/c.png": png(30),
        "normal/copy-of-a.png": png(10),
        "normal/empty.png": b"",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return FolderSource(tmp_path)


def unreadable() -> SourceRecord:
    def fail() -> bytes:
        raise OSError("HTTP 404 Not Found: http://127.0.0.1/x.png")

    return SourceRecord("remote", "x.png", "covid", "p9", fail, {"view": "PA", "license": "CC BY"})


def test_ingest_stores_each_content_once_and_reports_every_file(store, tmp_path):
    source = folder(tmp_path)
    first = manifest.ingest(store, [*source.records(), unreadable()])
    assert len(first) == 6
    assert sum(i.stored_now for i in first) == 4  # a.png and its copy share one object
    assert first[-1].read_error.startswith("cannot read: HTTP 404") and first[-1].view == "PA"
    raw = sorted(store.list_keys(manifest.RAW_PREFIX))
    assert len(raw) == 4  # a, b, c and the empty file; the copy of a adds nothing

    second = manifest.ingest(store, source.records())
    assert sum(i.stored_now for i in second) == 0

    frame = manifest.to_frame(first)
    summary = manifest.ingest_summary(frame)
    assert "6 files, 4 new, 1 not fetched" in summary
    assert "`x.png` (remote): cannot read: HTTP 404" in summary


def test_describe_marks_duplicates_and_undecodable_files(store, tmp_path):
    frame = manifest.to_frame(manifest.ingest(store, [*folder(tmp_path).records(), unreadable()]))
    described = manifest.describe_images(frame).set_index("original_path")
    assert described.loc["covid/a.png", "decodable"] and described.loc["covid/a.png", "width"] == 80
    assert described.loc["normal/copy-of-a.png", "duplicate_of"].endswith("covid/a.png")
    assert not described.loc["normal/empty.png", "decodable"]
    assert described.loc["x.png", "error"].startswith("cannot read")


def test_quarantine_keeps_the_bytes_of_images_and_the_reason_of_everything(store, tmp_path):
    source = folder(tmp_path)
    truncated = png(40)[:60]
    (tmp_path / "covid/notes.png").write_text("AWS_SECRET_ACCESS_KEY=not-an-x-ray\n")
    (tmp_path / "covid/truncated.png").write_bytes(truncated)
    frame = manifest.to_frame(manifest.ingest(store, [*source.records(), unreadable()]))
    rows = frame.set_index("original_path")
    reasons = {
        rows.loc["normal/empty.png", "key"]: ["empty file (0 bytes)"],
        rows.loc["covid/notes.png", "key"]: ["not an image"],
        rows.loc["covid/truncated.png", "key"]: ["truncated or corrupt"],
        rows.loc["x.png", "key"]: ["not decodable: cannot read: HTTP 404"],
    }
    notes = manifest.quarantine(store, frame, reasons)
    empty_sha, text_sha, png_sha = (
        rows.loc[name, "sha256"]
        for name in ("normal/empty.png", "covid/notes.png", "covid/truncated.png")
    )
    assert f"quarantine/{empty_sha}.json" in notes
    note = json.loads(store.get_bytes(f"quarantine/{empty_sha}.json"))
    assert note["reasons"] == ["empty file (0 bytes)"] and note["label"] == "normal"
    # Only a file in an accepted image format keeps its bytes; the others keep their reason.
    assert store.get_bytes(f"quarantine/{png_sha}") == truncated
    assert json.loads(store.get_bytes(f"quarantine/{png_sha}.json"))["bytes_kept"] is True
    for sha in (empty_sha, text_sha):
        assert store.get_with_etag(f"quarantine/{sha}") is None
        assert json.loads(store.get_bytes(f"quarantine/{sha}.json"))["bytes_kept"] is False
    unread = next(n for n in notes if n.startswith("quarantine/unread/"))
    assert json.loads(store.get_bytes(unread))["original_path"] == "x.png"


def counting(records, reads: list[str]):
    """The same records, noting each read."""
    for record in records:

        def read(record=record) -> bytes:
            reads.append(record.original_path)
            return record.read()

        yield dataclasses.replace(record, read=read)


def test_rerun_of_unchanged_files_reads_nothing_and_changed_files_are_reread(store, tmp_path):
    source = folder(tmp_path)
    first_reads: list[str] = []
    manifest.ingest(store, counting(source.records(), first_reads))
    assert len(first_reads) == 5

    again: list[str] = []
    images = manifest.ingest(store, counting(source.records(), again))
    assert again == []  # nothing fetched
    assert [i.sha256 for i in images] == [
        i.sha256 for i in manifest.ingest(store, source.records())
    ]

    (tmp_path / "covid/b.png").write_bytes(png(99))  # new size and mtime
    changed: list[str] = []
    images = manifest.ingest(store, counting(source.records(), changed))
    assert changed == ["covid/b.png"]
    assert sum(i.stored_now for i in images) == 1


def test_an_interrupted_run_resumes_where_it_stopped(store, tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "INDEX_SAVE_EVERY", 1)
    monkeypatch.setattr(manifest, "PARALLEL_IO", 1)
    source = folder(tmp_path)

    def interrupted():
        for n, record in enumerate(source.records()):
            if n == 3:
                raise KeyboardInterrupt
            yield record

    with pytest.raises(KeyboardInterrupt):
        manifest.ingest(store, interrupted())
    resumed: list[str] = []
    manifest.ingest(store, counting(source.records(), resumed))
    assert (
        resumed == sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))[3:]
    )
