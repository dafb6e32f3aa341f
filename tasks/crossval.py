"""Cross-validation: the Train split in K patient-grouped folds, one model per fold, out-of-fold
predictions and per-fold metrics; then the fold models averaged into one ensemble to register.

The Val split is not touched here: the ensemble is evaluated and gated on it like a single model.
The folds, the out-of-fold table and the training record are built by :mod:`cxr_model.crossval`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from cxr_model.crossval import FoldModel, ensemble_training_record, fold_arrays, oof_table
from cxr_model.ensemble import average_ensemble
from cxr_model.evaluate import evaluate_predictions, folds_markdown
from cxr_model.manifest import read_csv, write_csv
from cxr_model.predict import predict_probabilities
from cxr_model.split import TRAIN, load_split
from cxr_model.train import Checkpoint, TrainParams, checkpoint_prefix, train_model
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store
from tasks.shared import DatasetRef, TrainedModel, image_sources, local_weights, split_arrays


@task(name="train-fold", **TRANSIENT_RETRIES)
def fit_fold(
    dataset: DatasetRef, params: TrainParams, fold: int, folds: int, run_prefix: str
) -> FoldModel:
    """Train on the other folds, validate on this one; keep its out-of-fold predictions."""
    objects = store()
    (all_train,) = split_arrays(
        dataset, params.image_size, TRAIN, preprocessing=params.preprocessing
    )
    train, held, sources = fold_arrays(
        all_train, load_split(objects, dataset.split_key), fold, folds, params.seed
    )
    say(f"fold {fold + 1}/{folds}: training on {len(train)} images, holding out {len(held)}")
    checkpoint = Checkpoint(
        objects, f"{checkpoint_prefix(dataset.dataset_id, params)}/fold-{fold}-of-{folds}"
    )
    prefix = f"{run_prefix}/folds/{fold}"
    with tempfile.TemporaryDirectory() as work:
        result = train_model(
            train,
            held,
            params,
            Path(work),
            checkpoint=checkpoint,
            weights_file=local_weights(params, Path(work)),
            sources=image_sources(dataset, train) if params.needs_sources else None,
            progress=lambda line: say(f"fold {fold + 1}/{folds}: {line}"),
        )
        model = keras.saving.load_model(result.model_path, compile=False)
        objects.put_file(f"{prefix}/model.keras", result.model_path)
    probabilities = predict_probabilities(model, held.images)
    evaluation = evaluate_predictions(held.labels, probabilities, sources=sources)
    write_csv(objects, f"{prefix}/oof.csv", oof_table(held, fold, probabilities, sources))
    say(
        f"fold {fold + 1}/{folds}: held-out AUC {evaluation.auc}, accuracy {evaluation.accuracy:.3f}"
    )
    return FoldModel(
        fold=fold,
        folds=folds,
        model_key=f"{prefix}/model.keras",
        oof_key=f"{prefix}/oof.csv",
        evaluation=evaluation,
        train_accuracy=result.train_accuracy,
        seconds=result.seconds,
        images_per_second=result.images_per_second,
        devices=result.devices,
    )


@task(name="combine-folds", **TRANSIENT_RETRIES)
def combine_folds(folds: list[FoldModel], params: TrainParams, run_prefix: str) -> TrainedModel:
    """The fold models averaged into one registrable model; CV metrics (per fold, mean ± sd) and
    all out-of-fold predictions stored beside it."""
    objects = store()
    report = folds_markdown(
        [f.evaluation for f in folds], title=f"Cross-validation ({len(folds)} folds by patient)"
    )
    oof_key = f"{run_prefix}/cross_validation/oof.csv"
    write_csv(objects, oof_key, pd.concat(read_csv(objects, f.oof_key) for f in folds))
    objects.put_bytes(f"{run_prefix}/cross_validation/report.md", report.encode())
    with tempfile.TemporaryDirectory() as work:
        members = [
            keras.saving.load_model(objects.download(f.model_key, Path(work) / f"{n}.keras"))
            for n, f in enumerate(folds)
        ]
        path = Path(work) / "model.keras"
        average_ensemble(members, name=f"{params.architecture}_ensemble_{len(folds)}").save(path)
        model_key = f"{run_prefix}/model.keras"
        objects.put_file(model_key, path)
    training = ensemble_training_record(folds, oof_key)
    training_key = f"{run_prefix}/training.json"
    objects.put_bytes(training_key, json.dumps(training, indent=2).encode())
    create_markdown_artifact(markdown=report, key=artifact_key("cross-validation"))
    auc = training["cross_validation"]["summary"].get("auc", {})
    say(
        f"cross-validation: AUC {auc.get('mean', float('nan')):.3f} ± {auc.get('sd', 0):.3f} over "
        f"{len(folds)} folds; ensemble of the fold models staged at {objects.uri(model_key)}"
    )
    return TrainedModel(
        model_key=model_key,
        training_key=training_key,
        params=params,
        train_accuracy=training["train_accuracy"],
        val_accuracy=training["val_accuracy"],
        images_per_second=float(np.mean([f.images_per_second for f in folds])),
        seconds=training["seconds"],
        devices=folds[0].devices,
    )
