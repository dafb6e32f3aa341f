"""Sources: self-sorted folders in both layouts, CSV manifests, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_model.sources import FolderSource, ManifestSource, SourceError, parse_source


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


def test_flat_layout_with_patient_ids_from_manifest(tmp_path):
    touch(tmp_path / "covid/a.png")
    touch(tmp_path / "normal/b.png")
    touch(tmp_path / "normal/notes.txt")  # not an image, but still listed: validation decides
    (tmp_path / "manifest.csv").write_text("file,label,patient_id\ncovid/a.png,covid,P1\n")
    records = {r.original_path: r for r in FolderSource(tmp_path).records()}
    assert set(records) == {"covid/a.png", "normal/b.png", "normal/notes.txt"}
    assert records["covid/a.png"].patient_id == "P1"
    assert records["normal/b.png"].patient_id is None


def test_symlinks_are_not_followed_out_of_the_folder(tmp_path):
    outside = tmp_path / "secret.png"
    touch(outside)
    touch(tmp_path / "src/covid/a.png")
    (tmp_path / "src/covid/link.png").symlink_to(outside)
    assert [r.original_path for r in FolderSource(tmp_path / "src").records()] == ["covid/a.png"]


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


def test_unknown_source_kind_is_rejected():
    with pytest.raises(SourceError, match="unknown source kind 'kaggle'"):
        parse_source("kaggle:chest-xray")
