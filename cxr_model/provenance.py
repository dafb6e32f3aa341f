"""Where a model's data came from, as its card states it: images per source and label with each
source's licenses, and the shortcut audit of the accepted images."""

from __future__ import annotations

import pandas as pd

from cxr_model.quality import QualityReport

NO_LICENSE = "not stated"


def dataset_sources(images: pd.DataFrame) -> list[dict]:
    """Images per source and label of ``images`` (the accepted images' manifest: ``key``,
    ``source``, ``label``, ``license``), with the licenses of each, sorted and joined."""
    licensed = images.assign(license=images["license"].fillna(NO_LICENSE))
    rows = licensed.groupby(["source", "label"]).agg(
        images=("key", "size"), license=("license", lambda v: ", ".join(sorted(set(v))))
    )
    return rows.reset_index().to_dict("records")


def dataset_audit(quality_report_json: str | bytes) -> dict | None:
    """The shortcut audit in a data-quality report (``report.json`` of a run), or None when the
    report has none."""
    report = QualityReport.model_validate_json(quality_report_json)
    return report.audit.model_dump() if report.audit else None
