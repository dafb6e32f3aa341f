"""Great Expectations plumbing: suites loaded from ``expectations/``, an ephemeral context, runs.

Each expectation's ``meta.batch`` names the derived table it runs on; each table is validated as
its own GX batch (suite ``<suite>.<batch>`` in Data Docs). GX is imported inside the functions
(it takes seconds, and scoring must not import it); it runs with progress bars and analytics off
and never touches the network. Suites and validation results are kept as JSON under
``<docs_dir>/.gx`` so later validations into the same folder join the same Data Docs index.
Text cells are HTML-escaped on the way in (GX's Data Docs write values into pages as they are)
and restored in the results.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.data_context import AbstractDataContext


DOCS_SITE = "cxr"


_COMPLETE = {"result_format": "COMPLETE", "unexpected_index_column_names": ["key"]}
GX_STORE = ".gx"


def default_expectations_dir() -> Path:
    """``$CXR_EXPECTATIONS_DIR`` if set, else the repo's ``expectations/`` folder."""
    configured = os.environ.get("CXR_EXPECTATIONS_DIR")
    return Path(configured) if configured else Path(__file__).parents[2] / "expectations"


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


def gx_context(docs_dir: Path) -> AbstractDataContext:
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
    store = docs_dir / GX_STORE
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


def new_run_id(name: str) -> Any:
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=name, run_time=datetime.datetime.now(datetime.UTC))


def run_suite(
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
