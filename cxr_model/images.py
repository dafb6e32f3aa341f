"""The one conversion from image file bytes to model input, and image inspection.

Training and scoring both call :func:`to_model_input`, so a model always sees images prepared
the same way. :func:`inspect_image` describes a file for the data-quality manifest without
ever raising for bad data.

Conversion, in order:

1. **Reject what is not a supported image.** Empty files, DICOM (``DICM`` magic at offset 128:
   "DICOM not supported; convert to PNG"), files Pillow cannot identify, and formats other than
   PNG, JPEG, WebP, BMP and TIFF are refused with a short reason.
2. **Decompression-bomb guard.** The pixel count from the header is checked against
   :data:`MAX_PIXELS` *before* any pixel is decoded; Pillow's own ``DecompressionBombError`` /
   ``DecompressionBombWarning`` are turned into the same error.
3. **Full decode.** ``img.load()`` decodes every pixel, so truncated or corrupt files fail here
   (never silently half-grey). For large JPEGs, :func:`to_model_input` first asks libjpeg for a
   DCT-scaled luminance decode (``img.draft("L", (size, size))``): it is several times faster,
   still reads the whole stream (so truncation is still caught) and never goes below ``size``.
4. **EXIF orientation** is applied (``ImageOps.exif_transpose``), so a phone photo tagged
   "rotate 90°" is seen upright.
5. **To 8-bit luminance (mode L):**

   - 16/32-bit integer and float greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I``, ``F``) is scaled
     linearly by the image's *actual* range (min..max → 0..255), not clipped: a 12-bit
     detector image stored in 16 bits (values 0..4095) uses the full 0..255, instead of turning
     almost black (divide by 257) or white (clip at 255). A constant image becomes all 0.
   - Alpha (``LA``, ``RGBA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparency key) is
     flattened onto **black**: transparent areas are treated like the dark, unexposed
     background of a radiograph rather than like bright bone.
   - Colour (``RGB``, ``CMYK``, ``P``, ``YCbCr``, ...) becomes ITU-R 601 luminance
     (Pillow's ``convert("L")``). Radiographs saved as RGB are grey, so nothing is lost.

6. **Preprocessing** (:class:`Preprocessing`, recorded with each model and applied identically
   at scoring): optionally cut a ``border`` share off every side (burnt-in text and markers sit
   at the edges), then **resize** to ``size × size`` by ``stretch`` (the study's squash, which
   keeps the aspect ratio as a tell-tale distortion), ``crop`` (scale the shorter side to
   ``size`` and cut the centre square) or ``pad`` (scale the longer side and pad with black), and
   optionally **equalise** the histogram of the image content (before padding), which removes
   most of the exposure and contrast differences between hospitals. The filter is Pillow's
   ``BILINEAR`` with ``reducing_gap=2.0``: Pillow's bilinear is area-aware (antialiased) when
   shrinking, and the reducing gap first box-reduces big images by an integer factor, which
   is fast and visually indistinguishable from a full-size bilinear pass. Upscaling small
   images is plain bilinear.
7. **Replicate** the single L channel to :data:`MODEL_CHANNELS` (3) identical channels, because
   the study's CNN (and ImageNet-style backbones) take 3-channel input. Output is a C-contiguous
   ``uint8`` array of shape ``(size, size, 3)``; scaling to 0..1 is the model's job.

This module depends only on Pillow and numpy (no Prefect, no TensorFlow).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from cxr_model.image_hash import DHASH_HEX_DIGITS, dhash, hamming
from cxr_model.memory import ByteBudget, return_large_blocks

__all__ = [
    "LEGACY_PREPROCESSING",
    "DHASH_HEX_DIGITS",
    "MAX_PIXELS",
    "MODEL_CHANNELS",
    "SUPPORTED_FORMATS",
    "Preprocessing",
    "ImageError",
    "ImageFacts",
    "hamming",
    "inspect_image",
    "to_model_input",
]

MODEL_CHANNELS = 3
"""Channels of the model input: the L channel replicated three times."""

MAX_PIXELS = 50_000_000
"""Refuse to decode images with more pixels than this (width × height, checked from the header)."""

SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
"""Formats accepted, as Pillow names them (``MPO``, a multi-picture JPEG, is reported as JPEG)."""

MAX_DECODED_BYTES = 256 * 1024**2
"""Refuse to decode an image whose pixels would take more memory than this (width × height ×
bytes per pixel, from the header, after a JPEG's reduced decode), whatever its pixel count."""

DECODING_BYTES = 512 * 1024**2
"""Memory all the threads of a process may use at once to decode and convert images; a big image
waits for room rather than adding to others (one alone is always let through)."""
WORKING_COPIES = 3
"""Copies of its decoded pixels an image holds at most while decoded and converted."""
_DECODING = ByteBudget(DECODING_BYTES)
_BLOCK_PIXELS = 1 << 18  # 2 MB of float64 temporaries: small enough not to pile up per thread
return_large_blocks()  # decoded images are let go, not kept per thread (see there)

RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 2.0

_PILLOW_FORMATS = SUPPORTED_FORMATS  # JPEG opens multi-picture (MPO) files too
_SIXTEEN_BIT_OR_WIDER = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
# EXIF orientations 5..8 include a 90° turn, so width and height swap.
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class Preprocessing(BaseModel):
    """How a decoded x-ray becomes a square model input (step 6 of the module docstring).

    Part of a model's input contract: training records it in the model's parameters and scoring
    applies the recorded one, so a model always sees images prepared as in its training.
    """

    model_config = ConfigDict(frozen=True)

    resize: Literal["stretch", "crop", "pad"] = Field(
        default="stretch",
        description="stretch: squash to a square (the study); crop: centre square after scaling "
        "the shorter side; pad: scale the longer side and pad with black.",
    )
    equalize: bool = Field(
        default=False, description="Histogram-equalise the image content (intensity normalisation)."
    )
    border: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.25,
        description="Share of the width and height cut off each side before resizing.",
    )

    @classmethod
    def of_model(cls, training: dict) -> Preprocessing:
        """The preprocessing recorded in a model's training parameters; models registered before
        it was recorded used the study's (:data:`LEGACY_PREPROCESSING`)."""
        return cls.model_validate(training.get("preprocessing") or {})

    @property
    def name(self) -> str:
        """A short, stable name, e.g. ``crop-eq-b0.05``; part of cache keys."""
        parts = [self.resize] + (["eq"] if self.equalize else [])
        if self.border:
            parts.append(f"b{self.border:g}")
        return "-".join(parts)


