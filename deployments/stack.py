"""The local stack behind ``make up`` / ``make down``, all on 127.0.0.1.

``up`` starts, in this order: the embedded S3 store (unless cxr is configured for another one),
a Prefect server with its UI (SQLite under ``<state_dir>/prefect``), the ``cxr-process`` work
pool, the deployments of ``deployments/prefect.yaml``, and a process worker that runs them. It
records what it started in ``<state_dir>/stack/stack.json``; ``down`` stops exactly those
processes (by process id) and keeps every piece of data. Logs go to ``<state_dir>/logs/``.

Recovery: ``down`` stops the worker first, then marks the runs it was running Crashed (a run being
cancelled: Cancelled), which frees their deployments' concurrency slots, then stops the server.
``up`` does the same for runs a stopped worker left Running or Pending (the machine went down, the
processes were killed) before it starts a worker, and frees slots that no active run holds.

Deployments are redeployed only when their definition changed
(:mod:`deployments.prefect_server`); ``notify`` sets up the failed-nightly webhook
(:mod:`deployments.notify`).

So that a fresh stack has something to retrain on and score, ``up`` also generates the synthetic
sample (as ``make demo`` does) and copies its inbox to ``s3://<bucket>/inbox/`` once. The nightly
retraining then runs on the sample with the sample's training settings, which produce a champion
(the study's do not learn a sample this small); see :func:`nightly_training`.

    python -m deployments.stack up [--port 4200]
    python -m deployments.stack down
    python -m deployments.stack status
    python -m deployments.stack notify --webhook https://hooks.example.org/...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import typer

from cxr_model import embedded_store, report_server
from cxr_model.config import INBOX_PREFIX, Settings, get_settings
from cxr_model.processes import process_alive, recorded_process, start_time, stop_processes
from cxr_model.sample import SAMPLE_TRAINING, SampleSpec, generate_sample
from cxr_model.storage import open_store
from deployments.notify import (
    AUTOMATION_FILE,
    BLOCK_PLACEHOLDERS,
    NOTIFY_BLOCK,
    automation_definition,
    check_automation,
    notify,
    webhook_url,
)
from deployments.prefect_server import (
    NIGHTLY_TRAINING_VARIABLE,
    PREFECT_FILE,
    REPO,
    SERVICES_TIMEOUT_S,
    WORK_POOL,
    deploy,
    deployment_hashes,
    next_run,
    plan_deployments,
    prefect_cli,
    prefect_client,
    release_runs,
    run_logged,
    wait_for_automations,
    wait_healthy,
    work_pool_exists,
)

# What tests and scripts reach through this module (`from deployments import stack`).
__all__ = [
    "AUTOMATION_FILE",
    "BLOCK_PLACEHOLDERS",
    "DEPLOY_DEFAULTS",
    "NIGHTLY_TRAINING_VARIABLE",
    "NOTIFY_BLOCK",
    "PREFECT_FILE",
    "StackState",
    "automation_definition",
    "check_automation",
    "deployment_hashes",
    "down",
    "next_run",
    "nightly_training",
    "notify",
    "plan_deployments",
    "prefect_client",
    "prefect_env",
    "read_state",
    "up",
    "webhook_url",
]

DEFAULT_PORT = 4200
REPORTS_PORT = report_server.DEFAULT_PORT
REPORT_SERVER = [sys.executable, "-m", "cxr_model.report_server"]
NOTIFY_GRACE_S = 5.0  # the server's automations act on a crash in about a second
STOP_TIMEOUT_S = 20.0
# Defaults for the "{{ $NAME }}" values in prefect.yaml; the environment overrides each.
DEPLOY_DEFAULTS = {
    "CXR_NIGHTLY_CRON": "0 2 * * *",
    "CXR_NIGHTLY_TIMEZONE": "UTC",
    "CXR_INBOX_MINUTES": "10",
}
DOWN_MESSAGE = "the local stack was stopped (make down) while this run was {state}; retry it"
ORPHAN_MESSAGE = (
    "this run was left {state} by a worker that stopped without make down (killed, or the machine "
    "went down); make up marked it Crashed; retry it"
)

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@dataclass
class StackState:
    """What ``up`` started (process ids) and where the UI is."""

    api_url: str
    ui_url: str
    server_pid: int
    worker_pid: int
    started_store: bool
    started_at: str
    # process start times, so that a pid reused after the stack died is never taken for it
    server_started: float | None = None
    worker_started: float | None = None
    # what this `up` did: each deployment "kept" or "updated (why)"; runs it marked Crashed
    deployments: dict[str, str] = field(default_factory=dict)
    reconciled: list[str] = field(default_factory=list)
    reports_pid: int | None = None  # the read-only report server (cxr_model.report_server)
    reports_started: float | None = None

    def process(self, role: str):
        """The live server or worker this state recorded (a psutil.Process), else None."""
        pid, started = (
            (self.server_pid, self.server_started)
            if role == "server"
            else (self.worker_pid, self.worker_started)
        )
        found = recorded_process(pid, started, "prefect", role, "start")
        if found is not None and os.getpgid(pid) != pid:  # we stop its whole process group
            return None
        return found


def _stack_file(settings: Settings) -> Path:
    return settings.state_dir / "stack" / "stack.json"


def sample_source(settings: Settings) -> str:
    """The synthetic sample's training images, as a retraining source."""
    return f"folder:{settings.state_dir / 'sample' / 'train'}"


