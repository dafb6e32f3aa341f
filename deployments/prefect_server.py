"""Talking to the local stack's Prefect server: wait until it answers and its automations
listen, deploy what changed, and release the runs no worker runs any more.

A hash of each deployment's definition (its ``prefect.yaml`` entry, the environment values and
the training variable it uses) is recorded in ``<state_dir>/stack/deployed.json``; only the
deployments whose definition changed (or that the server lacks) are redeployed, so a schedule
paused or edited in the UI stays as it is otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import yaml

from cxr_model.config import Settings

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
WORK_POOL = "cxr-process"
HEALTH_TIMEOUT_S = 240.0  # a Prefect server on 2 busy cores can take a minute or more
SERVICES_TIMEOUT_S = 60.0
# What the server logs (INFO) as its automations start listening for events.
SERVICES_READY_LINE = b"Starting automation change listener"
# The Prefect variable that prefect.yaml reads the nightly training settings from.
NIGHTLY_TRAINING_VARIABLE = "cxr_nightly_training"
ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
VARIABLE_PLACEHOLDER = re.compile(r"\{\{\s*prefect\.variables\.(\w+)\s*\}\}")
ACTIVE_STATES = ("RUNNING", "PENDING", "CANCELLING")


def prefect_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def wait_healthy(api_url: str, process: subprocess.Popen, log: Path) -> None:
    """Block until the Prefect API answers, or fail naming the log to read."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited ({process.returncode}); see {log}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the Prefect server did not answer in {HEALTH_TIMEOUT_S:.0f} s; see {log}")


def wait_for_automations(log: Path, offset: int, timeout: float = SERVICES_TIMEOUT_S) -> bool:
    """Block until the server started at ``offset`` of ``log`` evaluates automations (its log
    says so), so that the events of runs reconciled next reach them. False when it did not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as text:
            text.seek(offset)
            if SERVICES_READY_LINE in text.read():
                time.sleep(2)  # it loads the automations right after saying so
                return True
        time.sleep(0.5)
    return False


def run_logged(command: list[str], env: dict[str, str], log: Path) -> None:
    """Run a short command, appending its output to ``log``; fail naming the log."""
    with log.open("ab") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({done.returncode}); see {log}")


def next_run(cron: str, timezone: str) -> datetime:
    """When a cron schedule fires next, as Prefect's scheduler computes it."""
    from prefect.server.schemas.schedules import CronSchedule

    dates = asyncio.run(CronSchedule(cron=cron, timezone=timezone).get_dates(n=1))
    return dates[0]


def _deployed_file(settings: Settings) -> Path:
    return settings.state_dir / "stack" / "deployed.json"


def deployment_hashes(env: dict[str, str], variables: dict[str, object]) -> dict[str, str]:
    """Each deployment's definition, hashed: its ``prefect.yaml`` entry and the file's shared
    sections, with the values of the ``{{ $NAME }}`` and ``{{ prefect.variables.x }}`` it uses."""
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    shared = {key: value for key, value in spec.items() if key != "deployments"}
    hashes = {}
    for deployment in spec["deployments"]:
        definition = json.dumps({"shared": shared, "deployment": deployment}, sort_keys=True)
        values = {
            "env": {name: env.get(name) for name in sorted(ENV_PLACEHOLDER.findall(definition))},
            "variables": {
                name: variables.get(name)
                for name in sorted(VARIABLE_PLACEHOLDER.findall(definition))
            },
        }
        text = definition + json.dumps(values, sort_keys=True)
        hashes[deployment["name"]] = hashlib.sha256(text.encode()).hexdigest()
    return hashes


def plan_deployments(
    hashes: dict[str, str], recorded: dict[str, str], on_server: set[str]
) -> dict[str, str]:
    """For each deployment: "kept", or "updated (why)" when it has to be (re)deployed."""
    plan = {}
    for name, digest in hashes.items():
        if name not in on_server:
            plan[name] = "updated (not on the server)"
        elif name not in recorded:
            plan[name] = "updated (no record of what was deployed)"
        elif recorded[name] != digest:
            plan[name] = "updated (its definition in prefect.yaml or its settings changed)"
        else:
            plan[name] = "kept"
    return plan


@contextmanager
def prefect_client(api_url: str) -> Iterator:
    """A synchronous Prefect client talking to ``api_url``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def release_runs(api_url: str, message: str) -> list[str]:
    """Mark the work pool's Running/Pending runs Crashed (Cancelling ones Cancelled), forced, with
    ``message``; then free deployment concurrency slots that no active run holds. For when no
    worker runs them any more. Returns one line per run or deployment changed."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed

    active = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType[name] for name in ACTIVE_STATES])
    )
    pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[WORK_POOL]))
    done = []
    with prefect_client(api_url) as client:
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=active), work_pool_filter=pool
        ):
            was = run.state.name if run.state else "active"
            if run.state and run.state.type == StateType.CANCELLING:
                state = Cancelled(message=f"cancelled; {message.format(state=was)}")
            else:
                state = Crashed(message=message.format(state=was))
            client.set_flow_run_state(run.id, state, force=True)
            done.append(f"flow run {run.name} ({run.id}): {was} -> {state.name}")
        for deployment in client.read_deployments(work_pool_filter=pool):
            limit = deployment.global_concurrency_limit
            if limit is None or not limit.active_slots:
                continue
            holding = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=active, deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
                )
            )
            if limit.active_slots > len(holding):
                client.update_global_concurrency_limit(
                    limit.name, GlobalConcurrencyLimitUpdate(active_slots=len(holding))
                )
                done.append(
                    f"deployment {deployment.name}: freed {limit.active_slots - len(holding)} "
                    "concurrency slot(s) held by no active run"
                )
    return done


def work_pool_exists(api_url: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    with prefect_client(api_url) as client:
        try:
            client.read_work_pool(WORK_POOL)
        except ObjectNotFound:
            return False
    return True


def deploy(env: dict[str, str], settings: Settings, training: dict, log: Path) -> dict[str, str]:
    """(Re)deploy the deployments whose definition changed; keep the others as they are on the
    server (with their schedules and pauses from the UI). Returns :func:`plan_deployments`."""
    hashes = deployment_hashes(env, {NIGHTLY_TRAINING_VARIABLE: training})
    path = _deployed_file(settings)
    recorded = json.loads(path.read_text()) if path.exists() else {}
    with prefect_client(env["PREFECT_API_URL"]) as client:
        on_server = {d.name for d in client.read_deployments()}
    plan = plan_deployments(hashes, recorded, on_server)
    updated = [name for name, what in plan.items() if what != "kept"]
    if updated:
        names = [arg for name in updated for arg in ("--name", name)]
        run_logged(
            prefect_cli("--no-prompt", "deploy", *names, "--prefect-file", str(PREFECT_FILE)),
            env,
            log,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded | {name: hashes[name] for name in updated}, indent=2))
    return plan
