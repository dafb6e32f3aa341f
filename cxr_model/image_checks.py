"""The image suite's per-image expectations, applied to one image at a time (for scoring).

Training quarantines a file that fails an expectation of ``expectations/cxr_images.json`` (run
through Great Expectations over the whole manifest). Scoring must refuse the same files — an
8 × 8 icon or a 2000 × 40 strip gets no confident probability — from the same definitions, but
one image at a time and in microseconds, so here each expectation of that suite is evaluated on
the facts of one image (format, size, bytes, aspect ratio) with GX's semantics for the types the
suite uses, and a failure is reported with the suite's own ``meta.reason`` text. Expectations on
columns an image being scored has no value for (its label, its duplicate, its view) are left out.

The suite's JSON is read as data here, without Great Expectations: scoring imports neither GX nor
TensorFlow (GX itself checks the same file whenever images are ingested).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_model.quality import (
    IMAGE_SUITE,
    QualitySettings,
    aspect_ratio,
    default_expectations_dir,
    expectation_reason,
)

__all__ = ["SCORING_FACTS", "ImageCheck", "ImageChecks", "scoring_facts"]

# The facts scoring knows about an image before it predicts (from the file and its header).
SCORING_FACTS = ("format", "width", "height", "bytes", "aspect_ratio")


@dataclass(frozen=True)
class ImageCheck:
    """One column expectation of the image suite with its parameters filled in."""

    expectation: str
    column: str
    kwargs: dict[str, Any]
    meta: dict[str, Any]

    def passes(self, value: Any) -> bool:
        """GX's verdict for one value (a missing value passes all but the null checks)."""
        if self.expectation == "expect_column_values_to_not_be_null":
            return value is not None
        if self.expectation == "expect_column_values_to_be_null":
            return value is None
        if value is None:
            return True
        if self.expectation == "expect_column_values_to_be_in_set":
            return value in self.kwargs["value_set"]
        if self.expectation == "expect_column_values_to_match_regex":
            return re.search(self.kwargs["regex"], str(value)) is not None
        return _between(value, self.kwargs)


_SUPPORTED = {
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_be_between",
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_null",
    "expect_column_values_to_match_regex",
}


def _between(value: Any, kwargs: Mapping[str, Any]) -> bool:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and (value <= low if kwargs.get("strict_min") else value < low):
        return False
    if high is not None and (value >= high if kwargs.get("strict_max") else value > high):
        return False
    return True


def _filled(value: Any, parameters: Mapping[str, Any]) -> Any:
    """A kwarg with a ``{"$PARAMETER": name}`` placeholder replaced by its run-time value."""
    if isinstance(value, dict) and set(value) == {"$PARAMETER"}:
        return parameters[value["$PARAMETER"]]
    return value


@dataclass(frozen=True)
class ImageChecks:
    """The image suite's expectations on the facts scoring has, with the run's settings."""

    checks: tuple[ImageCheck, ...]
    settings: QualitySettings

    @classmethod
    def from_suite(
        cls, settings: QualitySettings, expectations_dir: Path | None = None
    ) -> ImageChecks:
        path = (expectations_dir or default_expectations_dir()) / f"{IMAGE_SUITE}.json"
        try:
            expectations = json.loads(path.read_text())["expectations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not an expectation suite: {exc}") from exc
        parameters = settings.expectation_parameters()
        checks = []
        for index, expectation in enumerate(expectations):
            kind, kwargs = expectation.get("type"), dict(expectation.get("kwargs") or {})
            column = kwargs.get("column")
            if column not in SCORING_FACTS:
                continue
            if kind not in _SUPPORTED:
                raise ValueError(
                    f"{path}: expectation {index}: scoring cannot apply {kind} on {column}; "
                    f"supported: {sorted(_SUPPORTED)}"
                )
            filled = {k: _filled(v, parameters) for k, v in kwargs.items()}
            checks.append(ImageCheck(kind, column, filled, dict(expectation.get("meta") or {})))
        return cls(tuple(checks), settings)

    def failures(self, facts: Mapping[str, Any]) -> list[str]:
        """Why an image with these facts may not be scored (the suite's reasons); [] if it may."""
        reasons: list[str] = []
        for check in self.checks:
            value = facts.get(check.column)
            if not check.passes(value):
                reason = expectation_reason(
                    check.expectation, check.kwargs, check.meta, dict(facts), value, self.settings
                )
                if reason not in reasons:
                    reasons.append(reason)
        return reasons


def scoring_facts(format_name: str | None, width: int, height: int, size: int) -> dict[str, Any]:
    """The facts :class:`ImageChecks` looks at, from an image's header and file size."""
    return {
        "format": format_name,
        "width": width,
        "height": height,
        "bytes": size,
        "aspect_ratio": aspect_ratio(width, height),
    }
