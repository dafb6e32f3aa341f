"""The temporary Prefect API of a `cxr` command dies with the command.

With no ``PREFECT_API_URL``, Prefect starts a temporary API server (a ``uvicorn`` child process)
and stops it at interpreter exit. A command killed with SIGKILL never gets there, and the server
(~230 MB) lives on. So before it runs a flow, the CLI starts a small watchdog
(``python -m flows.temporary_api <pid>``) that the kernel signals when the command dies
(``PR_SET_PDEATHSIG``). The watchdog keeps track of the command's API server children and stops
them when that signal comes; psutil checks each is still the same process (pid and start time),
so a pid taken by another process since is never signalled.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

_PR_SET_PDEATHSIG = 1
_SERVER_MARK = "prefect.server.api.server:create_app"
POLL_S = 0.2
STOP_WAIT_S = 10


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def tie_temporary_api() -> bool:
    """Start the watchdog if this command would run Prefect's temporary API (no server
    configured) on Linux. Returns whether it started one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    if not sys.platform.startswith("linux"):
        return False
    subprocess.Popen(
        [sys.executable, "-m", "flows.temporary_api", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    return True


def _api_servers(command: psutil.Process) -> list[psutil.Process]:
    servers = []
    for child in command.children():
        try:
            if _SERVER_MARK in " ".join(child.cmdline()):
                servers.append(child)
        except psutil.Error:
            continue
    return servers


def watch(command_pid: int) -> None:
    """Note the API servers ``command_pid`` starts; stop them once it is gone."""
    seen: dict[int, psutil.Process] = {}

    def stop(*_: object) -> None:
        alive = [p for p in seen.values() if p.is_running()]
        for server in alive:
            server.terminate()
        for server in psutil.wait_procs(alive, timeout=STOP_WAIT_S)[1]:
            server.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        command = psutil.Process(command_pid)
        while os.getppid() == command_pid:
            seen.update((p.pid, p) for p in _api_servers(command))
            time.sleep(POLL_S)
    except psutil.NoSuchProcess:
        pass
    stop()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
