"""Data quality for the image manifest, with Great Expectations (GX 1.x).

The expectation suites live as GX JSON in the repo's ``expectations/`` folder:

- ``cxr_images`` runs on every manifest row. Its expectations have severity ``warning``: a row
  that fails any of them is *quarantined* (rejected, with a human-readable reason) and the run
  goes on. Which rows fail comes from GX's own results (``COMPLETE`` result format, rows
  identified by the ``key`` column); each expectation's ``meta.reason`` is the reason text.
- ``cxr_dataset`` runs on the accepted rows only. Its expectations have severity ``critical``:
  a failure means the run must not go on (:attr:`QualityReport.passed` is False). Expectations
  with ``meta.batch: "classes"`` run on a small derived table with one row per class (``label``,
  ``images``, ``share``, ``patients``), which is how class balance and patients per class are
  expressed with GX's column expectations.
- ``cxr_split`` runs on tables derived from a Train/Val split (:func:`validate_split`): one row
  per patient, per image content and per split × class (critical), and one row per validation
  image with its perceptual-hash distance to the nearest training image (warning).

An expectation's ``meta.batch`` names the derived table it runs on; each table is validated as
its own GX batch (suite ``<suite>.<batch>`` in Data Docs), reported under the file's suite name.

Alongside, :func:`cxr_model.audit.audit_shortcuts` checks the accepted rows for acquisition
features that give the label away (e.g. one source per class). Its flags are warnings: they are
shown at the top of :meth:`QualityReport.summary_markdown` and on a ``shortcut_audit.html`` page
linked from the Data Docs index, and never fail a run.

Configurable values (``min_side``, ``min_rows``, ...) are GX suite parameters
(``{"$PARAMETER": "min_side"}``) filled from :class:`QualitySettings` at run time. The
validation results are rendered as a GX Data Docs site into a folder of the caller's choice;
the GX stores (suites, validation results) are kept as JSON under ``<docs_dir>/.gx``, so later
validations into the same folder (e.g. :func:`validate_split`) are added to the same index.

GX is imported lazily (it takes seconds), runs in an in-memory (ephemeral) context with
progress bars and analytics off, and never touches the network. This module does not import
Prefect.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from cxr_model.audit import ShortcutAudit, audit_shortcuts
from cxr_model.manifest import FACT_COLUMNS
from cxr_model.offline_docs import serve_assets_locally
from cxr_model.safe_text import markdown_cell, markdown_text
from cxr_model.split import TRAIN, VAL, patient_groups

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.data_context import AbstractDataContext

__all__ = [
    "AUDIT_PAGE",
    "DATASET_SUITE",
    "IMAGE_SUITE",
    "MANIFEST_COLUMNS",
    "OPTIONAL_COLUMNS",
    "SPLIT_SUITE",
    "ExpectationOutcome",
    "NearDuplicate",
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

IMAGE_SUITE = "cxr_images"
DATASET_SUITE = "cxr_dataset"
SPLIT_SUITE = "cxr_split"
DOCS_SITE = "cxr"
AUDIT_PAGE = "shortcut_audit.html"
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
_COMPLETE = {"result_format": "COMPLETE", "unexpected_index_column_names": ["key"]}
_GX_STORE = ".gx"
_BANNER_FILE = "index_banner.html"


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


class Rejection(BaseModel):
    """A quarantined manifest row and why, e.g. ``shorter side 40 px < 64 px``."""

    key: str
    original_path: str
    reasons: list[str]


class ExpectationOutcome(BaseModel):
    """One expectation's result, reduced to what a user needs to act on it."""

    suite: str
    expectation: str
    column: str | None
    severity: Literal["critical", "warning"]
    success: bool
    unexpected_count: int
    summary: str


