"""Small value helpers shared by the quality modules: missing cells, plain Python scalars, aspect ratio.

Manifests read from CSV or built by pandas carry NaN, ``pd.NA`` and numpy scalars; reasons and
summaries show them as plain values (``none``, ``3`` rather than ``3.0``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def aspect_ratio(width: Any, height: Any) -> float | None:
    """Long side / short side, to two decimals; None when a side is unknown or zero."""
    if is_missing(width) or is_missing(height) or min(width, height) <= 0:
        return None
    return round(max(width, height) / min(width, height), 2)


def is_missing(value: Any) -> bool:
    return value is None or (not isinstance(value, list | dict | str) and bool(pd.isna(value)))


def plain_value(value: Any) -> Any:
    """Numpy/pandas scalars as Python values, integral floats as int, missing as ``none``."""
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    if is_missing(value):
        return "none"
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
