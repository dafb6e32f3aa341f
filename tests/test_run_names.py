"""Flow run names: the flow, what it works on, and the UTC start time."""

from __future__ import annotations

import re

from flows.run_names import timestamped

STAMP = r"\d{4}-\d{2}-\d{2}-\d{6}"


def test_a_run_name_is_the_flow_and_when_it_started() -> None:
    assert re.fullmatch(f"ingest-{STAMP}", timestamped("ingest")())
    assert re.fullmatch(f"score-inbox-{STAMP}", timestamped("score-inbox")())


def test_a_run_name_says_what_the_run_works_on_read_when_it_starts() -> None:
    folders = iter(["actualmed", "inbox"])
    name = timestamped("score", lambda: next(folders))

    assert re.fullmatch(f"score-actualmed-{STAMP}", name())
    assert re.fullmatch(f"score-inbox-{STAMP}", name())
