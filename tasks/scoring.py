"""Score: run a registered model over chunks of files and collect the predictions in the store."""

from __future__ import annotations

from functools import lru_cache

import keras
import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from cxr_model import scoring
from cxr_model.config import get_settings
from cxr_model.manifest import read_csv
from cxr_model.registry import ModelCard
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store
from tasks.registry import registry

PREVIEW_ROWS = 20


class ModelChoice(BaseModel):
    """The version a scoring run uses, and how it reads its inputs."""

    version: int
    image_size: int
    threshold: float


@lru_cache(maxsize=2)
def _load_cached(settings_json: str, version: int) -> tuple[keras.Model, ModelCard]:
    return registry().load(version)


def _loaded(version: int) -> tuple[keras.Model, ModelCard]:
    """A registered model, loaded once per process and store."""
    return _load_cached(get_settings().model_dump_json(), version)


@task(name="resolve-model", **TRANSIENT_RETRIES)
def resolve_model(ref: str, threshold: float | None) -> ModelChoice:
    """The version behind an alias or number (loaded and verified once per process)."""
    version = registry().resolve(ref)
    _, card = _loaded(version)
    return ModelChoice(
        version=version,
        image_size=int(card.parameters["training"]["image_size"]),
        threshold=card.threshold if threshold is None else threshold,
    )


@task(name="score-chunk", **TRANSIENT_RETRIES)
def score_chunk(paths: list[str], model: ModelChoice, chunk_key: str) -> str:
    """Score one chunk of files and write its rows to ``chunk_key``; returns the key."""
    objects = store()
    keras_model, _ = _loaded(model.version)
    predictions = scoring.score_files(
        paths,
        objects,
        keras_model,
        model_version=model.version,
        image_size=model.image_size,
        threshold=model.threshold,
    )
    objects.put_bytes(chunk_key, scoring.frame_to_csv_bytes(scoring.predictions_frame(predictions)))
    return chunk_key


@task(name="merge-predictions", **TRANSIENT_RETRIES)
def merge_predictions(chunk_keys: list[str], output_key: str, title: str) -> scoring.ScoreSummary:
    """Concatenate chunk results into one predictions CSV and publish a summary."""
    objects = store()
    frames = [read_csv(objects, key) for key in chunk_keys]
    merged = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=scoring.PREDICTION_COLUMNS)
    )
    objects.put_bytes(output_key, scoring.frame_to_csv_bytes(merged), content_type="text/csv")
    summary = scoring.summarise(merged)
    create_markdown_artifact(
        markdown=(
            f"### {title}\n\n{summary.files} files: {summary.scored} scored, {summary.errors} errors\n\n"
            f"Predicted: {summary.by_label}\n\nErrors by reason: {summary.errors_by_reason}\n\n"
            f"Predictions: `{objects.uri(output_key)}`"
        ),
        key=artifact_key("scoring-summary"),
    )
    create_table_artifact(
        merged.head(PREVIEW_ROWS).astype(str).to_dict("records"),
        key=artifact_key("predictions-preview"),
    )
    create_link_artifact(
        link=objects.uri(output_key), link_text="predictions CSV", key=artifact_key("predictions")
    )
    say(
        f"scored {summary.scored} of {summary.files} files ({summary.errors} errors); "
        f"predictions at {objects.uri(output_key)}"
    )
    return summary
