"""Results of lazily submitted work in order, never more than a window ahead."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cxr_model.windowed import in_order


def test_results_come_back_in_submission_order_even_when_later_ones_finish_first():
    def slow_first(n: int) -> int:
        time.sleep(0.05 if n == 0 else 0)
        return n * n

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(in_order((pool.submit(slow_first, n) for n in range(10)), window=4))
    assert results == [n * n for n in range(10)]


@pytest.mark.parametrize("window", [1, 3])
def test_submissions_run_at_most_a_window_ahead_of_the_caller(window):
    submitted: list[int] = []
    taken: list[int] = []

    def submissions():
        for n in range(8):
            submitted.append(n)
            with ThreadPoolExecutor(max_workers=1) as pool:
                yield pool.submit(lambda n=n: n)

    for result in in_order(submissions(), window):
        assert len(submitted) - len(taken) <= window
        taken.append(result)
    assert taken == list(range(8))


def test_an_error_is_raised_at_its_place_in_the_order():
    def fails_at_two(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    seen = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(ValueError, match="two"):
            for result in in_order((pool.submit(fails_at_two, n) for n in range(5)), 2):
                seen.append(result)
    assert seen == [0, 1]


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="window=0"):
        list(in_order(iter([]), 0))


def test_nothing_is_submitted_before_the_first_result_is_asked_for():
    started = threading.Event()

    def submissions():
        started.set()
        yield from ()

    results = in_order(submissions(), 2)
    assert not started.is_set()
    assert list(results) == [] and started.is_set()
