"""Train: fit the model on a dataset's Train split and stage the result in the store.

Training state is checkpointed to ``checkpoints/<dataset id>/<hash of the training params>`` after
every epoch, so a retry or a rerun after a crash resumes where it stopped (and a rerun of a
finished training trains nothing). Once a version is registered, :func:`clean_checkpoints`
removes the finished checkpoints of older trainings (``CXR_KEEP_CHECKPOINTS``, 1 by default).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from cxr_model.config import get_settings
from cxr_model.split import TRAIN, VAL
from cxr_model.train import (
    Checkpoint,
    CheckpointCleanup,
    TrainParams,
    checkpoint_prefix,
    history_frame,
    remove_old_checkpoints,
    train_model,
    training_summary,
)
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store
from tasks.shared import DatasetRef, TrainedModel, image_sources, local_weights, split_arrays


@task(name="train-model", **TRANSIENT_RETRIES)
def fit_model(dataset: DatasetRef, params: TrainParams, run_prefix: str) -> TrainedModel:
    """Train ``params.architecture`` on the dataset; stage model and history under ``run_prefix``."""
    objects = store()
    train, val = split_arrays(
        dataset, params.image_size, TRAIN, VAL, preprocessing=params.preprocessing
    )
    checkpoint = Checkpoint(objects, checkpoint_prefix(dataset.dataset_id, params))
    say(
        f"training {params.architecture} on {len(train)} images ({params.epochs} epochs, "
        f"{params.image_size}px, batch {params.batch_size}); checkpoints in "
        f"{objects.uri(checkpoint.prefix)}"
    )
    with tempfile.TemporaryDirectory() as work:
        weights = local_weights(params, Path(work) / "weights")
        result = train_model(
            train,
            val,
            params,
            Path(work),
            checkpoint=checkpoint,
            weights_file=weights,
            sources=image_sources(dataset, train) if params.needs_sources else None,
            progress=say,
        )
        model_key = f"{run_prefix}/model.keras"
        objects.put_file(model_key, result.model_path)
    history = history_frame(result.history)
    training_key = f"{run_prefix}/training.json"
    training = {
        "train_accuracy": result.train_accuracy,
        "val_accuracy": result.val_accuracy,
        "kept_epoch": result.kept_epoch,
        "images_per_second": result.images_per_second,
        "seconds": result.seconds,
        "devices": result.devices,
        "replicas": result.replicas,
        "mixed_precision": result.mixed_precision,
        "jit_compile": result.jit_compile,
        "class_weights": result.class_weights,
        "resumed_at_epoch": result.initial_epoch,
        "checkpoint": objects.uri(checkpoint.prefix),
        "history": result.history,
    }
    objects.put_bytes(training_key, json.dumps(training, indent=2).encode())
    create_table_artifact(history.round(4).to_dict("records"), key=artifact_key("training-history"))
    say(training_summary(result))
    return TrainedModel(
        model_key=model_key,
        training_key=training_key,
        params=params,
        train_accuracy=result.train_accuracy,
        val_accuracy=result.val_accuracy,
        images_per_second=result.images_per_second,
        seconds=result.seconds,
        devices=result.devices,
    )


@task(name="clean-checkpoints", **TRANSIENT_RETRIES)
def clean_checkpoints(dataset: DatasetRef, params: TrainParams) -> CheckpointCleanup:
    """After registration: remove finished checkpoints but the most recent ``keep_checkpoints``
    (this training's first); say what was removed and what was kept."""
    objects = store()
    keep = get_settings().keep_checkpoints
    done = remove_old_checkpoints(objects, checkpoint_prefix(dataset.dataset_id, params), keep)
    removed = ", ".join(objects.uri(root) for root in done.removed) or "none"
    kept = ", ".join(objects.uri(root) for root in done.kept) or "none"
    say(
        f"checkpoints: removed {len(done.removed)} ({done.objects_removed} objects): {removed}; "
        f"kept the {keep} most recent: {kept}"
        + (f"; {len(done.unfinished)} unfinished left to resume" if done.unfinished else "")
    )
    return done
