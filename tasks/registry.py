"""Register: store the staged model as a new immutable version and point an alias at it."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from cxr_model.config import get_settings
from cxr_model.evaluate import Evaluation
from cxr_model.registry import CANDIDATE, CHAMPION, Registry
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store
from tasks.split import DatasetRef
from tasks.train import TrainedModel


class RegisteredModel(BaseModel):
    """A registered version and the alias this run gave it."""

    name: str
    version: int
    alias: str
    uri: str
    model_bytes: int


def registry() -> Registry:
    settings = get_settings()
    return Registry(store(), settings.model_name, settings.cache_dir)


@task(name="register-model", **TRANSIENT_RETRIES)
def register_model(
    trained: TrainedModel, evaluation: Evaluation, dataset: DatasetRef, parameters: dict
) -> RegisteredModel:
    """Register the model; the first version becomes champion, later ones candidate."""
    objects = store()
    models = registry()
    local = get_settings().cache_dir / trained.model_key
    if not local.exists():
        objects.download(trained.model_key, local)
    training = json.loads(objects.get_bytes(trained.training_key))
    card = models.register(
        local,
        threshold=evaluation.threshold,
        metrics=evaluation.model_dump(),
        training=training,
        parameters=parameters,
        dataset_id=dataset.dataset_id,
    )
    if models.set_alias(CHAMPION, card.version, reason="first model", only_if_absent=True):
        alias = CHAMPION
    else:
        # A promotion gate that compares with the champion arrives later; until then a human
        # promotes candidates (`cxr registry promote`).
        models.set_alias(CANDIDATE, card.version, reason="trained while a champion exists")
        alias = CANDIDATE
    result = RegisteredModel(
        name=card.name,
        version=card.version,
        alias=alias,
        uri=models.version_uri(card.version),
        model_bytes=card.model_bytes,
    )
    create_markdown_artifact(
        markdown=(
            f"### Registered {card.name} v{card.version} ({alias})\n\n"
            f"- location: `{result.uri}`\n- model sha256: `{card.model_sha256}`\n"
            f"- size: {card.model_bytes / 1e6:.1f} MB\n- dataset: `{card.dataset_id}`\n"
            f"- validation accuracy {evaluation.accuracy:.3f}, AUC {evaluation.auc}"
        ),
        key=artifact_key("registered-model"),
    )
    say(f"registered {card.name} version {card.version} as {alias} at {result.uri}")
    return result
