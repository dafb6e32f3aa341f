"""Cross-validation's library side: a dataset's Train arrays cut into patient-grouped folds, a
fold's out-of-fold predictions table, and the training record of the fold models' ensemble.

The Prefect tasks (:mod:`tasks.crossval`) train one model per fold and store what these build.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from cxr_model.data import SplitArrays
from cxr_model.evaluate import Evaluation, summarise_folds
from cxr_model.split import patient_folds


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


def subset(arrays: SplitArrays, keep: np.ndarray) -> SplitArrays:
    """The images of ``arrays`` where the boolean mask ``keep`` is true, in their order."""
    return SplitArrays(
        arrays.images[keep], arrays.labels[keep], [str(k) for k in np.asarray(arrays.keys)[keep]]
    )


def fold_arrays(
    train: SplitArrays, split_rows: pd.DataFrame, fold: int, folds: int, seed: int
) -> tuple[SplitArrays, SplitArrays, list[str]]:
    """Train images outside ``fold``, the images in it, and the held-out images' sources.

    ``split_rows`` is the split manifest (``dataset_key``, ``patient_id``, ``label``, ``source``,
    ``sha256``); folds are drawn by patient (:func:`cxr_model.split.patient_folds`).
    """
    rows = split_rows.set_index("dataset_key").loc[train.keys]
    assignment = patient_folds(rows.reset_index(), folds, seed).to_numpy()
    held = assignment == fold
    sources = [str(s) for s in rows["source"].to_numpy()[held]]
    return subset(train, ~held), subset(train, held), sources


def oof_table(
    held: SplitArrays, fold: int, probabilities: np.ndarray, sources: list[str]
) -> pd.DataFrame:
    """One fold's out-of-fold predictions: a row per held-out image."""
    return pd.DataFrame(
        {
            "dataset_key": held.keys,
            "fold": fold,
            "label": held.labels.astype(int),
            "probability_covid": probabilities,
            "source": sources,
        }
    )


def ensemble_training_record(folds: list[FoldModel], oof_key: str) -> dict:
    """The ``training.json`` of the fold models' ensemble: its members, the cross-validation
    metrics (per fold, mean ± sd) and where the out-of-fold predictions are."""
    summary = summarise_folds([f.evaluation for f in folds])
    return {
        "ensemble_of": [f.model_key for f in folds],
        "cross_validation": {
            "folds": len(folds),
            "summary": summary,
            "per_fold": [f.evaluation.model_dump() for f in folds],
            "oof_key": oof_key,
        },
        "train_accuracy": float(np.mean([f.train_accuracy for f in folds])),
        "val_accuracy": summary["accuracy"]["mean"],
        "seconds": sum(f.seconds for f in folds),
        "devices": folds[0].devices,
        "history": {},
    }
