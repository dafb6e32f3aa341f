"""Deployments: the project's own definitions, checked as far as this machine can.

- ``deployments/prefect.yaml``: every entrypoint loads a flow, the schedules and concurrency
  limits are what the README promises, and every ``{{ $NAME }}`` has a default in the stack.
- The Docker and Kubernetes GPU job templates: every placeholder is a declared variable, the
  defaults satisfy the variables' JSON schema, and rendered with them the job asks for GPUs.
  (Docker and Kubernetes are not available here, so the templates are never run.)
- The Dockerfile copies only paths that exist.
- The local stack end to end: a real Prefect server on a free port, the deployments registered
  from prefect.yaml, a process worker; a score-folder run triggered through the API with
  parameters (as the UI's form does) completes with its artifacts, and a bad form value is refused.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from PIL import Image

from deployments import stack

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "deployments" / "job-templates"
ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
RUN_TIMEOUT_S = 600


def prefect_yaml() -> dict:
    return yaml.safe_load(stack.PREFECT_FILE.read_text())


def deployment(name: str) -> dict:
    return next(d for d in prefect_yaml()["deployments"] if d["name"] == name)


def test_every_entrypoint_loads_a_flow():
    from prefect.flows import load_flow_from_entrypoint

    names = {}
    for spec in prefect_yaml()["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / spec["entrypoint"]))
        names[spec["name"]] = flow.name
    assert names == {
        "nightly-retrain": "retrain",
        "score-folder": "score-folder",
        "score-inbox": "score-inbox",
    }


def test_schedules_and_concurrency_limits():
    nightly = deployment("nightly-retrain")
    assert nightly["schedules"][0]["cron"] == "{{ $CXR_NIGHTLY_CRON }}"
    assert stack.DEPLOY_DEFAULTS["CXR_NIGHTLY_CRON"] == "0 2 * * *"
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert "schedules" not in deployment("score-folder")
    inbox = deployment("score-inbox")
    assert inbox["concurrency_limit"]["limit"] == 1
    assert inbox["schedules"][0]["cron"] == "*/{{ $CXR_INBOX_MINUTES }} * * * *"
    assert stack.DEPLOY_DEFAULTS["CXR_INBOX_MINUTES"] == "10"


@pytest.mark.parametrize("minutes", ["7", "0", "90", "ten", ""])
def test_an_inbox_interval_that_does_not_divide_an_hour_is_refused(settings, monkeypatch, minutes):
    monkeypatch.setenv("CXR_INBOX_MINUTES", minutes)
    with pytest.raises(ValueError, match="CXR_INBOX_MINUTES.*must divide 60"):
        stack.prefect_env(settings, 4200)


def test_every_environment_value_in_prefect_yaml_has_a_default(settings):
    used = set(ENV_PLACEHOLDER.findall(json.dumps(prefect_yaml())))
    env = stack.prefect_env(settings, 4200)
    assert used and used <= set(env), f"no default for {sorted(used - set(env))}"


def test_flow_runs_get_two_malloc_arenas_unless_told_otherwise(settings, monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert stack.prefect_env(settings, 4200)["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert stack.prefect_env(settings, 4200)["MALLOC_ARENA_MAX"] == "8"


def test_next_nightly_run_honours_the_timezone():
    utc = stack.next_run("0 2 * * *", "UTC")
    berlin = stack.next_run("0 2 * * *", "Europe/Berlin")
    assert (utc.hour, utc.minute) == (2, 0)
    assert berlin.astimezone(utc.tzinfo).hour in (0, 1)  # 02:00 in Berlin is 00:00/01:00 UTC


@pytest.mark.parametrize("name", ["kubernetes-gpu.json", "docker-gpu.json"])
def test_gpu_job_templates_are_consistent(name):
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads((TEMPLATES / name).read_text())
    variables = template["variables"]
    declared = set(variables["properties"])
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)
    rendered = apply_values(template["job_configuration"], defaults)
    if name.startswith("kubernetes"):
        container = rendered["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"] == "cxr:gpu"
    else:
        request = rendered["container_create_kwargs"]["device_requests"][0]
        assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]


def test_dockerfile_copies_only_what_exists():
    dockerfile = (REPO / "deployments" / "docker" / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY")]
    paths = {path for group in sources for path in group}
    assert {"uv.lock", "cxr_model", "flows", "tasks", "expectations"} <= paths
    assert all((REPO / path).exists() for path in paths), paths
    assert {"AS cpu", "AS gpu"} <= {m for m in ("AS cpu", "AS gpu") if m in dockerfile}


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tiny_champion(settings, tmp_path):
    """A small registered model as champion, so score-folder has something to run."""
    from cxr_model.model import build_model
    from cxr_model.registry import CHAMPION, Registry
    from cxr_model.storage import open_store

    path = tmp_path / "tiny.keras"
    build_model("seed_cnn", 32).save(path)
    models = Registry(open_store(settings), settings.model_name, settings.cache_dir)
    card = models.register(
        path,
        threshold=0.5,
        metrics={},
        training={},
        parameters={"training": {"image_size": 32}},
        dataset_id="test",
    )
    models.set_alias(CHAMPION, card.version, reason="test")
    return card.version


@pytest.mark.integration
def test_score_folder_through_the_local_stack(settings, tiny_champion, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cxr_model.embedded_store import free_ports
    from cxr_model.sample import SAMPLE_TRAINING

    folder = tmp_path / "to-score"
    folder.mkdir()
    for n in range(5):
        (folder / f"x{n}.png").write_bytes(png_bytes(n))
    (folder / "notes.txt").write_text("not an x-ray")

    port = free_ports(1)[0]
    state = stack.up(port, settings)
    try:
        assert stack.read_state(settings) == state
        with (
            temporary_settings({PREFECT_API_URL: state.api_url}),
            get_client(sync_client=True) as client,
        ):
            names = {d.name for d in client.read_deployments()}
            assert names == {"nightly-retrain", "score-folder", "score-inbox"}
            nightly = client.read_deployment_by_name("retrain/nightly-retrain")
            assert nightly.schedules[0].schedule.cron == "0 2 * * *"
            # a fresh stack retrains the sample with settings that learn it
            assert nightly.parameters["params"]["training"] == dict(SAMPLE_TRAINING)
            inbox = client.read_deployment_by_name("score-inbox/score-inbox")
            assert inbox.schedules[0].schedule.cron == "*/10 * * * *"
            score = client.read_deployment_by_name("score-folder/score-folder")

            # the UI's form posts a parameters document; the server checks it against the schema
            with pytest.raises(Exception, match="threshold|1.5|validation"):
                client.create_flow_run_from_deployment(
                    score.id, parameters={"params": {"input": str(folder), "threshold": 1.5}}
                )

            run = client.create_flow_run_from_deployment(
                score.id, parameters={"params": {"input": str(folder), "chunk_size": 4}}
            )
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (run := client.read_flow_run(run.id)).state.is_final():
                assert time.monotonic() < deadline, f"still {run.state.name}"
                time.sleep(2)
            assert run.state.is_completed(), run.state.message
            assert run.name.startswith("score-to-score-")
            assert "1 error" in (run.state.message or "")
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            by_key = {a.key: a for a in artifacts}
            assert by_key["scoring-summary"].type == "markdown"
            assert by_key["predictions-preview"].type == "table"
            # Prefect stores a link artifact as markdown "[text](link)"
            assert "predictions.csv" in by_key["predictions"].data
    finally:
        stopped = stack.down(settings)
    assert any("worker" in s for s in stopped) and any("prefect server" in s for s in stopped)
    assert stack.read_state(settings) is None


def wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return found


def flow_run_processes(run_id) -> list:
    """Processes running the flow run ``run_id`` (Prefect passes its id in the environment)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.integration