LEGACY_PREPROCESSING = Preprocessing()
"""The study's conversion (stretch, no equalisation, no border): models registered before
preprocessing was recorded were trained with it."""


class ImageError(ValueError):
    """An image that cannot be turned into model input. ``str(err) == f"{name}: {reason}"``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):  # keep it picklable (process pools, task results)
        return (type(self), (self.name, self.reason))


@dataclass(frozen=True)
class ImageFacts:
    """What :func:`inspect_image` found. ``width``/``height`` are after EXIF orientation."""

    format: str | None
    mode: str | None
    width: int | None
    height: int | None
    bytes: int
    decodable: bool
    error: str | None
    dhash: str | None = None
    """64-bit difference hash of the decoded, upright image as 16 hex digits (see :func:`dhash`);
    None when the image is not decodable."""


class _Bad(Exception):
    """Internal: a reason plus whatever was learnt from the header before it went wrong."""

    def __init__(
        self,
        reason: str,
        *,
        format: str | None = None,
        mode: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.format = format
        self.mode = mode
        self.width = width
        self.height = height


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _format_name(img: Image.Image) -> str | None:
    return "JPEG" if img.format == "MPO" else img.format


def image_header(data: bytes) -> tuple[str | None, int, int] | None:
    """Format name, width and height from an image's header (nothing is decoded), in any format
    Pillow knows; None when the bytes are not an image it can open."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return _format_name(img), *img.size
    except Exception:  # noqa: BLE001 - any header parser failure means "not a readable image"
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _bomb_reason(pixels: int, limit: int) -> str:
    return f"too many pixels ({pixels} > {limit}): refusing to decode"


def _pillow_bomb_reason(exc: BaseException) -> str:
    """Pillow's own guard fired (``Image.MAX_IMAGE_PIXELS`` set below our limit): same wording."""
    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(numbers) >= 2:
        return _bomb_reason(numbers[0], numbers[1])
    return f"too many pixels ({_first_line(exc)}): refusing to decode"


def decoded_bytes(img: Image.Image) -> int:
    """Bytes Pillow needs for ``img``'s pixels, from its header: 1 per pixel for ``1``/``L``/
    ``P``, 2 for 16-bit greyscale, 4 for every other mode (Pillow keeps RGB in 4)."""
    width, height = img.size
    if img.mode in ("1", "L", "P"):
        per_pixel = 1
    elif img.mode.startswith("I;16"):
        per_pixel = 2
    else:
        per_pixel = 4
    return width * height * per_pixel


