"""cxr_model.images: the one conversion from file bytes to model input, and inspection.

Each test builds a small image in memory with Pillow, encodes it the way a real file would be,
and checks the pixels the model would see (or the reason a file is refused).
"""

from __future__ import annotations

import csv
import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxr_model import images
from cxr_model.images import (
    MODEL_CHANNELS,
    ImageError,
    ImageFacts,
    hamming,
    inspect_image,
    to_model_input,
)
from cxr_model.memory import ByteBudget

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def grey(arr: np.ndarray) -> np.ndarray:
    """The single channel of a model input, after checking all channels are the same."""
    assert arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == MODEL_CHANNELS == 3
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    return arr[..., 0]


def ramp(width: int = 64, height: int = 48) -> Image.Image:
    """An L image whose value grows left to right, 0..252."""
    row = np.linspace(0, 252, width).round().astype(np.uint8)
    return Image.fromarray(np.tile(row, (height, 1)), mode="L")


# --------------------------------------------------------------------- modes


def test_l_png_at_its_own_size_is_passed_through_exactly():
    img = ramp(32, 32)
    out = to_model_input(encode(img), 32)
    assert out.shape == (32, 32, 3)
    assert out.flags["C_CONTIGUOUS"]
    assert np.array_equal(grey(out), np.asarray(img))


def test_resize_squashes_the_aspect_ratio_to_a_square():
    # 100 wide x 50 high: left half black, right half white. Squashed, not cropped or padded.
    arr = np.zeros((50, 100), np.uint8)
    arr[:, 50:] = 255
    out = grey(to_model_input(encode(Image.fromarray(arr)), 20))
    assert out.shape == (20, 20)
    assert out[:, :9].max() == 0
    assert out[:, 11:].min() == 255
    # every row is the same: nothing was padded above or below
    assert (out == out[0]).all()


def test_downscale_is_antialiased():
    # A 1-pixel checkerboard averages to mid-grey instead of aliasing to black or white.
    checker = (np.indices((400, 400)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = grey(to_model_input(encode(Image.fromarray(checker)), 40))
    assert abs(out.astype(float).mean() - 127.5) < 2
    assert out.std() < 3


def test_la_is_flattened_onto_black():
    la = Image.new("LA", (3, 1))
    la.putdata([(200, 255), (200, 128), (200, 0)])  # opaque, half, fully transparent
    out = grey(to_model_input(encode(la), 3))[0]
    assert out[0] == 200
    assert abs(int(out[1]) - 100) <= 1
    assert out[2] == 0


def test_rgba_is_flattened_onto_black_then_luminance():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 255, 255, 0)])
    out = grey(to_model_input(encode(rgba), 2))[0]
    assert abs(int(out[0]) - 76) <= 1  # ITU-R 601 luminance of pure red
    assert out[1] == 0  # transparent white becomes black, not white


def test_rgb_becomes_luminance():
    rgb = Image.new("RGB", (4, 1))
    rgb.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 90, 90)])
    out = grey(to_model_input(encode(rgb), 4))[0]
    assert np.allclose(out, [76, 150, 29, 90], atol=1)


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 255, 255, 10, 200, 10] + [0] * (256 * 3 - 9))
    pal.putdata([1, 2])
    out = grey(to_model_input(encode(pal), 2))[0]
    assert out[0] == 255
    assert abs(int(out[1]) - round(0.299 * 10 + 0.587 * 200 + 0.114 * 10)) <= 1

    out = grey(to_model_input(encode(pal, transparency=1), 2))[0]
    assert out[0] == 0  # the transparent palette entry is flattened onto black


def test_16_bit_is_scaled_by_its_range_not_clipped():
    # A 12-bit detector gradient stored in 16 bits: clipping would make most of it 255,
    # dividing by 257 would leave it almost black (max 15).
    values = np.linspace(0, 4095, 64).round().astype(np.uint16)
    img = Image.fromarray(np.tile(values, (8, 1)))
    assert img.mode == "I;16"
    out = grey(to_model_input(encode(img), 64)).astype(int)
    row = out[0]
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    assert abs(row[32] - 4095 * 32 / 63 * 255 / 4095) <= 2  # linear
    assert (row == 255).sum() == 1  # only the brightest sample is white


