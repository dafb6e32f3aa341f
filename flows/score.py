"""The scoring flow: resolve the model → score the folder in chunks → merge the predictions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from cxr_model.scoring import ScoreSummary, chunked, list_inputs
from tasks.common import run_prefix, store
from tasks.scoring import merge_predictions, resolve_model, score_chunk


class ScoreParams(BaseModel):
    """A scoring request, as the CLI and the Prefect UI form fill it in."""

    input: str = Field(description="Folder to score: a local path or s3://bucket/prefix.")
    model: str = Field(
        default="champion", description="Model alias (champion, ...) or version number."
    )
    output: str | None = Field(
        default=None,
        description="Key prefix for the predictions in the cxr bucket; default runs/score/<run name>.",
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Decision threshold; default the model card's."
    )
    chunk_size: int = Field(default=256, ge=1, le=10_000, description="Images per scoring task.")


class ScoreResult(BaseModel):
    model_version: int
    predictions_uri: str
    summary: dict


def _run_name() -> str:
    params = flow_run.parameters.get("params")
    location = (
        params.input if isinstance(params, ScoreParams) else str((params or {}).get("input", ""))
    )
    folder = PurePosixPath(location.rstrip("/")).name or "input"
    return f"score-{folder}-{datetime.now(UTC):%Y-%m-%d-%H%M%S}"


@flow(name="score-folder", flow_run_name=_run_name)
def score_folder(params: ScoreParams) -> ScoreResult:
    """Score every file under ``params.input`` with a registered model."""
    prefix = params.output or run_prefix("score")
    model = resolve_model(params.model, params.threshold)
    chunk_keys = [
        score_chunk(paths, model, f"{prefix}/chunks/{number:05d}.csv")
        for number, paths in enumerate(
            chunked(list_inputs(params.input, store()), params.chunk_size)
        )
    ]
    summary: ScoreSummary = merge_predictions(
        chunk_keys, f"{prefix}/predictions.csv", f"Scored {params.input}"
    )
    return ScoreResult(
        model_version=model.version,
        predictions_uri=store().uri(f"{prefix}/predictions.csv"),
        summary=summary.__dict__,
    )
