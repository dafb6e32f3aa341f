"""The temporary Prefect API a `cxr` command starts (no PREFECT_API_URL) dies with the command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _api_servers(process: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in process.children(recursive=True):
        try:
            if "prefect.server.api.server:create_app" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_killed_command_leaves_no_prefect_server_behind(settings, real_data, tmp_path):
    folder = tmp_path / "images" / "covid"
    folder.mkdir(parents=True)
    for path in sorted((real_data / "hannover" / "covid").iterdir())[:40]:
        shutil.copyfile(path, folder / path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ingest", f"folder:{tmp_path / 'images'}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cxr = psutil.Process(command.pid)
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while not servers and command.poll() is None and time.monotonic() < deadline:
            servers = _api_servers(cxr)
            time.sleep(0.2)
        assert servers, "the command started no temporary Prefect API"
        command.kill()  # SIGKILL: no atexit, no cleanup in cxr itself
        command.wait()
        gone, alive = psutil.wait_procs(servers, timeout=20)
        assert alive == [], f"orphaned Prefect API server(s): {[p.pid for p in alive]}"
    finally:
        for server in servers:
            if server.is_running():
                server.kill()