class OutcomeReport(BaseModel):
    """Expectation outcomes, and what they mean for the run."""

    outcomes: list[ExpectationOutcome]

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        """Failed critical expectations: the run must stop."""
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed warnings: rows quarantined or pairs listed; the run goes on."""
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    @property
    def passed(self) -> bool:
        """True when no critical expectation failed."""
        return not self.critical_failures


class QualityReport(OutcomeReport):
    """What :func:`validate_manifest` found; ``docs_dir`` holds the Data Docs ``index.html``.

    ``audit`` is the shortcut audit of the accepted rows (its flags are warnings only).
    """

    total: int
    accepted_keys: list[str]
    rejected: list[Rejection]
    docs_dir: str
    audit: ShortcutAudit | None = None

    def summary_markdown(self, limit: int = 200) -> str:
        """Counts, failed expectations, and the rejected files (at most ``limit``) as Markdown."""
        flags = self.audit.flags if self.audit is not None else []
        status = "FAILED" if not self.passed else "passed"
        if flags and self.passed:
            status = f"passed with {len(flags)} SHORTCUT WARNING(S)"
        lines = [f"## Data quality: {status}", ""]
        lines += [f"**Warning: {markdown_text(flag.warning)}**  " for flag in flags]
        if flags:
            lines += [
                "A model can score well on these data by learning the shortcut instead of the "
                "disease; only held-out-source and within-source results show which it learned.",
                "",
            ]
        lines += [
            f"- files: {self.total}, accepted: {len(self.accepted_keys)}, "
            f"rejected: {len(self.rejected)}",
            f"- critical failures: {len(self.critical_failures)}, warnings: "
            f"{len(self.warnings) + len(flags)} ({len(self.warnings)} from expectations, "
            f"{len(flags)} from the shortcut audit)",
            f"- Data Docs: `{Path(self.docs_dir) / 'index.html'}`",
        ]
        if self.audit is not None:
            lines += [
                f"- shortcut audit: {len(self.audit.flags)} flag(s), "
                f"`{Path(self.docs_dir) / AUDIT_PAGE}`",
                "",
                self.audit.summary_markdown(heading="###").rstrip("\n"),
            ]
        lines += _failed_table(self.critical_failures + self.warnings)
        if self.rejected:
            lines += [
                "",
                "### Rejected files",
                "",
                "| key | original path | reasons |",
                "|---|---|---|",
            ]
            lines += [
                f"| {markdown_cell(r.key)} | {markdown_cell(r.original_path)} | {markdown_cell('; '.join(r.reasons))} |"
                for r in self.rejected[:limit]
            ]
            if len(self.rejected) > limit:
                lines.append(f"\n... and {len(self.rejected) - limit} more rejected files")
        return "\n".join(lines) + "\n"


class QualityError(Exception):
    """Raised by callers when a report has critical failures; one line per failure."""

    def __init__(self, report: QualityReport | SplitReport) -> None:
        self.report = report
        failures = report.critical_failures
        lines = [f"data quality failed: {len(failures)} critical expectation(s) failed"]
        lines += [
            f"- {o.suite}: {o.expectation}{f' [{o.column}]' if o.column else ''}: {o.summary}"
            for o in failures
        ]
        self.lines = lines  # printed one per console line
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report,))


def default_expectations_dir() -> Path:
    """``$CXR_EXPECTATIONS_DIR`` if set, else the repo's ``expectations/`` folder."""
    configured = os.environ.get("CXR_EXPECTATIONS_DIR")
    return Path(configured) if configured else Path(__file__).parents[1] / "expectations"


