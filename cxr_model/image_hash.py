"""Perceptual hashes of images, to find near-duplicates (re-encoded or rescaled copies).

A difference hash survives re-encoding and rescaling, so ingest can tell the same x-ray stored
twice (a leak between Train and Val) from a different one; :func:`hamming` says how far apart
two hashes are.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# 16 × 16 = 256 bits. Chest x-rays look alike at 8 × 8 (64 bits): on ../shared/data/cxr-real,
# 208 pairs of different images came within 4 bits. At 16 × 16 different patients are ≥ 20 bits
# apart (median 97) while JPEG re-encoded and half-size copies stay ≤ 5.
_DHASH_SIDE = 16
# How the image is shrunk for the hash. Stored hashes (the ingest index) depend on it: a change
# needs a new manifest.FACTS_VERSION.
_SHRINK = Image.Resampling.BILINEAR
_REDUCING_GAP = 2.0
DHASH_HEX_DIGITS = _DHASH_SIDE * _DHASH_SIDE // 4
# What ImageOps.exif_transpose does for each EXIF orientation.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def dhash(luminance: Image.Image, orientation: int = 1) -> str:
    """Difference hash of a decoded image's ``luminance`` (mode L, as
    :func:`~cxr_model.images.to_model_input` makes it): turned upright (EXIF ``orientation``),
    shrunk to 17 wide × 16 high, one bit per horizontal neighbour pair (left brighter than
    right), row by row, as 64 hex digits.
    """
    lum = luminance
    if orientation in _ORIENTATION_TRANSPOSE:  # rare (phone photos); a copy of the pixels
        lum = lum.transpose(_ORIENTATION_TRANSPOSE[orientation])
    small = lum.resize((_DHASH_SIDE + 1, _DHASH_SIDE), _SHRINK, reducing_gap=_REDUCING_GAP)
    pixels = np.asarray(small, dtype=np.int16)
    bits = (pixels[:, :-1] > pixels[:, 1:]).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{DHASH_HEX_DIGITS}x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes (0 = same picture, 256 = opposite).

    Near-duplicates (re-encoded, rescaled copies) are ≤ 5 apart on real x-rays; different
    patients' images ≥ 20, typically ~100. Raises ValueError for hashes that are not hex or differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"hashes differ in length: {a!r} vs {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()