def prefect_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment of the server, the worker, ``prefect deploy`` and the flow runs."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(settings.state_dir / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_URL=f"http://127.0.0.1:{port}",
        CXR_STATE_DIR=str(settings.state_dir),
        CXR_REPO_DIR=str(REPO),
        CXR_NIGHTLY_SOURCE=env.get("CXR_NIGHTLY_SOURCE", sample_source(settings)),
    )
    for name, value in DEPLOY_DEFAULTS.items():
        env.setdefault(name, value)
    # INFO: the server says when its automations start (wait_for_automations), and what fired
    env.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "INFO")
    env.setdefault("CXR_REPORTS_URL", f"http://127.0.0.1:{REPORTS_PORT}")  # links open there
    env.setdefault("MALLOC_ARENA_MAX", "2")  # flatter memory in the flow runs (BENCHMARKS.md)
    minutes = env["CXR_INBOX_MINUTES"]
    if not (minutes.isdigit() and 0 < int(minutes) <= 60 and 60 % int(minutes) == 0):
        raise ValueError(
            f"CXR_INBOX_MINUTES={minutes!r}: score-inbox runs every N minutes of the hour, so N "
            "must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60)"
        )
    return env


def nightly_training(env: dict[str, str], settings: Settings) -> dict:
    """The nightly deployment's training settings, as overrides of the study's (``TrainParams``).

    ``CXR_NIGHTLY_TRAINING`` (a JSON object) when set; otherwise the sample's settings when the
    nightly source is the sample, and none (the study's settings) for any other source.
    """
    configured = env.get("CXR_NIGHTLY_TRAINING", "").strip()
    if configured:
        return _training_overrides(configured)
    if env["CXR_NIGHTLY_SOURCE"] == sample_source(settings):
        return dict(SAMPLE_TRAINING)
    return {}


def _training_overrides(text: str) -> dict:
    """``CXR_NIGHTLY_TRAINING`` checked now, so a typo stops ``up`` rather than a nightly run."""
    from pydantic import ValidationError

    from cxr_model.train import TrainParams  # imports TensorFlow: only when the variable is set

    example = '{"epochs": 20, "image_size": 224}'
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"CXR_NIGHTLY_TRAINING={text!r} is not JSON ({exc}); e.g. {example}"
        ) from None
    if not isinstance(overrides, dict):
        raise ValueError(
            f"CXR_NIGHTLY_TRAINING={text!r} must be a JSON object of training settings, "
            f"e.g. {example}"
        )
    try:
        TrainParams(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"CXR_NIGHTLY_TRAINING={text!r}: {problems}") from None
    return overrides


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a long-running process in its own session (so ``down`` can stop its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )


def seed_sample(settings: Settings) -> None:
    """The synthetic sample under the state folder, and its inbox in the store (each once)."""
    sample = generate_sample(settings.state_dir / "sample", SampleSpec())
    store = open_store(settings)
    if any(True for _ in store.list_keys(INBOX_PREFIX)):
        return
    for path in sorted(sample.inbox_dir.iterdir()):
        store.put_file(f"{INBOX_PREFIX}{path.name}", path)


def read_state(settings: Settings) -> StackState | None:
    path = _stack_file(settings)
    if not path.exists():
        return None
    return StackState(**json.loads(path.read_text()))


