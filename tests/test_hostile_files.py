"""Hostile files through the real ingest flow: each file's outcome, accepted or quarantined, and why."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_model import images as images_module
from cxr_model.manifest import read_csv
from cxr_model.quality import QualitySettings

pytestmark = pytest.mark.integration
BOMB_LIMIT = 1_000_000  # pixels; lowered so the "bomb" below stays small in memory


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))


def hostile_files() -> dict[str, bytes]:
    grey = Image.fromarray(gradient(120, 100))
    png = encoded(grey, "PNG")
    jpeg = encoded(grey, "JPEG")
    rotated = Image.fromarray(gradient(100, 220))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90°
    sixteen = Image.fromarray(gradient(100, 100).astype(np.uint16) * 16)  # I;16
    return {
        "covid/truncated.png": png[: len(png) // 2],
        "covid/truncated.jpg": jpeg[: len(jpeg) // 2],
        "covid/zero.png": b"",
        "covid/text.png": b"these are notes, not an x-ray\n",
        "covid/bomb.png": encoded(Image.new("L", (1200, 1200)), "PNG"),
        "covid/sixteen-bit.png": encoded(sixteen, "PNG"),
        "covid/cmyk.jpg": encoded(grey.convert("CMYK"), "JPEG"),
        "covid/exif-rotated.jpg": encoded(rotated, "JPEG", exif=exif),
        "covid/palette.png": encoded(grey.convert("P"), "PNG"),
        "covid/la.png": encoded(grey.convert("LA"), "PNG"),
        "covid/rgba.png": encoded(grey.convert("RGBA"), "PNG"),
        "covid/tiny-8x8.png": encoded(Image.new("L", (8, 8), 128), "PNG"),
        "covid/wide-1000x70.png": encoded(Image.fromarray(gradient(1000, 70)), "PNG"),
        **{
            f"normal/good-{n}.png": encoded(Image.fromarray(gradient(100 + n, 100)), "PNG")
            for n in range(6)
        },
    }


def test_every_hostile_file_gets_the_expected_outcome(
    prefect_harness, settings, store, tmp_path: Path, monkeypatch
):
    from flows.ingest import IngestParams, ingest

    monkeypatch.setattr(images_module, "MAX_PIXELS", BOMB_LIMIT)
    for name, data in hostile_files().items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)

    report = ingest(
        IngestParams(sources=[f"folder:{tmp_path / 'src'}"], quality=QualitySettings(min_rows=5))
    )
    described = read_csv(store, report.quality.accepted_key.replace("accepted.csv", "images.csv"))
    accepted = set(read_csv(store, report.quality.accepted_key)["original_path"])
    assert accepted == {
        "covid/sixteen-bit.png",
        "covid/cmyk.jpg",
        "covid/exif-rotated.jpg",
        "covid/palette.png",
        "covid/la.png",
        "covid/rgba.png",
        *(f"normal/good-{n}.png" for n in range(6)),
    }
    facts = described.set_index("original_path")
    assert (
        facts.loc["covid/exif-rotated.jpg", "width"],
        facts.loc["covid/exif-rotated.jpg", "height"],
    ) == ("220", "100")
    assert facts.loc["covid/sixteen-bit.png", "mode"].startswith("I")

    summary = report.quality.summary
    expected_reasons = {
        "covid/truncated.png": "truncated or corrupt",
        "covid/truncated.jpg": "truncated or corrupt",
        "covid/zero.png": "empty file (0 bytes)",
        "covid/text.png": "not an image",
        "covid/bomb.png": "too many pixels",
        "covid/tiny-8x8.png": "shorter side 8 px < 64 px",
        "covid/wide-1000x70.png": "aspect ratio 14.29 > 2.5",
    }
    lines = {line for line in summary.splitlines() if "|" in line}
    for name, reason in expected_reasons.items():
        assert any(name in line and reason in line for line in lines), (name, reason)
    assert report.quality.rejected == len(expected_reasons)
    assert sum(1 for k in store.list_keys("quarantine/") if k.endswith(".json")) == len(
        expected_reasons
    )


def test_links_fifos_and_paths_outside_get_rows_and_no_bytes_are_kept(
    prefect_harness, settings, store, tmp_path: Path, monkeypatch
):
    """Issue 11 items 3-5 through the ingest flow: every entry has a row with its reason."""
    from flows.ingest import IngestParams, ingest

    src = tmp_path / "src"
    for n in range(8):
        name = f"{'covid' if n < 4 else 'normal'}/good-{n}.png"
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(encoded(Image.fromarray(gradient(100 + 7 * n, 90)), "PNG"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "outside.png").write_bytes(encoded(Image.fromarray(gradient(90, 90)), "PNG"))
    (src / "Pneumonia").symlink_to(elsewhere)  # a linked class folder
    (src / "covid/link.png").symlink_to(elsewhere / "outside.png")
    os.mkfifo(src / "covid/fifo.png")
    secret = settings.state_dir / "s3" / "credentials.json"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"accessKey": "k", "secretKey": "s"}')
    (tmp_path / "m.csv").write_text(
        "file,label\n"
        "../../../../../../../../etc/passwd,covid\n"
        "/proc/self/environ,covid\n"
        f"{secret},normal\n"
        "src/covid/fifo.png,covid\n"
    )
    sources = [f"folder:{src}", f"manifest:{tmp_path / 'm.csv'}"]
    params = IngestParams(sources=sources, quality=QualitySettings(min_rows=5))

    def run():
        return ingest(params)

    report = _finishes(run)
    images = read_csv(store, report.quality.accepted_key.replace("accepted.csv", "images.csv"))
    errors = dict(zip(images["original_path"], images["error"], strict=True))
    skipped = {path: error for path, error in errors.items() if (error or "").startswith("skip")}
    outside = "skipped: outside the manifest's folder"
    system = "skipped: a system or cxr state path"
    assert {path: error.split(" (")[0].split(";")[0] for path, error in skipped.items()} == {
        "Pneumonia": f"skipped: symbolic link not followed: {src}/Pneumonia",
        "covid/link.png": f"skipped: symbolic link not followed: {src}/covid/link.png",
        "covid/fifo.png": "skipped: not a regular file",
        "../../../../../../../../etc/passwd": outside,
        "/proc/self/environ": system,
        str(secret): system,
        "src/covid/fifo.png": "skipped: not a regular file",
    }
    assert report.quality.rejected == len(skipped)
    # Nothing of what was refused was read: no raw object, no quarantined bytes.
    raw = [store.get_bytes(key) for key in store.list_keys("raw/")]
    assert not any(b"secretKey" in data or b"root:" in data for data in raw)
    assert not [k for k in store.list_keys("quarantine/") if not k.endswith(".json")]


def _finishes(work, seconds: float = 300):
    from tests.test_sources import finishes

    return finishes(work, seconds)