def load_suite(path: Path) -> ExpectationSuite:
    """Build a GX ExpectationSuite from its JSON file; raise ValueError on a bad expectation.

    (``ExpectationSuite(expectations=[...])`` itself only *logs* invalid expectations and drops
    them, so each one is built here first.)
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    data = json.loads(path.read_text())
    expectations = []
    for index, raw in enumerate(data.get("expectations", [])):
        config = {k: v for k, v in raw.items() if k != "id"}
        try:
            expectations.append(ExpectationConfiguration(**config).to_domain_obj())
        except Exception as exc:  # GX raises several unrelated types here
            raise ValueError(f"{path}: expectation {index} ({raw.get('type')}): {exc}") from exc
    return gx.ExpectationSuite(
        name=data["name"],
        expectations=expectations,
        meta=data.get("meta"),
        notes=data.get("notes"),
    )


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

    context = _context(docs_dir)
    parameters = settings.expectation_parameters()
    run_id = _run_id("cxr-quality")

    image_results = _run_suite(context, image_suite, {None: frame}, parameters, run_id)
    reasons = _row_reasons(image_results, settings)
    accepted = frame[~frame["key"].isin(reasons.keys())].reset_index(drop=True)
    dataset_tables = {None: accepted, "classes": _class_table(accepted)}
    dataset_results = _run_suite(context, dataset_suite, dataset_tables, parameters, run_id)
    positive = "covid" if "covid" in settings.labels or not settings.labels else settings.labels[0]
    audit = audit_shortcuts(
        accepted, threshold=settings.shortcut_auc_threshold, positive_label=positive
    )
    context.build_data_docs(site_names=[DOCS_SITE])
    serve_assets_locally(docs_dir)
    _write_audit_pages(docs_dir, audit)

    paths = dict(zip(frame["key"], frame["original_path"], strict=True))
    rejected = [
        Rejection(
            key=key,
            original_path="" if _missing(paths[key]) else str(paths[key]),
            reasons=reasons[key],
        )
        for key in frame["key"]
        if key in reasons
    ]
    outcomes = [
        _outcome(image_suite.name, r, table, settings, quarantine=True)
        for r, table in image_results
    ] + [_outcome(dataset_suite.name, r, table, settings) for r, table in dataset_results]
    return QualityReport(
        total=len(frame),
        accepted_keys=list(accepted["key"]),
        rejected=rejected,
        outcomes=outcomes,
        docs_dir=str(docs_dir),
        audit=audit,
    )


# --- split validation --------------------------------------------------------------------------


class NearDuplicate(BaseModel):
    """A validation image that looks like a training image (dhash distance ≤ the setting)."""

    val_key: str
    val_path: str
    train_key: str
    train_path: str
    distance: int


class SplitReport(OutcomeReport):
    """What :func:`validate_split` found; ``docs_dir`` holds the Data Docs ``index.html``."""

    total: int
    counts: dict[str, dict[str, int]]  # split -> label -> images
    near_duplicates: list[NearDuplicate]
    hashed: dict[str, int]  # Val/Train images with a perceptual hash (compared for near-dups)
    docs_dir: str

    def summary_markdown(self, limit: int = 50) -> str:
        """Counts per split, failed expectations and near-duplicate pairs as Markdown."""
        status = "passed" if self.passed else "FAILED"
        labels = sorted({label for per in self.counts.values() for label in per})
        lines = [
            f"## Split quality: {status}",
            "",
            f"- images: {self.total}; "
            + "; ".join(
                f"{split}: " + ", ".join(f"{label} {per.get(label, 0)}" for label in labels)
                for split, per in self.counts.items()
            ),
            f"- critical failures: {len(self.critical_failures)}, warnings: {len(self.warnings)}",
            f"- near-duplicates: {len(self.near_duplicates)} pair(s) among "
            f"{self.hashed.get(VAL, 0)} {VAL} × {self.hashed.get(TRAIN, 0)} {TRAIN} images "
            "with a perceptual hash",
            f"- Data Docs: `{Path(self.docs_dir) / 'index.html'}`",
        ]
        lines += _failed_table(self.critical_failures + self.warnings)
        if self.near_duplicates:
            lines += [
                "",
                "### Near-duplicates across splits",
                "",
                "| distance | Val image | Train image |",
                "|---:|---|---|",
            ]
            lines += [
                f"| {d.distance} | {markdown_cell(d.val_path or d.val_key)} "
                f"| {markdown_cell(d.train_path or d.train_key)} |"
                for d in self.near_duplicates[:limit]
            ]
            if len(self.near_duplicates) > limit:
                lines.append(f"\n... and {len(self.near_duplicates) - limit} more pairs")
        return "\n".join(lines) + "\n"


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

    pairs, nearest, hashed = _near_duplicates(frame, images, settings.near_duplicate_distance)
    tables = {
        "patients": _patient_table(frame),
        "contents": _content_table(frame),
        "classes": _split_class_table(frame, settings.labels),
        "near_duplicates": nearest,
    }
    context = _context(docs_dir)
    results = _run_suite(
        context, suite, tables, settings.expectation_parameters(), _run_id("cxr-split")
    )
    context.build_data_docs(site_names=[DOCS_SITE])
    serve_assets_locally(docs_dir)
    _decorate_index(docs_dir)

    counts = frame.groupby(["split", "label"]).size()
    return SplitReport(
        total=len(frame),
        counts={
            str(split): {str(label): int(n) for label, n in counts[split].items()}
            for split in counts.index.get_level_values(0).unique()
        },
        outcomes=[_outcome(suite.name, r, table, settings) for r, table in results],
        near_duplicates=pairs,
        hashed=hashed,
        docs_dir=str(docs_dir),
    )


def _patient_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (real) patient: in how many splits, which, how many images."""
    patient = frame["patient_id"].astype("string").str.strip()
    known = frame[patient.notna() & (patient != "")].assign(patient=patient)
    return _spread(known, "patient", "patient")