def test_16_bit_big_endian_and_32_bit_tiff_are_scaled_too():
    values = np.linspace(1000, 3000, 32).round()
    big_endian = Image.fromarray(np.tile(values, (4, 1)).astype(">u2"))
    assert big_endian.mode == "I;16B"
    int32 = Image.fromarray(np.tile(values * 1000, (4, 1)).astype(np.int32))
    assert int32.mode == "I"
    for img in (big_endian, int32):
        row = grey(to_model_input(encode(img, "TIFF"), 32))[0].astype(int)
        assert row[0] == 0 and row[-1] == 255
        assert (np.diff(row) > 0).all()


def test_cmyk_becomes_luminance():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (0, 0, 0, 100)])
    for fmt in ("TIFF", "JPEG"):
        out = grey(to_model_input(encode(cmyk, fmt), 2))[0].astype(int)
        assert abs(out[0] - 255) <= 3, fmt  # no ink: white
        assert abs(out[1] - 155) <= 3, fmt  # some black ink: grey


# --------------------------------------------------------------------- EXIF and formats


def test_exif_orientation_6_is_applied():
    # Stored 40 wide x 20 high with the left half white; orientation 6 means "turn 90° clockwise
    # to display", so the upright image is 20 wide x 40 high with the top half white.
    arr = np.zeros((20, 40), np.uint8)
    arr[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)

    facts = inspect_image(data)
    assert (facts.format, facts.mode, facts.width, facts.height) == ("JPEG", "L", 20, 40)

    out = grey(to_model_input(data, 40)).astype(int)
    assert out[:16].mean() > 245  # top: white
    assert out[24:].mean() < 10  # bottom: black


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("JPEG", {"quality": 95}, 4),
    ],
)
def test_supported_formats_round_trip(fmt, params, tolerance):
    img = ramp(48, 48)
    data = encode(img, fmt, **params)
    facts = inspect_image(data)
    mode = "RGB" if fmt == "WEBP" else "L"  # WebP has no greyscale mode
    assert facts == ImageFacts(fmt, mode, 48, 48, len(data), True, None, facts.dhash)
    assert facts.dhash == inspect_image(encode(img)).dhash  # same picture, same hash
    out = grey(to_model_input(data, 48)).astype(int)
    assert np.abs(out - np.asarray(img, dtype=int)).max() <= tolerance


def test_big_jpeg_fast_path_matches_a_full_decode():
    # to_model_input lets libjpeg decode big JPEGs at 1/2..1/8 scale; the result must stay
    # close to decoding everything and resizing.
    yy, xx = np.mgrid[0:1536, 0:2048]
    arr = (127 + 80 * np.sin(xx / 150.0) * np.cos(yy / 110.0)).astype(np.uint8)
    data = encode(Image.fromarray(arr).convert("RGB"), "JPEG", quality=90)
    fast = grey(to_model_input(data, 224)).astype(int)
    full = Image.open(io.BytesIO(data)).convert("L").resize((224, 224), Image.Resampling.BILINEAR)
    assert np.abs(fast - np.asarray(full, dtype=int)).mean() < 1.5


# --------------------------------------------------------------------- bad files