@contextmanager
def _decoded(
    data: bytes, draft_size: int | None = None, max_pixels: int | None = None
) -> Iterator[Image.Image]:
    """Open and fully decode ``data``; raise :class:`_Bad` with a short reason on bad data.

    The image is yielded while it holds its share of the process's decoding budget
    (:data:`WORKING_COPIES` × :func:`decoded_bytes`), so whatever the ``with`` block does with it
    (conversion, resizing) is counted too. ``max_pixels`` defaults to :data:`MAX_PIXELS` (read at
    call time); with ``draft_size`` a JPEG is decoded reduced, never below that size.
    """
    if len(data) == 0:
        raise _Bad("empty file (0 bytes)")
    if _is_dicom(data):
        raise _Bad("DICOM not supported; convert to PNG", format="DICOM")

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; treat the warning as an error.
        # (catch_warnings is process-global; with threads the worst case is that this warning is
        # only printed for one image, and the MAX_PIXELS check below still applies.)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Bad(_pillow_bomb_reason(exc)) from exc
        except UnidentifiedImageError as exc:
            raise _unidentified(data) from exc
        except Exception as exc:  # header parsers raise all sorts (SyntaxError, struct.error, ...)
            raise _Bad(f"not an image: {_first_line(exc)}") from exc

        fmt = _format_name(img)
        width, height = img.size
        header = {"format": fmt, "mode": img.mode, "width": width, "height": height}
        pixels = width * height
        if pixels > limit:
            raise _Bad(_bomb_reason(pixels, limit), **header)
        if width <= 0 or height <= 0:
            raise _Bad(f"truncated or corrupt: image has no pixels ({width}x{height})", **header)
        if draft_size is not None and fmt == "JPEG":
            img.draft("L", (draft_size, draft_size))  # DCT-scaled: the pixels below are fewer
        size = decoded_bytes(img)
        if size > MAX_DECODED_BYTES:
            reason = f"too large to decode ({size} bytes of pixels > {MAX_DECODED_BYTES})"
            raise _Bad(reason, **header)

    with _DECODING.holding(size * WORKING_COPIES):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _Bad(_pillow_bomb_reason(exc), **header) from exc
            except Exception as exc:  # OSError (truncated), SyntaxError, zlib.error, ValueError
                raise _Bad(f"truncated or corrupt: {_first_line(exc)}", **header) from exc
        yield img


