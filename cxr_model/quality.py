"""Data quality for the image manifest, with Great Expectations (GX 1.x).

Two expectation suites live as GX JSON in the repo's ``expectations/`` folder:

- ``cxr_images`` runs on every manifest row. Its expectations have severity ``warning``: a row
  that fails any of them is *quarantined* (rejected, with a human-readable reason) and the run
  goes on. Which rows fail comes from GX's own results (``COMPLETE`` result format, rows
  identified by the ``key`` column); each expectation's ``meta.reason`` is the reason text.
- ``cxr_dataset`` runs on the accepted rows only. Its expectations have severity ``critical``:
  a failure means the run must not go on (:attr:`QualityReport.passed` is False).

Configurable values (``min_side``, ``min_rows``, ...) are GX suite parameters
(``{"$PARAMETER": "min_side"}``) filled from :class:`QualitySettings` at run time. Both
validation results are rendered as a GX Data Docs site into a folder of the caller's choice.

GX is imported lazily (it takes seconds), runs in an in-memory (ephemeral) context with
progress bars and analytics off, and never touches the network. This module does not import
Prefect.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from cxr_model.manifest import FACT_COLUMNS

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.data_context import AbstractDataContext

__all__ = [
    "DATASET_SUITE",
    "IMAGE_SUITE",
    "MANIFEST_COLUMNS",
    "ExpectationOutcome",
    "QualityError",
    "QualityReport",
    "QualitySettings",
    "Rejection",
    "default_expectations_dir",
    "load_suite",
    "validate_manifest",
]

IMAGE_SUITE = "cxr_images"
DATASET_SUITE = "cxr_dataset"
DOCS_SITE = "cxr"
MANIFEST_COLUMNS = (
    "key",
    "sha256",
    "label",
    "source",
    "patient_id",
    "original_path",
    *FACT_COLUMNS,
)
_COMPLETE = {"result_format": "COMPLETE", "unexpected_index_column_names": ["key"]}


class QualitySettings(BaseModel):
    """Run-time values for the suites' ``$PARAMETER`` placeholders."""

    min_side: int = Field(default=64, ge=1, description="Shortest allowed image side (px).")
    min_rows: int = Field(default=10, ge=0, description="Fewest accepted images.")
    max_rows: int = Field(default=1_000_000, ge=0, description="Most accepted images.")
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP", "BMP", "TIFF"],
        description="Image formats (Pillow names) the pipeline reads.",
    )
    labels: list[str] = Field(
        default_factory=lambda: ["covid", "normal"], description="The classes; all must occur."
    )


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


class QualityReport(BaseModel):
    """What :func:`validate_manifest` found; ``docs_dir`` holds the Data Docs ``index.html``."""

    total: int
    accepted_keys: list[str]
    rejected: list[Rejection]
    outcomes: list[ExpectationOutcome]
    docs_dir: str

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        """Failed expectations that must stop the run."""
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed expectations whose rows were quarantined; the run goes on."""
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    @property
    def passed(self) -> bool:
        """True when no critical expectation failed."""
        return not self.critical_failures

    def summary_markdown(self, limit: int = 200) -> str:
        """Counts, failed expectations, and the rejected files (at most ``limit``) as Markdown."""
        status = "passed" if self.passed else "FAILED"
        lines = [
            f"## Data quality: {status}",
            "",
            f"- files: {self.total}, accepted: {len(self.accepted_keys)}, "
            f"rejected: {len(self.rejected)}",
            f"- critical failures: {len(self.critical_failures)}, warnings: {len(self.warnings)}",
            f"- Data Docs: `{Path(self.docs_dir) / 'index.html'}`",
        ]
        failed = self.critical_failures + self.warnings
        if failed:
            lines += [
                "",
                "### Failed expectations",
                "",
                "| severity | suite | expectation | column | unexpected | summary |",
                "|---|---|---|---|---:|---|",
            ]
            lines += [
                f"| {o.severity} | {o.suite} | `{o.expectation}` | {_cell(o.column or '')} "
                f"| {o.unexpected_count} | {_cell(o.summary)} |"
                for o in failed
            ]
        if self.rejected:
            lines += [
                "",
                "### Rejected files",
                "",
                "| key | original path | reasons |",
                "|---|---|---|",
            ]
            lines += [
                f"| {_cell(r.key)} | {_cell(r.original_path)} | {_cell('; '.join(r.reasons))} |"
                for r in self.rejected[:limit]
            ]
            if len(self.rejected) > limit:
                lines.append(f"\n... and {len(self.rejected) - limit} more rejected files")
        return "\n".join(lines) + "\n"


class QualityError(Exception):
    """Raised by callers when a report has critical failures; one line per failure."""

    def __init__(self, report: QualityReport) -> None:
        self.report = report
        failures = report.critical_failures
        lines = [f"data quality failed: {len(failures)} critical expectation(s) failed"]
        lines += [
            f"- {o.suite}: {o.expectation}{f' [{o.column}]' if o.column else ''}: {o.summary}"
            for o in failures
        ]
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
    keys. Data Docs for both validations are built into ``docs_dir``.
    """
    frame = _normalized(manifest)
    expectations_dir = expectations_dir or default_expectations_dir()
    docs_dir = Path(docs_dir).resolve()
    image_suite = load_suite(expectations_dir / f"{IMAGE_SUITE}.json")
    dataset_suite = load_suite(expectations_dir / f"{DATASET_SUITE}.json")

    context = _context(docs_dir)
    parameters = settings.model_dump()
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name="cxr-quality", run_time=datetime.datetime.now(datetime.UTC))

    image_results = _run(context, image_suite, "manifest", frame, parameters, run_id)
    reasons = _rejection_reasons(image_results, frame, settings)
    accepted = frame[~frame["key"].isin(reasons.keys())].reset_index(drop=True)
    dataset_results = _run(context, dataset_suite, "accepted", accepted, parameters, run_id)
    context.build_data_docs(site_names=[DOCS_SITE])

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
    outcomes = [_outcome(image_suite.name, r, frame, settings) for r in image_results] + [
        _outcome(dataset_suite.name, r, accepted, settings) for r in dataset_results
    ]
    return QualityReport(
        total=len(frame),
        accepted_keys=list(accepted["key"]),
        rejected=rejected,
        outcomes=outcomes,
        docs_dir=str(docs_dir),
    )


