"""Cross-validation: the Train split in K patient-grouped folds, one model per fold, out-of-fold
predictions and per-fold metrics; then the fold models averaged into one ensemble to register.

The Val split is not touched here: the ensemble is evaluated and gated on it like a single model.
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
from pydantic import BaseModel

from cxr_model.data import SplitArrays
from cxr_model.ensemble import average_ensemble
from cxr_model.evaluate import Evaluation, evaluate_predictions, folds_markdown, summarise_folds
from cxr_model.images import LEGACY_PREPROCESSING, Preprocessing
from cxr_model.manifest import read_csv, write_csv
from cxr_model.split import TRAIN, load_split, patient_folds
from cxr_model.train import Checkpoint, TrainParams, checkpoint_prefix, train_model
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store
from tasks.split import DatasetRef
from tasks.train import TrainedModel, image_sources, local_weights, split_arrays

PREDICT_BATCH = 64


class FoldModel(BaseModel):
    """One fold's model, staged in the store, and how it did on its held-out patients."""

    fold: int
    folds: int
    model_key: str
    oof_key: str
    evaluation: Evaluation
    train_accuracy: float
    seconds: float
    images_per_second: float
    devices: list[str]


def _subset(arrays: SplitArrays, keep: np.ndarray) -> SplitArrays:
    return SplitArrays(
        arrays.images[keep], arrays.labels[keep], [str(k) for k in np.asarray(arrays.keys)[keep]]
    )


def fold_arrays(
    dataset: DatasetRef,
    image_size: int,
    fold: int,
    folds: int,
    seed: int,
    preprocessing: Preprocessing = LEGACY_PREPROCESSING,
) -> tuple[SplitArrays, SplitArrays, list[str]]:
    """Train rows outside ``fold``, the rows in it, and the held-out rows' sources."""
    (train,) = split_arrays(dataset, image_size, TRAIN, preprocessing=preprocessing)
    rows = load_split(store(), dataset.split_key).set_index("dataset_key").loc[train.keys]
    assignment = patient_folds(rows.reset_index(), folds, seed).to_numpy()
    held = assignment == fold
    sources = [str(s) for s in rows["source"].to_numpy()[held]]
    return _subset(train, ~held), _subset(train, held), sources


@task(name="train-fold", **TRANSIENT_RETRIES)
def fit_fold(
    dataset: DatasetRef, params: TrainParams, fold: int, folds: int, run_prefix: str
) -> FoldModel:
    """Train on the other folds, validate on this one; keep its out-of-fold predictions."""
    objects = store()
    train, held, sources = fold_arrays(
        dataset, params.image_size, fold, folds, params.seed, params.preprocessing
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
    probabilities = model.predict(
        held.images.astype("float32"), batch_size=PREDICT_BATCH, verbose=0
    ).reshape(-1)
    evaluation = evaluate_predictions(held.labels, probabilities, sources=sources)
    oof = pd.DataFrame(
        {
            "dataset_key": held.keys,
            "fold": fold,
            "label": held.labels.astype(int),
            "probability_covid": probabilities,
            "source": sources,
        }
    )
    write_csv(objects, f"{prefix}/oof.csv", oof)
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
    evaluations = [f.evaluation for f in folds]
    summary = summarise_folds(evaluations)
    report = folds_markdown(evaluations, title=f"Cross-validation ({len(folds)} folds by patient)")
    oof = pd.concat(read_csv(objects, f.oof_key) for f in folds)
    write_csv(objects, f"{run_prefix}/cross_validation/oof.csv", oof)
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
    training = {
        "ensemble_of": [f.model_key for f in folds],
        "cross_validation": {
            "folds": len(folds),
            "summary": summary,
            "per_fold": [f.evaluation.model_dump() for f in folds],
            "oof_key": f"{run_prefix}/cross_validation/oof.csv",
        },
        "train_accuracy": float(np.mean([f.train_accuracy for f in folds])),
        "val_accuracy": summary["accuracy"]["mean"],
        "seconds": sum(f.seconds for f in folds),
        "devices": folds[0].devices,
        "history": {},
    }
    training_key = f"{run_prefix}/training.json"
    objects.put_bytes(training_key, json.dumps(training, indent=2).encode())
    create_markdown_artifact(markdown=report, key=artifact_key("cross-validation"))
    auc = summary.get("auc", {})
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
