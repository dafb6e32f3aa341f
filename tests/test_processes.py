"""Stopping processes by id: SIGTERM, SIGKILL after the grace period, the whole group when asked,
and nothing done to a process that has already gone."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from cxr_model.processes import recorded_process, stop_processes

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
)


def _started(*command: str, **options) -> subprocess.Popen:
    process = subprocess.Popen(command, **options)
    time.sleep(0.5)  # its signal handler is set
    return process


def test_a_process_that_stops_on_sigterm_is_stopped() -> None:
    process = psutil.Process(_started(sys.executable, "-c", "import time; time.sleep(60)").pid)

    started = time.monotonic()
    stop_processes([process], timeout_s=10)

    assert not process.is_running()
    assert time.monotonic() - started < 5  # it did not wait out the grace period


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    process = psutil.Process(_started(sys.executable, "-c", IGNORES_SIGTERM).pid)

    started = time.monotonic()
    stop_processes([process], timeout_s=1)

    assert time.monotonic() - started >= 1
    assert psutil.wait_procs([process], timeout=5)[1] == []


def test_groups_stop_the_children_in_the_leaders_group_too() -> None:
    leader = _started(
        "sh",
        "-c",
        f'{sys.executable} -c "import time; time.sleep(60)" & wait',
        start_new_session=True,
    )
    group_leader = psutil.Process(leader.pid)
    (child,) = group_leader.children(recursive=True)

    stop_processes([group_leader], timeout_s=10, groups=True)

    assert psutil.wait_procs([group_leader, child], timeout=5)[1] == []


def test_a_process_that_has_gone_is_left_alone() -> None:
    process = _started(sys.executable, "-c", "pass")
    gone = psutil.Process(process.pid)
    process.wait(timeout=5)

    stop_processes([gone], timeout_s=1)  # no error, nothing signalled
    stop_processes([gone], timeout_s=1, groups=True)

    assert recorded_process(process.pid, None) is None