# --- GX plumbing -------------------------------------------------------------------------------


def _context(docs_dir: Path) -> AbstractDataContext:
    """An in-memory GX context whose only Data Docs site is written to ``docs_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
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


def _run(
    context: AbstractDataContext,
    suite: ExpectationSuite,
    asset_name: str,
    frame: pd.DataFrame,
    parameters: dict[str, Any],
    run_id: Any,
) -> list[ExpectationValidationResult]:
    """Validate ``frame`` against ``suite`` (stored, so Data Docs can render it)."""
    import great_expectations as gx

    asset = context.data_sources.get("cxr").add_dataframe_asset(asset_name)
    batch = asset.add_batch_definition_whole_dataframe(asset_name)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}:{asset_name}", data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        result_format=_COMPLETE,
        run_id=run_id,
    )
    order = {expectation.id: index for index, expectation in enumerate(suite.expectations)}
    return sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))


# --- turning GX results into reasons and outcomes ----------------------------------------------


def _rejection_reasons(
    results: list[ExpectationValidationResult], frame: pd.DataFrame, settings: QualitySettings
) -> dict[str, list[str]]:
    """Reasons per rejected key, from each failed expectation's ``unexpected_index_list``."""
    reasons: dict[str, list[str]] = {}
    flagged = {
        entry["key"]
        for r in results
        for entry in (r.result or {}).get("unexpected_index_list") or []
    }
    rows = frame[frame["key"].isin(flagged)].set_index("key", drop=False).to_dict("index")
    for r in results:
        config = r.expectation_config
        for entry in (r.result or {}).get("unexpected_index_list") or []:
            key = entry["key"]
            value = entry.get(config.kwargs.get("column"))
            reason = _reason(config.type, config.kwargs, config.meta, rows[key], value, settings)
            if reason not in reasons.setdefault(key, []):
                reasons[key].append(reason)
    return reasons


def _reason(
    expectation: str,
    kwargs: dict[str, Any],
    meta: dict[str, Any] | None,
    row: dict[str, Any],
    value: Any,
    settings: QualitySettings,
) -> str:
    """Render ``meta.reason`` for one row (fields: manifest columns, value, parameters)."""
    column = kwargs.get("column")
    template = (meta or {}).get("reason") or f"{expectation} failed on {column}={{value}}"
    sides = [int(v) for v in (row.get("width"), row.get("height")) if not _missing(v)]
    fields: dict[str, Any] = {k: _plain(v) for k, v in row.items()}
    fields.update(
        value=_plain(value),
        error=row.get("error") or "no error message recorded",
        shorter_side=min(sides) if sides else "unknown",
        min_side=settings.min_side,
        min_rows=settings.min_rows,
        max_rows=settings.max_rows,
        allowed_formats=", ".join(settings.allowed_formats),
        labels=", ".join(settings.labels),
    )
    return template.format_map(_Fields(fields))


def _outcome(
    suite: str, r: ExpectationValidationResult, frame: pd.DataFrame, settings: QualitySettings
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
        first = result["unexpected_index_list"][0]
        row = frame[frame["key"] == first["key"]].iloc[0].to_dict()
        reason = _reason(config.type, kwargs, config.meta, row, first.get(column), settings)
        summary = (
            f"{unexpected} of {result.get('element_count', len(frame))} rows quarantined, "
            f"e.g. {first['key']}: {reason}"
        )
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


def _normalized(manifest: pd.DataFrame) -> pd.DataFrame:
    """A copy with numeric and boolean columns typed (manifests read from CSV are all str)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns: {', '.join(missing)}")
    if not manifest["key"].is_unique:
        repeated = sorted(set(manifest["key"][manifest["key"].duplicated()]))[:5]
        raise ValueError(f"manifest keys must be unique; repeated: {repeated}")
    frame = manifest.reset_index(drop=True).copy()
    for column in ("width", "height", "bytes"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    frame["decodable"] = [_as_bool(v) for v in frame["decodable"]]
    return frame


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


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


class _Fields(dict[str, Any]):
    """Template fields; an unknown ``{name}`` stays as written instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