def _content_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image content (sha256): in how many splits, which, and its keys."""
    sha = frame["sha256"].astype("string")
    return _spread(frame[sha.notna() & (sha != "")], "sha256", "sha256")


def _spread(frame: pd.DataFrame, by: str, name: str) -> pd.DataFrame:
    columns = ["key", name, "n_splits", "splits", "images", "keys"]
    if frame.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c in ("n_splits", "images") else object)
                for c in columns
            }
        )
    grouped = frame.groupby(by, sort=True)
    table = pd.DataFrame(
        {
            "n_splits": grouped["split"].nunique(),
            "splits": grouped["split"].agg(lambda s: ", ".join(sorted(set(s)))),
            "images": grouped.size(),
            "keys": grouped["key"].agg(lambda s: _shorten(sorted(map(str, s)))),
        }
    )
    table.index.name = name
    table = table.reset_index()
    table["key"] = table[name].astype(str)
    return table[columns]


def _split_class_table(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per split × class (Train and Val always; other splits when present)."""
    splits = [TRAIN, VAL] + sorted(set(frame["split"]) - {TRAIN, VAL})
    counts = frame.groupby(["split", "label"]).size()
    rows = [
        {
            "key": f"{split}/{label}",
            "split": split,
            "label": label,
            "images": int(counts.get((split, label), 0)),
        }
        for split in splits
        for label in labels
    ]
    return pd.DataFrame(rows, columns=["key", "split", "label", "images"])