def up(port: int = DEFAULT_PORT, settings: Settings | None = None) -> StackState:
    """Start everything (see the module docstring); an already running stack is reused."""
    settings = settings or get_settings()
    running = read_state(settings)
    if running and running.process("server") and running.process("worker"):
        return running
    if running:  # half a stack (one of them died): stop what is left, start afresh
        for role, pid in (("worker", running.worker_pid), ("server", running.server_pid)):
            if running.process(role) is not None:
                _stop(pid)
        reports = running.reports_pid
        if reports and recorded_process(reports, running.reports_started, REPORT_SERVER[-1]):
            _stop(reports)
    logs = settings.state_dir / "logs"
    started_store = False
    if settings.embedded:
        started_store = embedded_store.status(settings.state_dir) is None
        embedded_store.ensure_running(settings.state_dir)
    env = prefect_env(settings, port)
    training = nightly_training(env, settings)
    seed_sample(settings)
    server_log = logs / "prefect-server.log"
    offset = server_log.stat().st_size if server_log.exists() else 0
    server = _start(
        prefect_cli("server", "start", "--host", "127.0.0.1", "--port", str(port)),
        logs / "prefect-server.log",
        env,
    )
    worker = None
    reports = _start(REPORT_SERVER, logs / "report-server.log", env)
    try:
        wait_healthy(env["PREFECT_API_URL"], server, logs / "prefect-server.log")
        deploy_log = logs / "prefect-deploy.log"
        if not wait_for_automations(server_log, offset):
            typer.echo(
                f"the server's automations did not start in {SERVICES_TIMEOUT_S:.0f} s (see "
                f"{server_log}); runs reconciled now may not be notified",
                err=True,
            )
        # no worker runs yet: whatever is still Running or Pending was left by a stopped one
        reconciled = release_runs(env["PREFECT_API_URL"], ORPHAN_MESSAGE)
        if not work_pool_exists(env["PREFECT_API_URL"]):  # else kept, paused or not
            run_logged(
                prefect_cli("work-pool", "create", WORK_POOL, "--type", "process"), env, deploy_log
            )
        run_logged(
            prefect_cli(
                "variable", "set", NIGHTLY_TRAINING_VARIABLE, json.dumps(training), "--overwrite"
            ),
            env,
            deploy_log,
        )
        deployments = deploy(env, settings, training, deploy_log)
        worker = _start(
            prefect_cli("worker", "start", "--pool", WORK_POOL, "--type", "process"),
            logs / "prefect-worker.log",
            env,
        )
    except BaseException:
        for process in (worker, server, reports):
            if process is not None:
                _stop(process.pid)
        raise
    state = StackState(
        api_url=env["PREFECT_API_URL"],
        ui_url=env["PREFECT_UI_URL"],
        server_pid=server.pid,
        worker_pid=worker.pid,
        started_store=started_store,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        server_started=start_time(server.pid),
        worker_started=start_time(worker.pid),
        deployments=deployments,
        reconciled=reconciled,
        reports_pid=reports.pid,
        reports_started=start_time(reports.pid),
    )
    path = _stack_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2))
    return state


def _stop(pid: int) -> None:
    """Stop the process group ``pid`` leads (SIGTERM, then SIGKILL after a grace period); then
    its descendants in sessions of their own (the flow runs a worker started)."""
    try:
        leader = psutil.Process(pid)
        descendants = leader.children(recursive=True)
    except psutil.Error:
        return
    stop_processes([leader], STOP_TIMEOUT_S, groups=True)
    stop_processes(descendants, STOP_TIMEOUT_S)


def _release_before_stopping(api_url: str) -> list[str]:
    """The worker is stopped: its runs are Crashed (their slots freed) while the server is up,
    which then has a few seconds to notify (the failed-nightly automation) before it stops."""
    try:
        released = release_runs(api_url, DOWN_MESSAGE)
        if any(line.startswith("flow run") for line in released):
            time.sleep(NOTIFY_GRACE_S)
        return released
    except Exception as exc:  # noqa: BLE001 - stopping must go on; `up` reconciles the rest
        typer.echo(
            f"could not mark the worker's runs Crashed ({type(exc).__name__}: {exc}); make up will",
            err=True,
        )
        return []


