"""GX validation results turned into what a user acts on: per-row reasons and one-line outcomes.

A failed warning expectation of the image suite quarantines rows: each gets the expectation's
``meta.reason`` rendered with the row's values. Every expectation becomes an
:class:`~cxr_model.quality.reports.ExpectationOutcome` whose summary says what was observed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from cxr_model.quality.reports import ExpectationOutcome
from cxr_model.quality.settings import QualitySettings
from cxr_model.quality.values import is_missing, plain_value

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult


def row_reasons(
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
    sides = [int(v) for v in (row.get("width"), row.get("height")) if not is_missing(v)]
    fields: dict[str, Any] = {
        k: ", ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in settings.model_dump().items()
    }
    fields.update({k: plain_value(v) for k, v in row.items()})
    fields.update(
        value=plain_value(value),
        error=row.get("error") or "no error message recorded",
        shorter_side=min(sides) if sides else "unknown",
    )
    try:
        return template.format_map(_Fields(fields))
    except (ValueError, TypeError):  # a format spec that does not fit the value, e.g. {x:.2f}
        return template.replace("{", "").replace("}", "")


def outcome(
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
        summary = "passed" if observed is None else f"passed (observed {plain_value(observed)})"
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
            f"{observed} rows, expected between {plain_value(kwargs.get('min_value'))} "
            f"and {plain_value(kwargs.get('max_value'))}"
        )
    if expectation == "expect_column_distinct_values_to_contain_set":
        missing = [plain_value(v) for v in result.get("partial_missing_list") or []]
        return f"no accepted rows with {column} {', '.join(map(str, missing)) or '(unknown)'}"
    if "unexpected_count" in result:
        examples = [plain_value(v) for v in (result.get("partial_unexpected_list") or [])[:5]]
        return (
            f"{result['unexpected_count']} of {result.get('element_count')} {column} values "
            f"unexpected, e.g. {examples}"
        )
    return f"failed (observed {plain_value(observed)})"


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


class _Fields(dict[str, Any]):
    """Template fields; an unknown ``{name}`` stays as written instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
