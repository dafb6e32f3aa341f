"""cxr_model.provenance: what a model card says about where the data came from."""

from __future__ import annotations

import pandas as pd

from cxr_model.audit import ShortcutAudit
from cxr_model.provenance import NO_LICENSE, dataset_audit, dataset_sources
from cxr_model.quality import QualityReport


def test_sources_count_images_per_label_and_name_every_license():
    images = pd.DataFrame(
        {
            "key": ["a", "b", "c", "d"],
            "source": ["s1", "s1", "s1", "s2"],
            "label": ["covid", "covid", "normal", "normal"],
            "license": ["CC-BY", "CC0", None, "CC0"],
        }
    )

    assert dataset_sources(images) == [
        {"source": "s1", "label": "covid", "images": 2, "license": "CC-BY, CC0"},
        {"source": "s1", "label": "normal", "images": 1, "license": NO_LICENSE},
        {"source": "s2", "label": "normal", "images": 1, "license": "CC0"},
    ]
    assert images["license"].isna().sum() == 1  # the caller's frame is left as it was


def report(audit: ShortcutAudit | None) -> str:
    return QualityReport(
        outcomes=[], total=1, accepted_keys=["a"], rejected=[], docs_dir="", audit=audit
    ).model_dump_json()


def test_audit_is_read_from_the_quality_report():
    audit = ShortcutAudit(
        positive_label="covid",
        threshold=0.8,
        images=1,
        label_counts={"covid": 1},
        features=[],
        skipped={},
        label_mix=[],
        flags=[],
        note="only one class",
    )

    assert dataset_audit(report(audit)) == audit.model_dump()
    assert dataset_audit(report(audit).encode()) == audit.model_dump()
    assert dataset_audit(report(None)) is None
