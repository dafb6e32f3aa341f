"""The retraining flow: get images → check them → sort them → train → evaluate → export →
register.

The new model becomes champion only through the promotion gate: it must meet the minimums and be
no worse than the current champion evaluated on the same validation images.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State
from pydantic import BaseModel, Field

from cxr_model.evaluate import Evaluation, ThresholdRule
from cxr_model.gate import GateSettings
from cxr_model.generalisation import Generalisation, honest_line
from cxr_model.outputs import REGISTERED_FILE
from cxr_model.quality import QualitySettings
from cxr_model.split import SplitParams
from cxr_model.train import TrainParams
from flows.run_names import timestamped
from tasks.common import run_prefix, store
from tasks.crossval import combine_folds, fit_fold
from tasks.evaluate import evaluate_champion, evaluate_model
from tasks.export import export_model
from tasks.ingest import IngestResult, get_images
from tasks.quality import QualityResult, check_images
from tasks.registry import RegisteredModel, register_model
from tasks.shared import DatasetRef, TrainedModel
from tasks.split import sort_images
from tasks.train import clean_checkpoints, fit_model


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
    cv_folds: int = Field(
        default=1,
        ge=1,
        le=20,
        description="1: one model trained on Train. K ≥ 2: K-fold cross-validation by patient on "
        "Train (per-fold metrics, out-of-fold predictions), registering the fold models' average.",
    )
    threshold: ThresholdRule = Field(
        default_factory=ThresholdRule, description="How the decision threshold is chosen."
    )
    gate: GateSettings = Field(
        default_factory=GateSettings, description="What a new model must show to become champion."
    )


class RetrainResult(BaseModel):
    """What a retraining run produced, with addresses a user can open."""

    ingest: IngestResult
    quality: QualityResult
    dataset: DatasetRef
    trained: TrainedModel
    evaluation: Evaluation
    generalisation: Generalisation
    registered: RegisteredModel

    @property
    def decision(self) -> str:
        """The gate's decision with the internal and honest estimates, for the run's state."""
        return f"{self.registered.decision} ({honest_line(self.evaluation, self.generalisation)})"


@flow(name="retrain", flow_run_name=timestamped("retrain"), log_prints=True)
def retrain(params: RetrainParams) -> State:
    """Turn image sources into a registered COVID-vs-normal classifier.

    The run ends Completed with the gate's decision as its message; calling the flow returns
    the :class:`RetrainResult`.
    """
    prefix = run_prefix("retrain")
    images = get_images(params.sources)
    quality = check_images(images.manifest_key, params.quality, f"{prefix}/quality")
    dataset = sort_images(
        quality.accepted_key,
        params.split,
        params.quality,
        f"{prefix}/quality",
        quality.shortcut_flags,
    )
    if params.cv_folds > 1:
        folds = [
            fit_fold(dataset, params.training, fold, params.cv_folds, prefix)
            for fold in range(params.cv_folds)
        ]
        trained = combine_folds(folds, params.training, prefix)
    else:
        trained = fit_model(dataset, params.training, prefix)
    assessed = evaluate_model(trained.model_key, params.training, dataset, params.threshold, prefix)
    exported = export_model(trained.model_key, params.training.image_size, prefix)
    champion = evaluate_champion(dataset, params.threshold)
    registered = register_model(
        trained,
        assessed.internal,
        assessed.generalisation,
        champion,
        params.gate,
        dataset,
        quality.report_key,
        quality.accepted_key,
        params.model_dump(),
        assessed.ood,
        assessed.ood_key,
        exported,
    )
    # `cxr get <run> card` finds the registered version's card through this record
    store().put_bytes(f"{prefix}/{REGISTERED_FILE}", registered.model_dump_json(indent=2).encode())
    # the new version is registered: older trainings' checkpoints are no longer needed
    cleaned = clean_checkpoints(dataset, params.training, return_state=True)
    if not cleaned.is_completed():
        print(f"WARNING: old checkpoints were not removed: {cleaned.message}")
    result = RetrainResult(
        ingest=images,
        quality=quality,
        dataset=dataset,
        trained=trained,
        evaluation=assessed.internal,
        generalisation=assessed.generalisation,
        registered=registered,
    )
    return Completed(message=result.decision, data=result)
