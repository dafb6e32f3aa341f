"""Notification of a failed nightly retraining: a webhook block and the failed-nightly
automation (``deployments/automations/``) that sends to it, created together so that the
automation never points at a placeholder block."""

from __future__ import annotations

import httpx
import yaml

from deployments.prefect_server import REPO, prefect_client

AUTOMATION_FILE = REPO / "deployments" / "automations" / "nightly-retrain-failed.yaml"
NOTIFY_BLOCK = "cxr-nightly-retrain-failed"
# What deployments/automations/*.yaml hold where a notification block's id goes: never a block.
BLOCK_PLACEHOLDERS = {"<set by make notify>", "00000000-0000-0000-0000-000000000000"}


def automation_definition(block_id: str) -> dict:
    """The failed-nightly automation of ``AUTOMATION_FILE`` sending to the block ``block_id``."""
    if str(block_id) in BLOCK_PLACEHOLDERS:
        raise ValueError(
            f"block id {block_id!r} is a placeholder, not a notification block; "
            "create both with: make notify WEBHOOK=<url>"
        )
    definition = yaml.safe_load(AUTOMATION_FILE.read_text())
    for action in definition["actions"]:
        if action.get("type") == "send-notification":
            action["block_document_id"] = str(block_id)
    return definition


def check_automation(definition: dict, where: str) -> None:
    """Refuse an automation that sends to a placeholder block (it would fail when it fires)."""
    for action in definition.get("actions", []):
        block = str(action.get("block_document_id", ""))
        if action.get("type") == "send-notification" and block in BLOCK_PLACEHOLDERS:
            raise ValueError(
                f"{where}: block_document_id {block!r} is a placeholder; the automation would "
                "fail silently when it fires. Create the block and the automation together "
                "with: make notify WEBHOOK=<url>"
            )


def webhook_url(url: str) -> str:
    """An http(s) URL with a host, or a one-line reason."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"webhook {url!r}: expected an http:// or https:// URL with a host")
    return url


def notify(api_url: str, webhook: str) -> tuple[str, str]:
    """Create (or replace) the webhook block and the failed-nightly automation sending to it.

    The webhook receives a JSON POST ``{"subject": ..., "body": ...}`` when a nightly-retrain run
    ends Failed or Crashed. Returns the block's and the automation's ids.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL, temporary_settings

    webhook_url(webhook)
    with temporary_settings({PREFECT_API_URL: api_url}):
        block = CustomWebhookNotificationBlock(
            name="cxr nightly-retrain failed",
            url=webhook,
            method="POST",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        )
        block_id = block.save(NOTIFY_BLOCK, overwrite=True)
    definition = automation_definition(str(block_id))
    check_automation(definition, str(AUTOMATION_FILE))
    automation = AutomationCore.model_validate(definition)
    with prefect_client(api_url) as client:
        client.read_block_document(block_id)  # it is there: the automation cannot point nowhere
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        automation_id = client.create_automation(automation)
    return str(block_id), str(automation_id)
