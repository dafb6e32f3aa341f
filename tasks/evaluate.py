"""Evaluate: score the validation split with the staged model and record the metrics."""

from __future__ import annotations

import keras
from prefect import task
from prefect.artifacts import create_table_artifact

from cxr_model.config import get_settings
from cxr_model.evaluate import Evaluation, evaluate_predictions
from cxr_model.split import VAL
from tasks.common import artifact_key, say, store
from tasks.split import DatasetRef
from tasks.train import TrainedModel, split_arrays


@task(name="evaluate-model")
def evaluate_model(trained: TrainedModel, dataset: DatasetRef, run_prefix: str) -> Evaluation:
    """Accuracy, AUC, sensitivity, specificity and confusion matrix on the Val split."""
    objects = store()
    local = get_settings().cache_dir / trained.model_key
    model = keras.saving.load_model(objects.download(trained.model_key, local), compile=False)
    (val,) = split_arrays(dataset, trained.params.image_size, VAL)
    probabilities = model.predict(val.images.astype("float32"), verbose=0).reshape(-1)
    evaluation = evaluate_predictions(val.labels, probabilities)
    objects.put_bytes(
        f"{run_prefix}/evaluation.json", evaluation.model_dump_json(indent=2).encode()
    )
    create_table_artifact(
        [{"metric": k, "value": v} for k, v in evaluation.model_dump().items()],
        key=artifact_key("evaluation"),
    )
    auc = "n/a" if evaluation.auc is None else f"{evaluation.auc:.3f}"
    say(
        f"validation: accuracy {evaluation.accuracy:.3f}, AUC {auc}, "
        f"sensitivity {evaluation.sensitivity}, specificity {evaluation.specificity}"
    )
    return evaluation