def test_the_local_stack_recovers(settings, tmp_path, monkeypatch, webhook):
    """Issue 13, item 6: `make down` during a run left it Running forever after `make up`,
    holding the deployment's concurrency slot; `make up` reverted schedules paused in the UI;
    the failed-nightly notification is set up by one command and reaches a webhook."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Pending, Running, Scheduled

    from cxr_model.embedded_store import free_ports

    monkeypatch.delenv("CXR_INBOX_MINUTES", raising=False)
    port = free_ports(1)[0]
    state = stack.up(port, settings)
    try:
        assert set(state.deployments.values()) == {"updated (not on the server)"}
        block_id, _ = stack.notify(state.api_url, webhook.url)
        with stack.prefect_client(state.api_url) as client:
            nightly = client.read_deployment_by_name("retrain/nightly-retrain")
            assert nightly.global_concurrency_limit.limit == 1
            # the operator pauses the nightly schedule in the UI
            (schedule,) = client.read_deployment_schedules(nightly.id)
            client.update_deployment_schedule(nightly.id, schedule.id, active=False)
            # a real nightly run, picked up by the worker
            interrupted = client.create_flow_run_from_deployment(nightly.id)
            wait_for(
                lambda: client.read_flow_run(interrupted.id).state.is_running(),
                "the nightly run to be Running",
                timeout=300,
            )
            slots = client.read_deployment(nightly.id).global_concurrency_limit.active_slots
            assert slots == 1
        wait_for(lambda: flow_run_processes(interrupted.id), "the flow run's process")

        stopped = stack.down(settings)
        assert not flow_run_processes(interrupted.id), "a flow run outlived make down"
        assert any(str(interrupted.id) in line and "Crashed" in line for line in stopped), stopped

        monkeypatch.setenv("CXR_INBOX_MINUTES", "5")  # prefect.yaml's inbox schedule changes
        state = stack.up(port, settings)
        assert state.deployments["nightly-retrain"] == "kept"
        assert state.deployments["score-folder"] == "kept"
        assert state.deployments["score-inbox"].startswith("updated")
        with stack.prefect_client(state.api_url) as client:
            run = client.read_flow_run(interrupted.id)
            assert run.state.type == StateType.CRASHED
            assert "make down" in run.state.message
            # the failed-nightly automation POSTed the crash to the webhook before the server stopped
            posted = [m for m in webhook.received if run.name in m["subject"]]
            assert posted and "Crashed" in posted[0]["subject"], webhook.received
            assert "make down" in posted[0]["body"]
            nightly = client.read_deployment_by_name("retrain/nightly-retrain")
            assert nightly.global_concurrency_limit.active_slots == 0
            (schedule,) = client.read_deployment_schedules(nightly.id)
            assert schedule.active is False  # still paused, as the operator left it
            inbox = client.read_deployment_by_name("score-inbox/score-inbox")
            assert inbox.schedules[0].schedule.cron == "*/5 * * * *"

            # the slot is free: a new nightly run takes it (no AwaitingConcurrencySlot)
            later = Scheduled(scheduled_time=in_days(1))
            orphan = client.create_flow_run_from_deployment(nightly.id, state=later)
            assert client.set_flow_run_state(orphan.id, Pending()).state.type == StateType.PENDING
            assert client.read_deployment(nightly.id).global_concurrency_limit.active_slots == 1
            # Running (forced: it is scheduled for tomorrow so that the worker leaves it alone)
            client.set_flow_run_state(orphan.id, Running(), force=True)
            assert client.read_flow_run(orphan.id).state.is_running()

        # the machine goes down: worker and server killed, no make down
        for pid in (state.worker_pid, state.server_pid):
            stack._stop(pid)
        state = stack.up(port, settings)
        assert set(state.deployments.values()) == {"kept"}
        assert any(str(orphan.id) in line for line in state.reconciled), state.reconciled
        with stack.prefect_client(state.api_url) as client:
            run = client.read_flow_run(orphan.id)
            assert run.state.type == StateType.CRASHED and "without make down" in run.state.message
            nightly = client.read_deployment_by_name("retrain/nightly-retrain")
            assert nightly.global_concurrency_limit.active_slots == 0
            assert str(client.read_block_document(block_id).id) == block_id  # survived restarts
        # (no POST is awaited for this crash: its Running state is a minute old and came from the
        # server before the restart, so Prefect's event ordering holds the Crashed event up to
        # 15 minutes for a predecessor this server never saw; a run left overnight has none)
    finally:
        stack.down(settings)
    assert stack.read_state(settings) is None


def in_days(days: int):
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=days)


def test_failed_nightly_automation_is_a_valid_prefect_automation():
    from uuid import uuid4

    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    automation = AutomationCore.model_validate(stack.automation_definition(str(uuid4())))
    assert isinstance(automation.trigger, EventTrigger)
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    related = automation.trigger.match_related
    related = related[0] if isinstance(related, list) else related
    assert related["prefect.resource.name"] in ("nightly-retrain", ["nightly-retrain"])
    (action,) = automation.actions
    assert isinstance(action, SendNotification) and "flow_run.name" in action.subject


def test_the_automation_file_with_its_placeholder_block_is_refused():
    """Issue 13, item 6: the automation was accepted with the placeholder block id and failed
    silently when it fired."""
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    raw = yaml.safe_load(stack.AUTOMATION_FILE.read_text())
    with pytest.raises(ValidationError, match="block_document_id"):  # `prefect automation create`
        AutomationCore.model_validate(raw)
    with pytest.raises(ValueError, match="placeholder.*make notify WEBHOOK"):
        stack.check_automation(raw, str(stack.AUTOMATION_FILE))
    for placeholder in stack.BLOCK_PLACEHOLDERS:
        with pytest.raises(ValueError, match="placeholder.*make notify WEBHOOK"):
            stack.automation_definition(placeholder)


@pytest.mark.parametrize("url", ["", "hooks.example.org/x", "ftp://example.org/x", "http://"])
def test_a_webhook_that_is_not_an_http_url_is_refused(url):
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        stack.webhook_url(url)


class WebhookListener:
    """A webhook receiver on 127.0.0.1: records each POST's JSON body."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"null"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    listener = WebhookListener()
    yield listener
    listener.close()


