"""The demo flow: make the synthetic sample → retrain on it → score its inbox. Offline, minutes."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from pydantic import BaseModel, Field

from cxr_model.config import get_settings
from cxr_model.sample import SAMPLE_TRAINING, SampleSpec, SampleSummary, generate_sample
from cxr_model.train import TrainParams
from flows.retrain import RetrainParams, RetrainResult, retrain
from flows.run_names import timestamped
from flows.score import ScoreParams, ScoreResult, score_folder
from tasks.common import say


class DemoParams(BaseModel):
    """The demo's knobs: the study's CNN, trained with the sample's settings (see
    :data:`cxr_model.sample.SAMPLE_TRAINING`), on a small synthetic sample."""

    training: TrainParams = Field(default_factory=lambda: TrainParams(**SAMPLE_TRAINING))
    sample_seed: int = Field(default=0, description="Seed of the synthetic sample.")


class DemoResult(BaseModel):
    sample_root: str
    retrain: RetrainResult
    score: ScoreResult


@task(name="make-sample")
def make_sample(folder: Path, seed: int) -> SampleSummary:
    """Generate the synthetic sample (deterministic: the same seed gives the same files)."""
    summary = generate_sample(folder, SampleSpec(seed=seed))
    say(
        f"synthetic sample: {summary.images} images of {summary.patients} patients in {summary.root}"
    )
    return summary


@flow(name="demo", flow_run_name=timestamped("demo"))
def demo(params: DemoParams) -> DemoResult:
    """Run the whole pipeline once on generated data."""
    sample = make_sample(get_settings().state_dir / "sample", params.sample_seed)
    trained = retrain(
        RetrainParams(sources=[f"folder:{sample.train_dir}"], training=params.training)
    )
    scored = score_folder(ScoreParams(input=str(sample.inbox_dir)))
    return DemoResult(sample_root=str(sample.root), retrain=trained, score=scored)
