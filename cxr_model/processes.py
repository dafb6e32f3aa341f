"""Processes that cxr starts and stops by id (the embedded store, the local stack's servers):
finding the one it recorded, never a process that took a reused id, and stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence

import psutil


def process_alive(pid: int) -> bool:
    """True while a process with this id exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> float | None:
    """When the process with this id started (seconds since the epoch), or None if none runs."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def recorded_process(pid: int, started_at: float | None, *markers: str) -> psutil.Process | None:
    """The live process with this id if it is the one recorded, else None.

    It must have started when recorded (when a start time was recorded) and its command line
    must contain every marker: a pid reused by an unrelated process is never taken for ours.
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if started_at is not None and abs(process.create_time() - started_at) > 1.0:
            return None
        command = process.cmdline()
    except psutil.Error:
        return None
    if all(any(marker in part for part in command) for marker in markers):
        return process
    return None


def stop_processes(
    processes: Sequence[psutil.Process], timeout_s: float, *, groups: bool = False
) -> None:
    """SIGTERM each process, wait up to ``timeout_s`` for them all to exit, then SIGKILL those
    left. With ``groups``, each signal goes to the process group the process leads (one started
    with ``start_new_session=True``), so its children in the group get it too. A process that
    has exited, or whose id now names another process, is left alone (psutil checks the start
    time); our own children are reaped while waiting."""

    def send(process: psutil.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if not groups:
                process.send_signal(sig)
            elif process.is_running():
                os.killpg(process.pid, sig)

    for process in processes:
        send(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        send(process, signal.SIGKILL)