def truncated_png() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    return data[: len(data) // 2]


def dicom_bytes() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 64


@pytest.mark.parametrize(
    ("data", "reason_start", "fmt"),
    [
        (truncated_png(), "truncated or corrupt: ", "PNG"),
        (b"", "empty file (0 bytes)", None),
        (b"patient list\nsp-n-001, normal\n", "not an image: ", None),
        (dicom_bytes(), "DICOM not supported; convert to PNG", "DICOM"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated or corrupt: PNG header", "PNG"),
        (encode(Image.new("L", (8, 8)), "GIF"), "unsupported format GIF; convert to PNG", "GIF"),
    ],
    ids=["truncated-png", "zero-bytes", "text", "dicom", "png-header-only", "gif"],
)
def test_bad_files_are_refused_with_a_reason(data, reason_start, fmt):
    facts = inspect_image(data)  # never raises
    assert facts.decodable is False
    assert facts.bytes == len(data)
    assert facts.format == fmt
    assert facts.error is not None and facts.error.startswith(reason_start)

    with pytest.raises(ImageError) as caught:
        to_model_input(data, 32, name="covid/x.png")
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.name == "covid/x.png"
    assert err.reason == facts.error
    assert str(err) == f"covid/x.png: {facts.error}"


def test_truncated_png_facts_keep_what_the_header_said():
    facts = inspect_image(truncated_png())
    assert (facts.format, facts.mode, facts.width, facts.height) == ("PNG", "L", 64, 64)


def test_image_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ImageError("a.png", "empty file (0 bytes)")))
    assert (err.name, err.reason, str(err)) == (
        "a.png",
        "empty file (0 bytes)",
        "a.png: empty file (0 bytes)",
    )


def test_size_must_be_a_positive_int():
    with pytest.raises(ValueError, match="size"):
        to_model_input(encode(ramp()), 0)


# --------------------------------------------------------------------- decompression bombs


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1_000)
    data = encode(Image.new("L", (100, 100)))
    reason = "too many pixels (10000 > 1000): refusing to decode"
    facts = inspect_image(data)
    assert (facts.decodable, facts.error, facts.width, facts.height) == (False, reason, 100, 100)
    with pytest.raises(ImageError, match=r"too many pixels \(10000 > 1000\)"):
        to_model_input(data, 32)
    # just under the limit is fine
    assert inspect_image(encode(Image.new("L", (40, 25)))).decodable


def test_decoded_size_is_checked_from_the_header_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 30_000)
    sixteen = encode(Image.fromarray(np.zeros((100, 200), np.uint16)))  # 2 bytes a pixel
    reason = "too large to decode (40000 bytes of pixels > 30000)"
    facts = inspect_image(sixteen)
    assert (facts.decodable, facts.error, facts.width, facts.height) == (False, reason, 200, 100)
    with pytest.raises(ImageError, match=r"too large to decode \(40000 bytes"):
        to_model_input(sixteen, 32)
    assert inspect_image(encode(Image.new("L", (200, 100)))).decodable  # 1 byte a pixel
    # A JPEG is decoded reduced (DCT scaling) for the model, so its reduced size is what counts.
    jpeg = encode(Image.new("L", (400, 400), 90), "JPEG")
    assert not inspect_image(jpeg).decodable
    assert to_model_input(jpeg, 32).shape == (32, 32, 3)