@pytest.mark.slow
def test_notify_creates_the_webhook_block_and_the_automation_together(prefect_harness, webhook):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    block_id, automation_id = stack.notify(api_url, webhook.url)
    block = CustomWebhookNotificationBlock.load(stack.NOTIFY_BLOCK)
    assert block.url == webhook.url and block.method == "POST"
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name("nightly-retrain-failed")
        assert str(automation.id) == automation_id and automation.enabled
        (action,) = automation.actions
        assert str(action.block_document_id) == block_id
    # the block delivers to the listener (the automation's action uses the same call)
    block.notify("cxr: nightly retraining test Failed", subject="subject line")
    assert webhook.received == [
        {"subject": "subject line", "body": "cxr: nightly retraining test Failed"}
    ]
    # run again (say with a new URL): one automation, pointing at the replaced block
    stack.notify(api_url, webhook.url + "2")
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name("nightly-retrain-failed")) == 1
    assert CustomWebhookNotificationBlock.load(stack.NOTIFY_BLOCK).url == webhook.url + "2"


def test_up_redeploys_only_the_deployments_whose_definition_changed(settings, monkeypatch):
    """Issue 13, item 6: `make up` re-deployed everything and so reverted a schedule paused or
    edited in the UI."""
    env = stack.prefect_env(settings, 4200)
    training = stack.nightly_training(env, settings)
    variables = {stack.NIGHTLY_TRAINING_VARIABLE: training}
    hashes = stack.deployment_hashes(env, variables)
    assert set(hashes) == {"nightly-retrain", "score-folder", "score-inbox"}
    assert stack.deployment_hashes(dict(env), dict(variables)) == hashes  # stable
    everything = set(hashes)
    assert set(stack.plan_deployments(hashes, hashes, everything).values()) == {"kept"}

    # a changed environment value changes only the deployments that use it
    inbox = stack.deployment_hashes(env | {"CXR_INBOX_MINUTES": "5"}, variables)
    plan = stack.plan_deployments(inbox, hashes, everything)
    assert plan["score-inbox"].startswith("updated (its definition")
    assert plan["nightly-retrain"] == plan["score-folder"] == "kept"
    # the training settings are the nightly's alone
    other = stack.deployment_hashes(env, {stack.NIGHTLY_TRAINING_VARIABLE: {"epochs": 3}})
    assert [n for n, h in other.items() if h != hashes[n]] == ["nightly-retrain"]
    # a deployment deleted on the server, or never recorded, is deployed again
    plan = stack.plan_deployments(hashes, hashes, everything - {"score-folder"})
    assert plan["score-folder"] == "updated (not on the server)"
    plan = stack.plan_deployments(hashes, {}, everything)
    assert set(plan.values()) == {"updated (no record of what was deployed)"}


