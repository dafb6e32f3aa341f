"""The two quality checks a run calls: :func:`validate_manifest` and :func:`validate_split`.

``validate_manifest`` quarantines rows that fail the image suite (warnings, with a reason each),
checks the accepted rows with the dataset suite (critical), runs the shortcut audit and builds
Data Docs. ``validate_split`` checks a Train/Val split for leakage with the split suite. Neither
raises for failed expectations: the caller decides (see :class:`~cxr_model.quality.QualityError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxr_model.audit import audit_shortcuts
from cxr_model.offline_docs import serve_assets_locally
from cxr_model.quality.leakage import (
    content_table,
    near_duplicates,
    patient_table,
    split_class_table,
)
from cxr_model.quality.outcomes import outcome, row_reasons
from cxr_model.quality.reports import (
    QualityReport,
    Rejection,
    SplitReport,
    decorate_index,
    write_audit_pages,
)
from cxr_model.quality.settings import (
    DATASET_SUITE,
    IMAGE_SUITE,
    MANIFEST_COLUMNS,
    OPTIONAL_COLUMNS,
    SPLIT_SUITE,
    QualitySettings,
)
from cxr_model.quality.suites import (
    DOCS_SITE,
    default_expectations_dir,
    gx_context,
    load_suite,
    new_run_id,
    run_suite,
)
from cxr_model.quality.values import aspect_ratio, is_missing
from cxr_model.split import patient_groups


def validate_manifest(
    manifest: pd.DataFrame,
    settings: QualitySettings,
    docs_dir: Path,
    expectations_dir: Path | None = None,
) -> QualityReport:
    """Quarantine bad rows with the image suite, check the rest with the dataset suite.

    Returns the report and never raises for failed expectations (the caller decides; see
    :class:`QualityError`). Raises ValueError when the manifest lacks columns or has repeated
    keys. Data Docs for both validations, and the shortcut audit page, are built into
    ``docs_dir``.
    """
    frame = _normalized(manifest)
    expectations_dir = expectations_dir or default_expectations_dir()
    docs_dir = Path(docs_dir).resolve()
    image_suite = load_suite(expectations_dir / f"{IMAGE_SUITE}.json")
    dataset_suite = load_suite(expectations_dir / f"{DATASET_SUITE}.json")

    context = gx_context(docs_dir)
    parameters = settings.expectation_parameters()
    run_id = new_run_id("cxr-quality")

    image_results = run_suite(context, image_suite, {None: frame}, parameters, run_id)
    reasons = row_reasons(image_results, settings)
    accepted = frame[~frame["key"].isin(reasons.keys())].reset_index(drop=True)
    dataset_tables = {None: accepted, "classes": _class_table(accepted)}
    dataset_results = run_suite(context, dataset_suite, dataset_tables, parameters, run_id)
    positive = "covid" if "covid" in settings.labels or not settings.labels else settings.labels[0]
    audit = audit_shortcuts(
        accepted, threshold=settings.shortcut_auc_threshold, positive_label=positive
    )
    context.build_data_docs(site_names=[DOCS_SITE])
    serve_assets_locally(docs_dir)
    write_audit_pages(docs_dir, audit)

    paths = dict(zip(frame["key"], frame["original_path"], strict=True))
    rejected = [
        Rejection(
            key=key,
            original_path="" if is_missing(paths[key]) else str(paths[key]),
            reasons=reasons[key],
        )
        for key in frame["key"]
        if key in reasons
    ]
    outcomes = [
        outcome(image_suite.name, r, table, settings, quarantine=True) for r, table in image_results
    ] + [outcome(dataset_suite.name, r, table, settings) for r, table in dataset_results]
    return QualityReport(
        total=len(frame),
        accepted_keys=list(accepted["key"]),
        rejected=rejected,
        outcomes=outcomes,
        docs_dir=str(docs_dir),
        audit=audit,
    )


def validate_split(
    split_frame: pd.DataFrame,
    images: pd.DataFrame,
    settings: QualitySettings,
    docs_dir: Path,
    expectations_dir: Path | None = None,
) -> SplitReport:
    """Check a Train/Val split for leakage with the ``cxr_split`` suite.

    Critical: a patient in more than one split, the same content (sha256) in more than one
    split, a split without images of some class. Warning: a Val image whose perceptual hash
    (``dhash`` of the image manifest ``images``, joined on ``key``) is within
    ``near_duplicate_distance`` of a Train image's; every such pair is listed in the report.
    ``split_frame`` has the columns of ``split.csv`` (``split``, ``label``, ``patient_id``,
    ``sha256``, ``key``, ...). Data Docs are added to ``docs_dir`` (the same folder as
    :func:`validate_manifest`'s is fine).
    """
    missing = [c for c in ("split", "label", "patient_id", "sha256", "key") if c not in split_frame]
    if missing:
        raise ValueError(f"split frame lacks columns: {', '.join(missing)}")
    frame = split_frame.reset_index(drop=True).copy()
    frame["split"] = frame["split"].astype(str)
    expectations_dir = expectations_dir or default_expectations_dir()
    docs_dir = Path(docs_dir).resolve()
    suite = load_suite(expectations_dir / f"{SPLIT_SUITE}.json")

    pairs, nearest, hashed = near_duplicates(frame, images, settings.near_duplicate_distance)
    tables = {
        "patients": patient_table(frame),
        "contents": content_table(frame),
        "classes": split_class_table(frame, settings.labels),
        "near_duplicates": nearest,
    }
    context = gx_context(docs_dir)
    results = run_suite(
        context, suite, tables, settings.expectation_parameters(), new_run_id("cxr-split")
    )
    context.build_data_docs(site_names=[DOCS_SITE])
    serve_assets_locally(docs_dir)
    decorate_index(docs_dir)

    counts = frame.groupby(["split", "label"]).size()
    return SplitReport(
        total=len(frame),
        counts={
            str(split): {str(label): int(n) for label, n in counts[split].items()}
            for split in counts.index.get_level_values(0).unique()
        },
        outcomes=[outcome(suite.name, r, table, settings) for r, table in results],
        near_duplicates=pairs,
        hashed=hashed,
        docs_dir=str(docs_dir),
    )


def _class_table(accepted: pd.DataFrame) -> pd.DataFrame:
    """One row per class among the accepted rows: images, share of all, distinct patients."""
    columns = ["key", "label", "images", "total", "share", "patients"]
    labelled = accepted[accepted["label"].notna()]
    if labelled.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("key", "label") else "float64") for c in columns}
        )
    groups = patient_groups(labelled)
    table = pd.DataFrame(
        {
            "images": labelled.groupby("label").size(),
            "patients": groups.groupby(labelled["label"]).nunique(),
        }
    )
    table.index.name = "label"
    table = table.reset_index()
    table["label"] = table["label"].astype(str)
    table["key"] = table["label"]
    table["total"] = len(labelled)
    table["share"] = (table["images"] / len(labelled)).round(4)
    return table[columns]


def _normalized(manifest: pd.DataFrame) -> pd.DataFrame:
    """A copy with numeric and boolean columns typed (manifests read from CSV are all str)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns: {', '.join(missing)}")
    if not manifest["key"].is_unique:
        repeated = sorted(set(manifest["key"][manifest["key"].duplicated()]))[:5]
        raise ValueError(f"manifest keys must be unique; repeated: {repeated}")
    frame = manifest.reset_index(drop=True).copy()
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in ("width", "height", "bytes"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    frame["decodable"] = [_as_bool(v) for v in frame["decodable"]]
    frame["aspect_ratio"] = [
        aspect_ratio(w, h) for w, h in zip(frame["width"], frame["height"], strict=True)
    ]
    return frame


def _as_bool(value: Any) -> bool:
    """True/False from a bool or its CSV spelling; unknown means not decodable."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return False if is_missing(value) else bool(value)
