"""The retraining flow: get images → check them → sort them → train → evaluate → register."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from pydantic import BaseModel, Field

from cxr_model.evaluate import Evaluation
from cxr_model.quality import QualitySettings
from cxr_model.split import SplitParams
from cxr_model.train import TrainParams
from tasks.common import run_prefix
from tasks.evaluate import evaluate_model
from tasks.ingest import IngestResult, get_images
from tasks.quality import QualityResult, check_images
from tasks.registry import RegisteredModel, register_model
from tasks.split import DatasetRef, sort_images
from tasks.train import TrainedModel, fit_model


class RetrainParams(BaseModel):
    """Everything a retraining run needs; every field has a default except the sources."""

    sources: list[str] = Field(
        description="Image sources: folder:<path> (self-sorted covid/normal, optionally under "
        "Train/Val) or manifest:<csv>.",
        min_length=1,
    )
    quality: QualitySettings = Field(default_factory=QualitySettings)
    split: SplitParams = Field(default_factory=SplitParams)
    training: TrainParams = Field(default_factory=TrainParams)


class RetrainResult(BaseModel):
    """What a retraining run produced, with addresses a user can open."""

    ingest: IngestResult
    quality: QualityResult
    dataset: DatasetRef
    trained: TrainedModel
    evaluation: Evaluation
    registered: RegisteredModel


def _run_name() -> str:
    return f"retrain-{datetime.now(UTC):%Y-%m-%d-%H%M%S}"


@flow(name="retrain", flow_run_name=_run_name, log_prints=True)
def retrain(params: RetrainParams) -> RetrainResult:
    """Turn image sources into a registered COVID-vs-normal classifier."""
    prefix = run_prefix("retrain")
    images = get_images(params.sources)
    quality = check_images(images.manifest_key, params.quality, f"{prefix}/quality")
    dataset = sort_images(quality.accepted_key, params.split, params.quality, f"{prefix}/quality")
    trained = fit_model(dataset, params.training, prefix)
    evaluation = evaluate_model(trained, dataset, prefix)
    registered = register_model(trained, evaluation, dataset, params.model_dump())
    return RetrainResult(
        ingest=images,
        quality=quality,
        dataset=dataset,
        trained=trained,
        evaluation=evaluation,
        registered=registered,
    )