def nightly_params(env: dict[str, str], training: dict, monkeypatch) -> dict:
    """The nightly deployment's ``params`` as `prefect deploy` renders them: the training
    variable that ``up`` sets, then the environment ``up`` runs it in."""
    from prefect.utilities.templating import apply_values

    template = deployment("nightly-retrain")["parameters"]
    assert template["params"]["training"] == (
        "{{ prefect.variables." + stack.NIGHTLY_TRAINING_VARIABLE + " }}"
    )
    template["params"]["training"] = training
    for name in ENV_PLACEHOLDER.findall(json.dumps(template)):
        monkeypatch.setenv(name, env[name])  # "{{ $NAME }}" is read from os.environ
    return apply_values(template, {})["params"]


def test_nightly_on_the_sample_trains_with_the_sample_settings(settings, monkeypatch):
    from cxr_model.sample import SAMPLE_TRAINING
    from flows.retrain import RetrainParams

    monkeypatch.delenv("CXR_NIGHTLY_SOURCE", raising=False)
    monkeypatch.delenv("CXR_NIGHTLY_TRAINING", raising=False)
    env = stack.prefect_env(settings, 4200)
    params = nightly_params(env, stack.nightly_training(env, settings), monkeypatch)
    assert params["sources"] == [f"folder:{settings.state_dir / 'sample' / 'train'}"]
    # the study's settings collapse on the sample (train accuracy 0.51): never the default there
    assert RetrainParams(**params).training.model_dump(include=set(SAMPLE_TRAINING)) == dict(
        SAMPLE_TRAINING
    )