def test_decoding_waits_for_room_in_the_process_budget(monkeypatch):
    budget = ByteBudget(1)  # room for one image at a time, whatever its size
    monkeypatch.setattr(images, "_DECODING", budget)
    seen: list[int] = []
    real_load = ImageFile.ImageFile.load

    def load(img):
        seen.append(budget.held)
        return real_load(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = encode(Image.fromarray(np.zeros((50, 60), np.uint16)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: to_model_input(data, 16), range(8)))
    assert seen and set(seen) == {50 * 60 * 2 * images.WORKING_COPIES}  # one at a time
    assert budget.held == 0


@pytest.mark.parametrize("side", [40, 50])  # Pillow warns above its limit, errors above twice it
def test_pillows_own_bomb_guard_is_an_error_too(monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encode(Image.new("L", (side, side)))
    facts = inspect_image(data)
    assert not facts.decodable
    assert facts.error.startswith(f"too many pixels ({side * side} > ")
    with pytest.raises(ImageError, match="too many pixels"):
        to_model_input(data, 32)


# --------------------------------------------------------------------- real x-rays


def real_rows() -> list[dict[str, str]]:
    manifest = REAL_DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"real x-rays not found at {REAL_DATA}")
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def pick(rows, **where) -> dict[str, str]:
    for row in rows:
        if all(row[key] == value for key, value in where.items()):
            return row
    pytest.skip(f"no real x-ray with {where}")


@pytest.mark.parametrize(
    "where",
    [
        {"source": "hannover", "orig_mode": "L"},
        {"source": "nih-cxr8", "orig_mode": "L"},
        {"source": "actualmed", "orig_mode": "RGBA"},
        {"source": "actualmed", "orig_mode": "RGB"},
        {"source": "kaggle-pediatric", "orig_mode": "L"},
        {"source": "ieee8023", "orig_mode": "RGB"},
    ],
    ids=lambda w: f"{w['source']}-{w['orig_mode']}",
)
def test_real_xrays_convert(where):
    row = pick(real_rows(), **where)
    data = (REAL_DATA / row["file"]).read_bytes()

    facts = inspect_image(data)
    assert facts.decodable and facts.error is None
    assert facts.format in ("PNG", "JPEG")
    assert facts.bytes == len(data)
    assert facts.width > 0 and facts.height > 0
    if row["stored_as"] == "original":
        assert (facts.width, facts.height) == (int(row["orig_width"]), int(row["orig_height"]))
        assert facts.mode == row["orig_mode"]

    out = to_model_input(data, 224, name=row["file"])
    lum = grey(out)
    assert out.shape == (224, 224, 3)
    # a radiograph: real contrast, neither blank nor saturated
    assert lum.std() > 20
    assert 20 < lum.mean() < 235


# --------------------------------------------------------------------- perceptual hash


def test_hamming_counts_differing_bits():
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("00000000000000f0", "000000000000000f") == 8
    assert hamming("8000000000000001", "0000000000000000") == 2
    with pytest.raises(ValueError):
        hamming("00", "0000")
    with pytest.raises(ValueError):
        hamming("zz", "00")


def test_dhash_is_64_hex_digits_of_neighbour_comparisons():
    # brightness falls left to right: every "left brighter than right" bit is set
    falling = Image.fromarray(np.tile(np.linspace(255, 0, 90).astype(np.uint8), (80, 1)))
    assert inspect_image(encode(falling)).dhash == "f" * 64
    rising = falling.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert inspect_image(encode(rising)).dhash == "0" * 64
    facts = inspect_image(encode(ramp(64, 48)))
    assert facts.dhash is not None and len(facts.dhash) == 64
    int(facts.dhash, 16)


def test_dhash_is_none_for_undecodable_files():
    assert inspect_image(b"").dhash is None
    assert inspect_image(truncated_png()).dhash is None


def test_dhash_ignores_mode_and_sees_the_upright_image():
    rng = np.random.default_rng(1)
    arr = (rng.random((12, 16)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((160, 120), Image.Resampling.BILINEAR)
    upright = inspect_image(encode(img)).dhash
    assert inspect_image(encode(img.convert("RGB"))).dhash == upright
    # stored turned 90° with EXIF orientation 6 ("turn clockwise to display"): same picture
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = img.transpose(Image.Transpose.ROTATE_90)
    turned = inspect_image(encode(stored, "PNG", exif=exif))
    assert (turned.width, turned.height) == (160, 120)
    assert turned.dhash == upright
    assert hamming(inspect_image(encode(stored)).dhash, upright) > 10  # without the tag


def test_real_xray_reencoded_as_jpeg_is_a_near_duplicate_and_others_are_not():
    rows = real_rows()
    hannover = pick(rows, source="hannover", orig_mode="L")
    pediatric = pick(rows, source="kaggle-pediatric")
    data = (REAL_DATA / hannover["file"]).read_bytes()
    original = inspect_image(data).dhash

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="JPEG", quality=75)
    reencoded = inspect_image(buf.getvalue())
    half = Image.open(io.BytesIO(data))
    half = half.resize((half.width // 2, half.height // 2), Image.Resampling.BILINEAR)

    assert reencoded.format == "JPEG" and reencoded.bytes != len(data)
    assert hamming(original, reencoded.dhash) <= 8
    assert hamming(original, inspect_image(encode(half)).dhash) <= 8
    other = inspect_image((REAL_DATA / pediatric["file"]).read_bytes()).dhash
    assert hamming(original, other) > 20


# --- preprocessing: resize mode, equalisation, border ------------------------------------------


def _wide_with_bars() -> bytes:
    """120×60: a white left quarter, black right quarter, mid-grey centre."""
    arr = np.full((60, 120), 128, np.uint8)
    arr[:, :30] = 255
    arr[:, 90:] = 0
    return encode(Image.fromarray(arr, "L"))


def test_the_default_preprocessing_is_the_studys_stretch():
    from cxr_model.images import LEGACY_PREPROCESSING, Preprocessing

    assert Preprocessing() == LEGACY_PREPROCESSING
    assert LEGACY_PREPROCESSING.name == "stretch"
    data = _wide_with_bars()
    assert np.array_equal(
        to_model_input(data, 32), to_model_input(data, 32, preprocessing=Preprocessing())
    )
    # older models recorded no preprocessing: they get the study's
    assert Preprocessing.of_model({"image_size": 224}) == LEGACY_PREPROCESSING
    recorded = {"preprocessing": {"resize": "crop", "equalize": True, "border": 0.05}}
    assert Preprocessing.of_model(recorded).name == "crop-eq-b0.05"


def test_crop_keeps_the_centre_square_without_distortion():
    from cxr_model.images import Preprocessing

    pixels = grey(to_model_input(_wide_with_bars(), 30, preprocessing=Preprocessing(resize="crop")))
    # the centre 60×60 of the 120×60 image is the grey middle band, scaled to 30×30 (the edge
    # columns blend with the bars next to them: the image is scaled before the crop)
    assert pixels.shape == (30, 30)
    assert np.all(pixels[:, 1:-1] == 128)
    assert abs(int(pixels[0, 0]) - 128) < 32 and abs(int(pixels[0, -1]) - 128) < 32


def test_pad_keeps_the_aspect_ratio_and_pads_with_black():
    from cxr_model.images import Preprocessing

    pixels = grey(to_model_input(_wide_with_bars(), 40, preprocessing=Preprocessing(resize="pad")))
    # 120×60 → 40×20 content in the middle rows, black above and below
    assert np.all(pixels[:10] == 0) and np.all(pixels[30:] == 0)
    assert pixels[20, 2] == 255 and abs(int(pixels[20, 20]) - 128) <= 1


def test_equalisation_spreads_a_narrow_histogram():
    from cxr_model.images import Preprocessing

    rng = np.random.default_rng(0)
    dull = encode(Image.fromarray(rng.integers(100, 140, (64, 64), dtype=np.uint8), "L"))
    plain = grey(to_model_input(dull, 64))
    equalised = grey(to_model_input(dull, 64, preprocessing=Preprocessing(equalize=True)))
    assert plain.max() - plain.min() < 45
    assert equalised.min() < 20 and equalised.max() > 235


def test_border_is_cut_before_resizing():
    from cxr_model.images import Preprocessing

    arr = np.full((100, 100), 128, np.uint8)
    arr[:8], arr[-8:], arr[:, :8], arr[:, -8:] = 255, 255, 255, 255  # a burnt-in frame
    data = encode(Image.fromarray(arr, "L"))
    framed = grey(to_model_input(data, 50))
    cut = grey(to_model_input(data, 50, preprocessing=Preprocessing(border=0.1)))
    assert framed[0, 0] == 255
    assert np.all(cut == 128)


def test_preprocessing_rejects_a_border_that_leaves_nothing():
    from pydantic import ValidationError

    from cxr_model.images import Preprocessing

    with pytest.raises(ValidationError):
        Preprocessing(border=0.3)
    with pytest.raises(ValidationError):
        Preprocessing(resize="squash")
