"""Test data shared by several test files: model cards and small PNG images.

The fixtures that use them (``model_file``, ``registry``, ``models``) live in ``conftest.py``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# The image size of the small model the scoring tests register (``model_file``).
SCORING_SIZE = 32

# A card for registry tests, where the model's parameters do not matter.
CARD = dict(threshold=0.5, metrics={"accuracy": 0.9}, training={}, parameters={}, dataset_id="d1")

# A card for a version that is scored: scoring reads the image size from the card.
SCORING_CARD = dict(
    threshold=0.5,
    metrics={},
    training={},
    parameters={"training": {"image_size": SCORING_SIZE}},
    dataset_id="d1",
)


def png(seed: int) -> bytes:
    """An 80×72 greyscale PNG of noise, the same for the same seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (80, 72), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