def test_nightly_on_other_data_trains_with_the_study_or_the_configured_settings(
    settings, monkeypatch
):
    from cxr_model.train import TrainParams
    from flows.retrain import RetrainParams

    monkeypatch.setenv("CXR_NIGHTLY_SOURCE", "manifest:/data/cxr/manifest.csv")
    monkeypatch.delenv("CXR_NIGHTLY_TRAINING", raising=False)
    env = stack.prefect_env(settings, 4200)
    params = nightly_params(env, stack.nightly_training(env, settings), monkeypatch)
    assert RetrainParams(**params).training == TrainParams()

    monkeypatch.setenv("CXR_NIGHTLY_TRAINING", '{"epochs": 20, "batch_size": 64}')
    env = stack.prefect_env(settings, 4200)
    params = nightly_params(env, stack.nightly_training(env, settings), monkeypatch)
    assert RetrainParams(**params).training == TrainParams(epochs=20, batch_size=64)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("{epochs: 20}", "not JSON"), ("[20]", "JSON object"), ('{"epochs": 0}', "epochs")],
)
def test_bad_nightly_training_settings_are_refused_before_deploying(
    settings, monkeypatch, value, complaint
):
    monkeypatch.setenv("CXR_NIGHTLY_TRAINING", value)
    env = stack.prefect_env(settings, 4200)
    with pytest.raises(ValueError, match=f"CXR_NIGHTLY_TRAINING.*{complaint}"):
        stack.nightly_training(env, settings)


@pytest.mark.slow
def test_down_leaves_alone_a_process_that_took_a_recorded_pid(settings, capsys):
    """Issue 11, item 10: the stack died, its pids went to other processes; `make down`."""
    import subprocess

    unrelated = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    state = {
        "api_url": "http://127.0.0.1:9/api",
        "ui_url": "http://127.0.0.1:9",
        "server_pid": unrelated[0].pid,
        "worker_pid": unrelated[1].pid,
        "started_store": False,
        "started_at": "2025-01-01T00:00:00+00:00",
    }
    path = settings.state_dir / "stack" / "stack.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(state))
    try:
        stopped = stack.down(settings)
        assert stopped == []
        assert all(process.poll() is None for process in unrelated), "an unrelated process died"
        captured = capsys.readouterr()
        out = captured.out + captured.err
        for process in unrelated:
            assert f"pid {process.pid}" in out and "stale record" in out
        assert not path.exists()
    finally:
        for process in unrelated:
            process.kill()
            process.wait()
