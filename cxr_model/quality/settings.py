"""What the quality suites check against: suite names, manifest columns and the run-time settings.

:class:`QualitySettings` fills the suites' ``{"$PARAMETER": "min_side"}`` placeholders, so the
thresholds live in one validated model and the suites' JSON stays the same between runs.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from cxr_model.manifest import FACT_COLUMNS

IMAGE_SUITE = "cxr_images"
DATASET_SUITE = "cxr_dataset"
SPLIT_SUITE = "cxr_split"
# Columns the image suite needs; a manifest without them is refused.
MANIFEST_COLUMNS = (
    "key",
    "sha256",
    "label",
    "source",
    "patient_id",
    "original_path",
    *(c for c in FACT_COLUMNS if c != "dhash"),
)
# Columns used when present (filled with nulls otherwise, so older manifests still validate).
OPTIONAL_COLUMNS = ("view", "dhash")
# Spellings of "the metadata does not say"; like a null view, they pass the frontal-view check.
UNKNOWN_VIEWS = ("unknown", "n/a", "na", "none", "")


class QualitySettings(BaseModel):
    """Run-time values for the suites' ``$PARAMETER`` placeholders."""

    min_side: int = Field(default=64, ge=1, description="Shortest allowed image side (px).")
    max_aspect_ratio: float = Field(
        default=2.5, ge=1.0, description="Largest allowed long side / short side of an image."
    )
    min_rows: int = Field(default=10, ge=0, description="Fewest accepted images.")
    max_rows: int = Field(default=1_000_000, ge=0, description="Most accepted images.")
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP", "BMP", "TIFF"],
        description="Image formats (Pillow names) the pipeline reads.",
    )
    labels: list[str] = Field(
        default_factory=lambda: ["covid", "normal"], description="The classes; all must occur."
    )
    frontal_views: list[str] = Field(
        default_factory=lambda: ["PA", "AP", "AP Supine", "AP Erect"],
        description="Views accepted when the metadata names one (case-insensitive); images "
        "with another view (e.g. 'L', lateral) are quarantined, images without one pass.",
    )
    min_class_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Smallest share of accepted images per class."
    )
    min_patients_per_class: int = Field(
        default=2,
        ge=0,
        description="Fewest patients per class (an image without patient id is its own patient).",
    )
    near_duplicate_distance: int = Field(
        default=8,
        ge=0,
        le=256,
        description="Largest dhash Hamming distance at which a Val and a Train image count as "
        "near-duplicates (warning).",
    )
    shortcut_auc_threshold: float = Field(
        default=0.9,
        ge=0.5,
        le=1.0,
        description="AUC at which the shortcut audit flags an acquisition feature (warning).",
    )

    def expectation_parameters(self) -> dict[str, Any]:
        """Values for the suites' ``$PARAMETER`` placeholders: the settings plus derived ones."""
        views = [
            re.escape(v.strip()).replace(r"\ ", " ").replace(" ", r"\s+")
            for v in [*self.frontal_views, *UNKNOWN_VIEWS]
        ]
        return {
            **self.model_dump(),
            "frontal_view_regex": rf"(?i)^\s*(?:{'|'.join(views)})\s*$",
        }
