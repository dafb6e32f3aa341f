"""Byte budgets: how many bytes of file contents or decoded pixels a process holds at once.

Scoring and ingest work on many files in threads; a count of files in flight does not bound
memory when one file can be 64 MB on disk or a 95 KB PNG can decode to 100 MB of pixels. A
:class:`ByteBudget` is shared by every thread of a process and bounds the bytes instead.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MMAP_THRESHOLD_BYTES = 4 * 1024**2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_blocks() -> None:
    """Make glibc give every allocation of :data:`MMAP_THRESHOLD_BYTES` or more its own mapping,
    unmapped when freed; a no-op where the C library has no ``mallopt``.

    By default glibc raises that threshold to the size of the last large block freed (up to
    32 MB) and serves later blocks below it from per-thread arenas, which keep them after they
    are freed: eight threads that had each decoded one 7000 × 7000 16-bit PNG (one at a time)
    kept ~30 MB of image blocks and temporaries each, 2.5 times the memory of one decode.
    Setting the threshold turns that adjustment off (``MALLOC_MMAP_THRESHOLD_`` does the same).
    """
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


class ByteBudget:
    """At most ``limit`` bytes held at once, over every thread of the process.

    :meth:`take` waits for room; one request larger than the whole budget is let through when
    nothing else is held, so it waits but never forever. :meth:`try_take` never waits.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._room = threading.Condition()

    def try_take(self, size: int) -> bool:
        """Hold ``size`` bytes if they fit now; False (holding nothing) when they do not."""
        with self._room:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def take(self, size: int) -> None:
        """Hold ``size`` bytes, waiting until they fit (or until nothing else is held)."""
        with self._room:
            self._room.wait_for(lambda: self.held == 0 or self.held + size <= self.limit)
            self.held += size

    def give(self, size: int) -> None:
        """Let go of ``size`` bytes taken earlier."""
        with self._room:
            self.held -= size
            self._room.notify_all()

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """:meth:`take` ``size`` bytes for the duration of a ``with`` block."""
        self.take(size)
        try:
            yield
        finally:
            self.give(size)
