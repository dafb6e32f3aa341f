"""Flow run names: the flow, what it works on, and when it started (UTC), so that a run is found
by its name in the Prefect UI, under ``runs/<flow>/<run name>/`` in the store, and by ``cxr get``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


def timestamped(kind: str, subject: Callable[[], str] | None = None) -> Callable[[], str]:
    """A ``flow_run_name`` for ``@flow``: ``<kind>[-<subject>]-YYYY-MM-DD-HHMMSS``, with
    ``subject()`` read when the run starts (e.g. from its parameters)."""

    def name() -> str:
        parts = [kind, subject()] if subject else [kind]
        return "-".join([*parts, f"{datetime.now(UTC):%Y-%m-%d-%H%M%S}"])

    return name