def _unidentified(data: bytes) -> _Bad:
    """Name an image format we do not accept (GIF, ICO, ...), else say it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = Image.open(io.BytesIO(data))  # header only; never loaded
            name = other.format
    except Exception:
        name = None
    if name:
        return _Bad(f"unsupported format {name}; convert to PNG", format=name)
    sniffed = _sniff_supported(data)
    if sniffed:
        return _Bad(f"truncated or corrupt: {sniffed} header unreadable", format=sniffed)
    return _Bad("not an image: no PNG, JPEG, WebP, BMP or TIFF header found")


def _sniff_supported(data: bytes) -> str | None:
    """The supported format whose magic bytes ``data`` starts with, if any."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data.startswith(b"BM") and data[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    return None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF is not worth rejecting the image for
        return 1


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says; the image itself when it needs no turn
    (``ImageOps.exif_transpose`` would copy every pixel of it)."""
    return img if _orientation(img) == 1 else ImageOps.exif_transpose(img)


def inspect_image(data: bytes, max_pixels: int | None = None) -> ImageFacts:
    """Describe an image file for the quality manifest. Decodes every pixel; never raises for
    bad data (the problem is in ``error`` and ``decodable`` is False)."""
    try:
        with _decoded(data, max_pixels=max_pixels) as img:
            return _facts(img, len(data))
    except _Bad as bad:
        return ImageFacts(
            format=bad.format,
            mode=bad.mode,
            width=bad.width,
            height=bad.height,
            bytes=len(data),
            decodable=False,
            error=bad.reason,
        )


def _facts(img: Image.Image, size: int) -> ImageFacts:
    """What a decoded image is: format, mode, upright size and perceptual hash."""
    width, height = img.size
    orientation = _orientation(img)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    try:
        perceptual: str | None = dhash(_to_luminance(img), orientation)
    except (ValueError, OSError):  # unusual modes Pillow cannot resize; the hash is optional
        perceptual = None
    return ImageFacts(
        format=_format_name(img),
        mode=img.mode,
        width=width,
        height=height,
        bytes=size,
        decodable=True,
        error=None,
        dhash=perceptual,
    )


def inspect_facts(data: bytes, max_pixels: int | None = None) -> dict:
    """What :func:`inspect_image` finds in ``data``, as a plain dict (cheap to send between
    processes; ingest decodes in worker processes, which is why the limit is an argument)."""
    return asdict(inspect_image(data, max_pixels))


def _strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """``(top row, pixels)`` of horizontal strips of about :data:`_BLOCK_PIXELS` pixels each.

    Strip by strip because ``np.asarray`` of a whole image costs three copies of its pixels
    (Pillow's ``tobytes`` joins a list of pieces) on top of the image itself.
    """
    rows = max(1, _BLOCK_PIXELS // img.width)
    for top in range(0, img.height, rows):
        yield top, np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit or float greyscale → L, scaled linearly by the image's own min..max.

    Worked through in strips (:func:`_strips`), so the temporaries stay small: a 7000 × 7000
    16-bit image needs its own pixels and the result, not 40 bytes a pixel.
    """
    lo, hi = np.inf, -np.inf
    for _, strip in _strips(img):
        finite = strip[np.isfinite(strip)] if strip.dtype.kind == "f" else strip
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not hi > lo:  # no finite pixel, or a constant image
        return Image.new("L", img.size, 0)
    scale = 255.0 / (hi - lo)
    out = Image.new("L", img.size, 0)
    for top, strip in _strips(img):
        values = strip.astype(np.float64)
        values = np.where(np.isfinite(values), values, lo)
        scaled = np.rint((values - lo) * scale).astype(np.uint8)
        out.paste(Image.fromarray(scaled, mode="L"), (0, top))
    return out


def _flatten_alpha_on_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("L")


def _to_luminance(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "L" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_OR_WIDER:
        return _wide_to_l(img)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _flatten_alpha_on_black(img)
    if mode in ("1", "P", "RGB", "CMYK"):
        return img.convert("L")
    return img.convert("RGB").convert("L")  # YCbCr, LAB, HSV, RGBX, ...


def _cut_border(img: Image.Image, share: float) -> Image.Image:
    if not share:
        return img
    width, height = img.size
    dx, dy = round(width * share), round(height * share)
    return img.crop((dx, dy, max(dx + 1, width - dx), max(dy + 1, height - dy)))


def _scaled(img: Image.Image, width: int, height: int) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((max(1, width), max(1, height)), RESAMPLE, reducing_gap=REDUCING_GAP)


def _to_square(img: Image.Image, size: int, preprocessing: Preprocessing) -> Image.Image:
    """Border cut, resize and equalisation of an L image, as ``preprocessing`` says."""
    img = _cut_border(img, preprocessing.border)
    width, height = img.size
    if preprocessing.resize == "stretch":
        img = _scaled(img, size, size)
        return ImageOps.equalize(img) if preprocessing.equalize else img
    if preprocessing.resize == "crop":
        scale = size / min(width, height)
        img = _scaled(img, max(size, round(width * scale)), max(size, round(height * scale)))
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return ImageOps.equalize(img) if preprocessing.equalize else img
    scale = size / max(width, height)
    img = _scaled(img, min(size, round(width * scale)), min(size, round(height * scale)))
    if preprocessing.equalize:
        img = ImageOps.equalize(img)
    square = Image.new("L", (size, size), 0)
    square.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return square


def to_model_input(
    data: bytes,
    size: int,
    *,
    name: str = "<bytes>",
    preprocessing: Preprocessing = LEGACY_PREPROCESSING,
) -> np.ndarray:
    """Convert image file bytes to a ``(size, size, 3)`` uint8 array (see the module docstring).

    Raises :class:`ImageError` naming ``name`` and the reason when the bytes are not a usable
    image (empty, DICOM, not an image, unsupported format, too many pixels, truncated/corrupt).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    try:
        with _decoded(data, draft_size=size) as decoded:
            img = _to_square(_to_luminance(_upright(decoded)), size, preprocessing)
    except _Bad as bad:
        raise ImageError(name, bad.reason) from bad
    except (ValueError, OSError) as exc:  # e.g. broken EXIF or palette found after decoding
        raise ImageError(name, f"truncated or corrupt: {_first_line(exc)}") from exc
    lum = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(lum[:, :, np.newaxis], MODEL_CHANNELS, axis=2))