def down(settings: Settings | None = None) -> list[str]:
    """Stop what ``up`` started, worker first; data stays. Returns what was stopped."""
    settings = settings or get_settings()
    state = read_state(settings)
    stopped = []
    if state:
        for role, pid in (("worker", state.worker_pid), ("server", state.server_pid)):
            if role == "server" and state.process("server") is not None:
                stopped.extend(_release_before_stopping(state.api_url))
            if state.process(role) is not None:
                _stop(pid)
                name = "worker" if role == "worker" else "prefect server"
                stopped.append(f"stopped: {name} (pid {pid})")
            elif process_alive(pid):
                typer.echo(
                    f"{_stack_file(settings)}: stale record: pid {pid} is not the Prefect {role} "
                    "(it stopped and the id was reused); left alone",
                    err=True,
                )
        reports = state.reports_pid
        if reports and recorded_process(reports, state.reports_started, REPORT_SERVER[-1]):
            _stop(reports)
            stopped.append(f"stopped: report server (pid {reports})")
        if state.started_store and embedded_store.stop(settings.state_dir):
            stopped.append("stopped: embedded S3 store")
        _stack_file(settings).unlink()
    return stopped


@app.command("up")
def up_command(
    port: int = typer.Option(DEFAULT_PORT, envvar="CXR_PREFECT_PORT", help="Prefect API/UI port."),
) -> None:
    """Start the local stack and print where to look."""
    state = up(port)
    settings = get_settings()
    env = prefect_env(settings, port)
    when = next_run(env["CXR_NIGHTLY_CRON"], env["CXR_NIGHTLY_TIMEZONE"])
    training = json.dumps(nightly_training(env, settings))
    schedule = f"next run {when.isoformat()} ({env['CXR_NIGHTLY_TIMEZONE']})"
    if state.deployments.get("nightly-retrain") == "kept":
        schedule = "schedule and pause kept as they are on the server (the UI's)"
    typer.echo(
        f"Prefect UI:        {state.ui_url}\n"
        f"nightly-retrain:   {schedule}\n"
        f"                   on {env['CXR_NIGHTLY_SOURCE']}, training {training} "
        "(over the study's settings)\n"
        f"worker:            pool {WORK_POOL} (pid {state.worker_pid})\n"
        f"reports:           {env['CXR_REPORTS_URL']} (read-only; the runs' links open here)\n"
        + "".join(
            f"deployment:        {name}: {what}\n" for name, what in state.deployments.items()
        )
        + "".join(f"reconciled:        {line}\n" for line in state.reconciled)
        + "notify on failure: make notify WEBHOOK=<url>\n"
        f"for cxr commands:  export PREFECT_API_URL={state.api_url}\n"
        f"logs:              {get_settings().state_dir / 'logs'}\n"
        "stop with:         make down"
    )


@app.command("down")
def down_command() -> None:
    """Stop the local stack (data kept)."""
    stopped = down()
    typer.echo("\n".join(stopped) if stopped else "nothing was running")


@app.command("notify")
def notify_command(
    webhook: str = typer.Option(..., help="URL that receives a JSON POST {subject, body}."),
    api_url: str = typer.Option(
        None, envvar="PREFECT_API_URL", help="Prefect API (default: the running local stack's)."
    ),
) -> None:
    """Notify a webhook when a nightly retraining fails: the block and the automation together."""
    try:
        webhook_url(webhook)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    state = read_state(get_settings())
    api = api_url or (state.api_url if state else None)
    if api is None:
        typer.echo("no Prefect API: start the stack (make up) or set PREFECT_API_URL", err=True)
        raise typer.Exit(2)
    try:
        block_id, automation_id = notify(api, webhook)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"webhook block {NOTIFY_BLOCK} ({block_id}) -> {webhook}\n"
        f"automation nightly-retrain-failed ({automation_id}): a nightly-retrain run that ends "
        "Failed or Crashed POSTs {subject, body} to it"
    )


@app.command("status")
def status_command() -> None:
    """Say whether the stack runs, and where."""
    state = read_state(get_settings())
    if state is None:
        typer.echo("not running (make up starts it)")
        raise typer.Exit(1)
    alive = {role: state.process(role) is not None for role in ("server", "worker")}
    typer.echo(json.dumps(asdict(state) | {"alive": alive}, indent=2))


if __name__ == "__main__":
    app()
