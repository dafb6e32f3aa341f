"""Data quality for the image manifest and the Train/Val split, with Great Expectations (GX 1.x).

The suites live as GX JSON in the repo's ``expectations/`` folder: ``cxr_images`` quarantines
bad rows (warnings, one reason each), ``cxr_dataset`` checks the accepted rows (critical: the run
stops), ``cxr_split`` checks a split for leakage. The shortcut audit's flags are shown alongside
as warnings. Modules: ``settings`` (names, columns, :class:`QualitySettings`), ``suites`` (GX
plumbing), ``outcomes`` (results → reasons), ``leakage`` (split tables, near-duplicates),
``reports`` (report models, Markdown, Data Docs extras), ``checks`` (the two entry points).

GX is imported inside functions only, so importing this package (as scoring does, through
:mod:`cxr_model.image_checks`) does not import GX. This package does not import Prefect.
"""

from cxr_model.quality.checks import validate_manifest, validate_split
from cxr_model.quality.outcomes import expectation_reason
from cxr_model.quality.reports import (
    AUDIT_PAGE,
    ExpectationOutcome,
    NearDuplicate,
    OutcomeReport,
    QualityError,
    QualityReport,
    Rejection,
    SplitReport,
)
from cxr_model.quality.settings import (
    DATASET_SUITE,
    IMAGE_SUITE,
    MANIFEST_COLUMNS,
    OPTIONAL_COLUMNS,
    SPLIT_SUITE,
    UNKNOWN_VIEWS,
    QualitySettings,
)
from cxr_model.quality.suites import DOCS_SITE, default_expectations_dir, load_suite
from cxr_model.quality.values import aspect_ratio

__all__ = [
    "AUDIT_PAGE",
    "DATASET_SUITE",
    "DOCS_SITE",
    "IMAGE_SUITE",
    "MANIFEST_COLUMNS",
    "OPTIONAL_COLUMNS",
    "SPLIT_SUITE",
    "UNKNOWN_VIEWS",
    "ExpectationOutcome",
    "NearDuplicate",
    "OutcomeReport",
    "QualityError",
    "QualityReport",
    "QualitySettings",
    "Rejection",
    "SplitReport",
    "aspect_ratio",
    "default_expectations_dir",
    "expectation_reason",
    "load_suite",
    "validate_manifest",
    "validate_split",
]
