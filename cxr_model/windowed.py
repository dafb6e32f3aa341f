"""Results of lazily submitted work, in submission order, with a bounded window in flight.

Ingest's reads, scoring's chunks and a chunk's decodes all stream a long input through a pool:
submitting everything at once would hold every result (or every pending task) in memory, and
``Executor.map`` submits everything at once. :func:`in_order` pulls the next submission only
when a result is taken, so at most ``window`` are unfinished or waiting for the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

R = TypeVar("R", covariant=True)


class Result(Protocol[R]):
    """Anything with a blocking ``result()``: a ``concurrent.futures.Future``, a Prefect future."""

    def result(self) -> R: ...


def in_order(futures: Iterable[Result[R]], window: int) -> Iterator[R]:
    """The results of ``futures`` in order; ``futures`` is consumed (and so submitted, when it
    submits as it is iterated) at most ``window`` ahead of the result being waited for."""
    if window < 1:
        raise ValueError(f"window={window}: at least one result must be in flight")
    pending: deque[Result[R]] = deque()
    for future in futures:
        pending.append(future)
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
