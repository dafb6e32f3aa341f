"""The helpers the sources share: the folder layout, the capped reader by location, the Kaggle
folder walk, and the ObjectStore reads the S3 source goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_model.sources import FetchError, RefusedFile, parse_source, read_input
from cxr_model.sources.layout import class_folder, has_split_files, is_split_folder
from cxr_model.storage import MISSING_KEY_CODES


def test_split_folders_are_recognised_whatever_their_case():
    assert all(is_split_folder(n) for n in ("Train", "val", "VALID", "validation", "test"))
    assert not any(is_split_folder(n) for n in ("covid", "normal", "trains"))


def test_class_folder_of_split_and_flat_layouts():
    split = [["Train", "covid", "a.png"], ["Val", "normal", "b.png"], ["notes", "x.png"]]
    assert has_split_files(split)
    assert [class_folder(p, split_layout=True) for p in split] == ["covid", "normal", None]
    flat = [["covid", "a.png"], ["normal", "sub", "b.png"], ["loose.png"]]
    assert not has_split_files(flat)
    assert [class_folder(p, split_layout=False) for p in flat] == ["covid", "normal", None]
    # a split folder with files but no class folder below it does not make a split layout
    assert not has_split_files([["Train", "a.png"], ["covid", "b.png"]])


def test_read_input_caps_local_files_and_refuses_links(tmp_path, monkeypatch):
    monkeypatch.setattr("cxr_model.sources.reading.MAX_FILE_BYTES", 5)
    (tmp_path / "small.png").write_bytes(b"abc")
    (tmp_path / "big.png").write_bytes(b"x" * 6)
    (tmp_path / "link.png").symlink_to(tmp_path / "small.png")
    assert read_input(str(tmp_path / "small.png"), store=None) == b"abc"
    with pytest.raises(FetchError, match=r"file too large \(6 bytes > cap 5\)"):
        read_input(str(tmp_path / "big.png"), store=None)
    with pytest.raises(RefusedFile, match="symbolic link not followed"):
        read_input(str(tmp_path / "link.png"), store=None)
    with pytest.raises(FileNotFoundError):
        read_input(str(tmp_path / "gone.png"), store=None)


def test_missing_key_codes_cover_get_and_head_answers():
    assert {"NoSuchKey", "404", "NotFound"} <= MISSING_KEY_CODES


def kaggle_folder(root: Path) -> Path:
    for name in ("train/NORMAL/IM-0001-0001.jpeg", "test/NORMAL/IM-0002-0001.jpeg"):
        (root / "chest_xray" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "chest_xray" / name).write_bytes(b"img")
    return root


def test_kaggle_folder_reports_a_symlinked_folder_instead_of_dropping_it(tmp_path):
    # Before the Kaggle walk shared local_entries, os.walk left a linked folder out without a word.
    root = kaggle_folder(tmp_path / "k")
    (tmp_path / "elsewhere").mkdir()
    (root / "chest_xray/train/NORMAL/linked").symlink_to(tmp_path / "elsewhere")
    records = {r.original_path: r for r in parse_source(f"kaggle:{root}").records()}
    assert sorted(records) == [
        "test/NORMAL/IM-0002-0001.jpeg",
        "train/NORMAL/IM-0001-0001.jpeg",
        "train/NORMAL/linked",
    ]
    with pytest.raises(RefusedFile, match="^skipped: symbolic link not followed"):
        records["train/NORMAL/linked"].read()
    assert records["train/NORMAL/IM-0001-0001.jpeg"].read() == b"img"


def test_s3_source_lists_and_reads_through_the_object_store(store):
    store.put_bytes("layout/Train/covid/a.png", b"A")
    store.put_bytes("layout/Val/normal/b.png", b"BB")
    store.put_bytes("layout/notes/readme.png", b"not in a split")
    listed = {key: (etag, size) for key, etag, size in store.list_etags("layout/")}
    assert sorted(listed) == [
        "layout/Train/covid/a.png",
        "layout/Val/normal/b.png",
        "layout/notes/readme.png",
    ]
    assert (
        listed["layout/Val/normal/b.png"][1] == 2
        and '"' not in listed["layout/Val/normal/b.png"][0]
    )
    records = list(parse_source(f"s3://{store.bucket}/layout", store=store).records())
    assert [(r.original_path, r.label, r.read()) for r in records] == [
        ("Train/covid/a.png", "covid", b"A"),
        ("Val/normal/b.png", "normal", b"BB"),
    ]
    with store.open_object("layout/Val/normal/b.png") as (body, size):
        assert (body.read(), size) == (b"BB", 2)
    with pytest.raises(FileNotFoundError, match="removed after it was listed"):
        read_input(f"s3://{store.bucket}/layout/gone.png", store)