def _near_duplicates(
    frame: pd.DataFrame, images: pd.DataFrame, distance: int, block: int = 2048
) -> tuple[list[NearDuplicate], pd.DataFrame, dict[str, int]]:
    """Val × Train pairs with dhash distance ≤ ``distance`` (identical content excluded: that is
    the critical sha256 check), and per Val image its nearest Train image."""
    columns = [
        "key",
        "original_path",
        "nearest_train_key",
        "nearest_train_path",
        "nearest_train_distance",
    ]
    info = images.drop_duplicates("key").set_index("key") if "key" in images else None
    lookup = frame[["key", "split", "sha256"]].copy()
    for column in ("dhash", "original_path"):
        if column in frame:
            lookup[column] = frame[column]
        elif info is not None and column in info:
            lookup[column] = lookup["key"].map(info[column])
        else:
            lookup[column] = None
    # each hash as 64-bit words; hashes of another length than the usual (older manifests)
    # are left out of the comparison rather than compared bit for bit with the wrong layout
    words = [_hash_words(h) for h in lookup["dhash"]]
    lengths = pd.Series([len(w) for w in words if w is not None])
    usual = int(lengths.mode().iloc[0]) if len(lengths) else 0
    lookup["hash"] = pd.Series(
        [w if w is not None and len(w) == usual else None for w in words],
        index=lookup.index,
        dtype=object,
    )
    val = lookup[(lookup["split"] == VAL) & lookup["hash"].notna()].reset_index(drop=True)
    train = lookup[(lookup["split"] == TRAIN) & lookup["hash"].notna()].reset_index(drop=True)
    nearest = pd.DataFrame(
        {
            "key": val["key"].astype(str),
            "original_path": val["original_path"],
            "nearest_train_key": None,
            "nearest_train_path": None,
            "nearest_train_distance": np.full(len(val), np.nan),
        },
        columns=columns,
    )
    hashed = {VAL: len(val), TRAIN: len(train)}
    if val.empty or train.empty:
        return [], nearest, hashed
    train_hash = np.stack(train["hash"].to_list())
    train_sha = train["sha256"].astype(str).to_numpy()
    val_hash = np.stack(val["hash"].to_list())
    val_sha = val["sha256"].astype(str).to_numpy()
    never = usual * 64 + 1  # farther than any two hashes can be
    pairs: list[NearDuplicate] = []
    best = np.full(len(val), never, dtype=np.int64)
    best_at = np.zeros(len(val), dtype=np.int64)
    step = max(1, block * block // max(1, len(train)))
    for start in range(0, len(val), step):
        stop = min(start + step, len(val))
        xor = val_hash[start:stop, None, :] ^ train_hash[None, :, :]
        d = np.bitwise_count(xor).astype(np.int64).sum(axis=-1)
        d[val_sha[start:stop, None] == train_sha[None, :]] = never  # identical: not "near"
        best[start:stop] = d.min(axis=1)
        best_at[start:stop] = d.argmin(axis=1)
        for i, j in zip(*np.nonzero(d <= distance), strict=True):
            v, t = val.iloc[start + i], train.iloc[j]
            pairs.append(
                NearDuplicate(
                    val_key=str(v["key"]),
                    val_path=_text(v["original_path"]),
                    train_key=str(t["key"]),
                    train_path=_text(t["original_path"]),
                    distance=int(d[i, j]),
                )
            )
    found = best < never
    nearest.loc[found, "nearest_train_key"] = train["key"].to_numpy()[best_at[found]]
    nearest.loc[found, "nearest_train_path"] = train["original_path"].to_numpy()[best_at[found]]
    nearest.loc[found, "nearest_train_distance"] = best[found]
    pairs.sort(key=lambda p: (p.distance, p.val_key, p.train_key))
    return pairs, nearest, hashed


def _hash_words(value: Any) -> np.ndarray | None:
    """A hex hash as big-endian 64-bit words, or None when missing or not hex."""
    if _missing(value) or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        raw = bytes.fromhex(text.zfill(-(-len(text) // 16) * 16))
    except ValueError:
        return None
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value)


def _shorten(values: list[str], limit: int = 5) -> str:
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


# --- GX plumbing -------------------------------------------------------------------------------


def _context(docs_dir: Path) -> AbstractDataContext:
    """An ephemeral GX context whose only Data Docs site is written to ``docs_dir``.

    Suites and validation results are stored as JSON under ``docs_dir/.gx``, so a later context
    writing to the same folder (e.g. :func:`validate_split` after :func:`validate_manifest`)
    lists every validation in the index instead of removing the earlier pages.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
    )

    defaults = InMemoryStoreBackendDefaults()
    store = docs_dir / _GX_STORE
    for name, folder in (
        (defaults.expectations_store_name, "expectations"),
        (defaults.validation_results_store_name, "validations"),
    ):
        defaults.stores[name] = {
            **defaults.stores[name],
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(store / folder),
            },
        }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        analytics_enabled=False,
        progress_bars={"globally": False, "metric_calculations": False},
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.data_sources.add_pandas("cxr")
    return context


def _run_id(name: str) -> Any:
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=name, run_time=datetime.datetime.now(datetime.UTC))


def _run_suite(
    context: AbstractDataContext,
    suite: ExpectationSuite,
    tables: dict[str | None, pd.DataFrame],
    parameters: dict[str, Any],
    run_id: Any,
) -> list[tuple[ExpectationValidationResult, pd.DataFrame]]:
    """Validate each expectation of ``suite`` on the table its ``meta.batch`` names (None: the
    main table); each table is a GX batch with its own stored suite ``<suite>.<batch>``.

    Returns (result, table) pairs in the suite file's order.
    """
    import great_expectations as gx

    groups: dict[str | None, list[Any]] = {}
    for expectation in suite.expectations:
        groups.setdefault((expectation.meta or {}).get("batch"), []).append(expectation)
    unknown = sorted(str(b) for b in groups if b not in tables)
    if unknown:
        raise ValueError(
            f"suite {suite.name}: unknown meta.batch {unknown}; "
            f"known: {sorted(str(b) for b in tables if b)}"
        )
    position = {id(e): index for index, e in enumerate(suite.expectations)}
    ranked: list[tuple[int, ExpectationValidationResult, pd.DataFrame]] = []
    for batch_name, expectations in groups.items():
        name = suite.name if batch_name is None else f"{suite.name}.{batch_name}"
        asset_name = name.replace(".", "_")
        table = tables[batch_name]
        asset = context.data_sources.get("cxr").add_dataframe_asset(asset_name)
        batch = asset.add_batch_definition_whole_dataframe(asset_name)
        part = gx.ExpectationSuite(
            name=name,
            expectations=[e.copy() for e in expectations],
            meta=suite.meta,
            notes=suite.notes,
        )
        stored = context.suites.add_or_update(part)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=stored)
        )
        result = definition.run(
            batch_parameters={"dataframe": _markup_escaped(table)},
            expectation_parameters=parameters,
            result_format=_COMPLETE,
            run_id=run_id,
        )
        for r in result.results:
            r.result = _markup_restored(r.result)
        order = {e.id: position[id(expectations[i])] for i, e in enumerate(stored.expectations)}
        ranked += [
            (order.get(r.expectation_config.id, len(position)), r, table) for r in result.results
        ]
    ranked.sort(key=lambda item: item[0])
    return [(r, table) for _, r, table in ranked]


# --- derived tables ----------------------------------------------------------------------------


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


# --- Data Docs extras --------------------------------------------------------------------------


def _write_audit_pages(docs_dir: Path, audit: ShortcutAudit) -> None:
    """``shortcut_audit.html`` beside the Data Docs index, and a banner at the top of the index
    (kept in ``.gx`` so later rebuilds of the index, e.g. by :func:`validate_split`, show it)."""
    (docs_dir / AUDIT_PAGE).write_text(audit.to_html(), encoding="utf-8")
    if audit.flags:
        items = "".join(f"<li>{html.escape(flag.warning)}</li>" for flag in audit.flags)
        banner = (
            '<div id="cxr-shortcut-audit" style="background:#fde2e1;border:2px solid #c0392b;'
            'padding:.8em 1.2em;margin:0;font-family:sans-serif">'
            f"<strong>Shortcut audit: {len(audit.flags)} feature(s) separate the labels on "
            f'their own</strong><ul style="margin:.4em 0">{items}</ul>'
            f'<a href="{AUDIT_PAGE}">Shortcut audit details</a></div>'
        )
    else:
        banner = (
            '<div id="cxr-shortcut-audit" style="padding:.5em 1.2em;font-family:sans-serif">'
            f'Shortcut audit: no flags. <a href="{AUDIT_PAGE}">Details</a></div>'
        )
    store = docs_dir / _GX_STORE
    store.mkdir(parents=True, exist_ok=True)
    (store / _BANNER_FILE).write_text(banner, encoding="utf-8")
    _decorate_index(docs_dir)


def _decorate_index(docs_dir: Path) -> None:
    """Put the stored audit banner right after ``<body>`` of the Data Docs index (once)."""
    index, banner_file = docs_dir / "index.html", docs_dir / _GX_STORE / _BANNER_FILE
    if not index.is_file() or not banner_file.is_file():
        return
    page = index.read_text(encoding="utf-8")
    if 'id="cxr-shortcut-audit"' in page:
        return
    body = re.search(r"<body[^>]*>", page)
    if body:
        page = (
            page[: body.end()]
            + "\n"
            + banner_file.read_text(encoding="utf-8")
            + "\n"
            + page[body.end() :]
        )
        index.write_text(page, encoding="utf-8")


# --- turning GX results into reasons and outcomes ----------------------------------------------


def _row_reasons(
    results: list[tuple[ExpectationValidationResult, pd.DataFrame]], settings: QualitySettings
) -> dict[str, list[str]]:
    """Reasons per failing row key, from each failed expectation's ``unexpected_index_list``.

    A reason that another of the row's reasons already says in full is left out (a 0-byte file
    fails the decodable and the bytes expectations: "not decodable: empty file (0 bytes)" and
    "empty file (0 bytes)" are one reason, the shorter kept).
    """
    reasons: dict[str, list[str]] = {}
    for r, table in results:
        for key, reason in _failing_rows(r, table, settings):
            found = reasons.setdefault(key, [])
            if any(reason in other for other in found):
                found[:] = [other for other in found if reason not in other]
            elif any(other in reason for other in found):
                continue
            found.append(reason)
    return reasons


def _failing_rows(
    r: ExpectationValidationResult, table: pd.DataFrame, settings: QualitySettings
) -> list[tuple[str, str]]:
    """(key, reason) for each row an expectation found unexpected."""
    entries = (r.result or {}).get("unexpected_index_list") or []
    if not entries:
        return []
    config = r.expectation_config
    column = config.kwargs.get("column")
    keys = {entry["key"] for entry in entries}
    rows = table[table["key"].isin(keys)].drop_duplicates("key").set_index("key", drop=False)
    rows_by_key = rows.to_dict("index")
    return [
        (
            entry["key"],
            expectation_reason(
                config.type,
                config.kwargs,
                config.meta,
                rows_by_key.get(entry["key"], {}),
                entry.get(column),
                settings,
            ),
        )
        for entry in entries
    ]


def expectation_reason(
    expectation: str,
    kwargs: dict[str, Any],
    meta: dict[str, Any] | None,
    row: dict[str, Any],
    value: Any,
    settings: QualitySettings,
) -> str:
    """Render ``meta.reason`` for one row (fields: the row's columns, value, settings)."""
    column = kwargs.get("column")
    template = (meta or {}).get("reason") or f"{expectation} failed on {column}={{value}}"
    sides = [int(v) for v in (row.get("width"), row.get("height")) if not _missing(v)]
    fields: dict[str, Any] = {
        k: ", ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in settings.model_dump().items()
    }
    fields.update({k: _plain(v) for k, v in row.items()})
    fields.update(
        value=_plain(value),
        error=row.get("error") or "no error message recorded",
        shorter_side=min(sides) if sides else "unknown",
    )
    try:
        return template.format_map(_Fields(fields))
    except (ValueError, TypeError):  # a format spec that does not fit the value, e.g. {x:.2f}
        return template.replace("{", "").replace("}", "")


def _outcome(
    suite: str,
    r: ExpectationValidationResult,
    table: pd.DataFrame,
    settings: QualitySettings,
    quarantine: bool = False,
) -> ExpectationOutcome:
    config = r.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    result = r.result or {}
    failure = _exception_message(r.exception_info)
    severity: Literal["critical", "warning"] = (
        "critical" if failure or str(config.severity.value) == "critical" else "warning"
    )
    if config.type == "expect_column_distinct_values_to_contain_set":
        unexpected = int(result.get("missing_count") or 0)  # expected values that are absent
    else:
        unexpected = int(result.get("unexpected_count") or 0)
    hint = (config.meta or {}).get("hint")
    if failure:
        summary = f"could not be evaluated (treated as critical): {failure}"
    elif r.success:
        observed = result.get("observed_value")
        summary = "passed" if observed is None else f"passed (observed {_plain(observed)})"
    elif result.get("unexpected_index_list") and (config.meta or {}).get("reason"):
        failing = _failing_rows(r, table, settings)
        total = result.get("element_count", len(table))
        if quarantine:
            key, reason = failing[0]
            summary = f"{unexpected} of {total} rows quarantined, e.g. {key}: {reason}"
        else:
            shown = "; ".join(reason for _, reason in failing[:5])
            more = f" (+{len(failing) - 5} more)" if len(failing) > 5 else ""
            summary = f"{shown}{more}"
    else:
        summary = _failure_summary(config.type, kwargs, result)
    if hint and not r.success:
        summary = f"{summary}; {hint}"
    return ExpectationOutcome(
        suite=suite,
        expectation=config.type,
        column=column,
        severity=severity,
        success=bool(r.success) and not failure,
        unexpected_count=unexpected,
        summary=summary,
    )


def _failure_summary(expectation: str, kwargs: dict[str, Any], result: dict[str, Any]) -> str:
    """One line saying what GX observed versus what was expected."""
    observed = result.get("observed_value")
    column = kwargs.get("column")
    if expectation == "expect_table_row_count_to_be_between":
        return (
            f"{observed} rows, expected between {_plain(kwargs.get('min_value'))} "
            f"and {_plain(kwargs.get('max_value'))}"
        )
    if expectation == "expect_column_distinct_values_to_contain_set":
        missing = [_plain(v) for v in result.get("partial_missing_list") or []]
        return f"no accepted rows with {column} {', '.join(map(str, missing)) or '(unknown)'}"
    if "unexpected_count" in result:
        examples = [_plain(v) for v in (result.get("partial_unexpected_list") or [])[:5]]
        return (
            f"{result['unexpected_count']} of {result.get('element_count')} {column} values "
            f"unexpected, e.g. {examples}"
        )
    return f"failed (observed {_plain(observed)})"


def _exception_message(info: Any) -> str | None:
    """The error message if GX could not evaluate an expectation, else None."""
    if not info:
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "error") if info["raised_exception"] else None
    for item in info.values():  # {metric id: {raised_exception, ...}}
        if isinstance(item, dict) and item.get("raised_exception"):
            return item.get("exception_message") or "error"
    return None


# --- small helpers -----------------------------------------------------------------------------


def _failed_table(failed: list[ExpectationOutcome]) -> list[str]:
    if not failed:
        return []
    return [
        "",
        "### Failed expectations",
        "",
        "| severity | suite | expectation | column | unexpected | summary |",
        "|---|---|---|---|---:|---|",
    ] + [
        f"| {o.severity} | {o.suite} | `{o.expectation}` | {markdown_cell(o.column or '')} "
        f"| {o.unexpected_count} | {markdown_cell(o.summary)} |"
        for o in failed
    ]


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


def aspect_ratio(width: Any, height: Any) -> float | None:
    """Long side / short side, to two decimals; None when a side is unknown or zero."""
    if _missing(width) or _missing(height) or min(width, height) <= 0:
        return None
    return round(max(width, height) / min(width, height), 2)


def _as_bool(value: Any) -> bool:
    """True/False from a bool or its CSV spelling; unknown means not decodable."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return False if _missing(value) else bool(value)


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, list | dict | str) and bool(pd.isna(value)))


def _plain(value: Any) -> Any:
    """Numpy/pandas scalars as Python values, integral floats as int, missing as ``none``."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if _missing(value):
        return "none"
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _markup_escaped(table: pd.DataFrame) -> pd.DataFrame:
    """The table GX sees: every text cell HTML-escaped.

    GX's Data Docs write unexpected values into table cells as they are, so a file name or label
    like ``<img src=x onerror=…>`` would run as script in the published pages. Escaping is
    one-to-one, so GX counts, compares and groups exactly as on the raw values.
    """
    escaped = table.copy()
    for column in escaped.columns:
        if not pd.api.types.is_numeric_dtype(escaped[column]):
            escaped[column] = escaped[column].map(_escaped_text)
    return escaped


def _escaped_text(value: Any) -> Any:
    return html.escape(value) if isinstance(value, str) else value


def _markup_restored(value: Any) -> Any:
    """GX results with the raw text back (the inverse of :func:`_markup_escaped`)."""
    if isinstance(value, str):
        return html.unescape(value)
    if isinstance(value, dict):
        return {k: _markup_restored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_markup_restored(v) for v in value)
    return value


class _Fields(dict[str, Any]):
    """Template fields; an unknown ``{name}`` stays as written instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
