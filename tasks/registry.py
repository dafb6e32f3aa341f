"""Register: store the trained model as a new immutable version, gate it, and write its card."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from cxr_model.card import render_model_card
from cxr_model.config import get_settings
from cxr_model.evaluate import Evaluation
from cxr_model.gate import GateDecision, GateSettings, decide, gate_markdown
from cxr_model.generalisation import Generalisation
from cxr_model.html_report import markdown_to_html
from cxr_model.inference import Export
from cxr_model.manifest import read_csv
from cxr_model.ood import OodCheck
from cxr_model.provenance import dataset_audit, dataset_sources
from tasks.common import TRANSIENT_RETRIES, artifact_key, link, registry, say, store
from tasks.shared import ChampionEvaluation, DatasetRef, ExportedModel, TrainedModel

CARD_FILE = "model_card.md"
CARD_PAGE = "model_card.html"  # the same card as a standalone page


class RegisteredModel(BaseModel):
    """A registered version, the alias the gate gave it, and why."""

    name: str
    version: int
    alias: str
    reason: str
    uri: str
    card_uri: str
    card_link: str = ""  # the card's HTML page, as an address a browser opens (cxr_model.links)
    model_bytes: int
    overridden: bool = False  # promoted under gate.allow_confounded

    @property
    def decision(self) -> str:
        """One line for people: ``v3 registered as candidate: <reason>``."""
        return f"{self.name} v{self.version} registered as {self.alias}: {self.reason}"


@task(name="register-model", **TRANSIENT_RETRIES)
def register_model(
    trained: TrainedModel,
    evaluation: Evaluation,
    generalisation: Generalisation,
    champion: ChampionEvaluation | None,
    gate: GateSettings,
    dataset: DatasetRef,
    quality_report_key: str,
    accepted_key: str,
    parameters: dict,
    ood: OodCheck | None = None,
    ood_key: str | None = None,
    exported: ExportedModel | None = None,
) -> RegisteredModel:
    """Register the model, then let the gate decide: ``champion`` or ``candidate``, with a reason.

    ``champion`` is the current champion's version and its metrics on the same Val split (or why
    it cannot be loaded, which keeps the new model a candidate); ``generalisation`` the evidence
    from unseen sources, which the gate requires when the shortcut audit flagged the data;
    ``ood`` the out-of-distribution check staged at ``ood_key``, attached to the version before
    any alias points at it (scoring with the version uses it); ``exported`` the ONNX export
    scoring runs without TensorFlow, attached the same way.

    Safe to retry: the registration is named by the flow run, so a retry after a failed step
    (an alias move that got 503s) finishes the version it registered instead of adding another.
    """
    objects = store()
    models = registry()
    local = get_settings().cache_dir / trained.model_key
    if not local.exists():
        objects.download(trained.model_key, local)
    decision: GateDecision = decide(
        evaluation,
        champion.evaluation if champion else None,
        gate,
        champion_version=champion.version if champion else None,
        generalisation=generalisation,
        champion_problem=champion.problem if champion else None,
    )
    card = models.register(
        local,
        registration_id=flow_run.get_id() or objects.uri(trained.model_key),
        threshold=evaluation.threshold,
        metrics=evaluation.model_dump(),
        training=json.loads(objects.get_bytes(trained.training_key)),
        parameters=parameters,
        dataset_id=dataset.dataset_id,
        notes=[f"gate: {decision.reason}"],
        generalisation=generalisation.model_dump(),
        ood=ood.model_dump() if ood else None,
        export=Export(objects.get_bytes(exported.key), exported.artifact) if exported else None,
    )
    if ood is not None and ood_key is not None:
        models.attach(card.version, ood.file, objects.get_bytes(ood_key))
    models.set_alias(decision.alias, card.version, reason=decision.reason)
    markdown = render_model_card(
        card,
        evaluation=evaluation,
        gate=decision,
        sources=dataset_sources(read_csv(objects, accepted_key)),
        audit=dataset_audit(objects.get_bytes(quality_report_key)),
        generalisation=generalisation,
    )
    card_key = models.attach(card.version, CARD_FILE, markdown.encode())
    title = f"Model card: {card.name} v{card.version}"
    card_page = models.attach(card.version, CARD_PAGE, markdown_to_html(markdown, title).encode())
    models.attach(card.version, "gate.json", decision.model_dump_json(indent=2).encode())
    result = RegisteredModel(
        name=card.name,
        version=card.version,
        alias=decision.alias,
        reason=decision.reason,
        uri=models.version_uri(card.version),
        card_uri=objects.uri(card_key),
        card_link=link(card_page),
        model_bytes=card.model_bytes,
        overridden=decision.overridden,
    )
    create_markdown_artifact(
        markdown=(
            f"### Registered {card.name} v{card.version} as **{decision.alias}**\n\n"
            f"- location: `{result.uri}`\n"
            f"- model card: [{CARD_PAGE}]({result.card_link}) (`{result.card_uri}`)\n"
            f"- size: {card.model_bytes / 1e6:.1f} MB\n- dataset: `{card.dataset_id}`\n\n"
            + gate_markdown(decision)
        ),
        key=artifact_key("registered-model"),
    )
    create_markdown_artifact(markdown=markdown, key=artifact_key("model-card"))
    create_link_artifact(
        link=result.card_link,
        link_text=f"Model card of {card.name} v{card.version} (HTML)",
        key=artifact_key("model-card-page"),
        description=f"Stored at {objects.uri(card_page)}",
    )
    say(f"registered {card.name} v{card.version} as {decision.alias}: {decision.reason}")
    return result
