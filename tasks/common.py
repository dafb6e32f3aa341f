"""What every task needs: the object store, the registry, retries, reports, and a way to tell
people how the run is going.

Scoring imports this module, so it imports nothing of the training stack (TensorFlow, Keras,
scikit-learn, Great Expectations); what the training tasks share lives in :mod:`tasks.shared`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger
from prefect.runtime import flow_run

from cxr_model.config import Settings, get_settings
from cxr_model.configured import open_registry
from cxr_model.html_report import markdown_to_html
from cxr_model.links import object_link
from cxr_model.registry import Registry
from cxr_model.safe_text import console_text
from cxr_model.storage import ObjectStore, open_store

# The CLI prints this logger's records as progress lines; Prefect's own logger feeds the UI.
progress_logger = logging.getLogger("cxr.progress")


@lru_cache(maxsize=4)
def _store_for(settings_json: str) -> ObjectStore:
    return open_store(Settings.model_validate_json(settings_json))


def store() -> ObjectStore:
    """The configured object store, opened once per process."""
    return _store_for(get_settings().model_dump_json())


def transient_failure(task, task_run, state) -> bool:
    """Retry only what may succeed next time: storage or network trouble, not bad input."""
    error = state.data if isinstance(state.data, BaseException) else None
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error.response.get("Error", {}).get("Code") in THROTTLED
    return isinstance(error, BotoCoreError | ConnectionError | TimeoutError)


THROTTLED = {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable"}
TRANSIENT_RETRIES = dict(
    retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_failure
)


def say(message: str) -> None:
    """Log ``message`` to the flow run (Prefect UI) and to the console progress stream, as one
    line however the file names it mentions are spelled."""
    line = console_text(message)
    get_run_logger().info(line)
    progress_logger.info(line)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text."""
    text = "-".join(parts).lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in text)
    return "-".join(filter(None, cleaned.split("-")))[:100]


def run_prefix(kind: str) -> str:
    """Where this flow run keeps what it produces: ``runs/<flow name>/<run name>``."""
    return f"runs/{kind}/{flow_run.get_name() or flow_run.get_id() or 'local'}"


def link(key: str) -> str:
    """An address a browser opens for ``key``: on the report server of the local stack, else
    presigned (:func:`cxr_model.links.object_link`)."""
    return object_link(store(), key)


def put_report(md_key: str, markdown: str, title: str, shown: str | None = None) -> str:
    """Store a report as Markdown at ``md_key`` and as a standalone HTML page beside it (from
    ``shown``, the Markdown with its images inline, when the stored one links files beside it);
    return the HTML page's key."""
    objects = store()
    html_key = md_key.removesuffix(".md") + ".html"
    objects.put_bytes(md_key, markdown.encode(), content_type="text/markdown; charset=utf-8")
    page = markdown_to_html(shown or markdown, title)
    objects.put_bytes(html_key, page.encode(), content_type="text/html; charset=utf-8")
    return html_key


def registry() -> Registry:
    """The model registry of the configured store and model name."""
    return open_registry(get_settings(), store())


def local_docs_dir(report_prefix: str) -> Path:
    """Where a run's Data Docs are built; a copy is uploaded next to the report in the store."""
    return get_settings().state_dir / "reports" / report_prefix / "data_docs"
