"""The library side of cross-validation (cxr_model.crossval): patient-grouped fold arrays, the
out-of-fold table and the ensemble's training record, without a store or Prefect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_model.crossval import (
    FoldModel,
    ensemble_training_record,
    fold_arrays,
    oof_table,
    subset,
)
from cxr_model.data import SplitArrays
from cxr_model.evaluate import evaluate_predictions

FOLDS = 3
SEED = 7


@pytest.fixture
def split_rows() -> pd.DataFrame:
    """Six patients per label, two images each, from two sources; one image without a patient."""
    rows = []
    for label in ("covid", "normal"):
        for patient in range(6):
            for image in range(2):
                rows.append(
                    dict(
                        dataset_key=f"{label}-{patient}-{image}",
                        patient_id=f"{label}-p{patient}",
                        label=label,
                        sha256=f"{label}{patient}{image}",
                        source=f"source-{patient % 2}",
                        split="Train",
                    )
                )
    rows.append(
        dict(
            dataset_key="loose",
            patient_id="",
            label="normal",
            sha256="loose",
            source="source-0",
            split="Train",
        )
    )
    return pd.DataFrame(rows)


def train_arrays(rows: pd.DataFrame) -> SplitArrays:
    """Arrays in an order unlike the manifest's, each image's pixels holding its row number."""
    order = rows.sample(frac=1, random_state=1)
    images = np.stack([np.full((2, 2, 3), n, dtype=np.uint8) for n in range(len(order))])
    labels = (order["label"] == "covid").to_numpy(dtype="float32")
    return SplitArrays(images, labels, list(order["dataset_key"]))


def test_fold_arrays_hold_out_whole_patients_and_keep_images_with_their_keys(split_rows):
    train = train_arrays(split_rows)
    by_key = dict(zip(train.keys, range(len(train)), strict=True))
    patient = split_rows.set_index("dataset_key")["patient_id"]
    held_everywhere: list[str] = []
    for fold in range(FOLDS):
        kept, held, sources = fold_arrays(train, split_rows, fold, FOLDS, SEED)

        assert sorted(kept.keys + held.keys) == sorted(train.keys)
        assert not set(patient[kept.keys].replace("", np.nan).dropna()) & set(
            patient[held.keys].replace("", np.nan).dropna()
        )
        for part in (kept, held):  # each image still carries its own pixels and label
            rows = [by_key[k] for k in part.keys]
            assert (part.images[:, 0, 0, 0] == train.images[rows, 0, 0, 0]).all()
            assert (part.labels == train.labels[rows]).all()
        assert sources == list(split_rows.set_index("dataset_key").loc[held.keys, "source"])
        assert set(held.labels) == {0.0, 1.0}  # stratified: both labels in every fold
        held_everywhere += held.keys
    assert sorted(held_everywhere) == sorted(train.keys)  # each image held out exactly once


def test_fold_arrays_are_the_same_for_the_same_seed(split_rows):
    train = train_arrays(split_rows)
    first = fold_arrays(train, split_rows, 0, FOLDS, SEED)[1].keys
    assert fold_arrays(train, split_rows, 0, FOLDS, SEED)[1].keys == first


def test_subset_keeps_the_masked_rows_in_order():
    arrays = SplitArrays(np.arange(4).reshape(4, 1), np.array([1, 0, 1, 0.0]), ["a", "b", "c", "d"])
    picked = subset(arrays, np.array([True, False, False, True]))
    assert picked.keys == ["a", "d"]
    assert picked.images.reshape(-1).tolist() == [0, 3]
    assert picked.labels.tolist() == [1.0, 0.0]


def test_oof_table_has_a_row_per_held_out_image():
    held = SplitArrays(np.zeros((2, 1)), np.array([1.0, 0.0], dtype="float32"), ["k1", "k2"])
    table = oof_table(held, 2, np.array([0.9, 0.2]), ["s1", "s2"])
    assert table.to_dict("records") == [
        dict(dataset_key="k1", fold=2, label=1, probability_covid=0.9, source="s1"),
        dict(dataset_key="k2", fold=2, label=0, probability_covid=0.2, source="s2"),
    ]


def fold_model(fold: int, probabilities: list[float], train_accuracy: float) -> FoldModel:
    evaluation = evaluate_predictions(np.array([1, 1, 0, 0]), np.array(probabilities))
    return FoldModel(
        fold=fold,
        folds=2,
        model_key=f"runs/r/folds/{fold}/model.keras",
        oof_key=f"runs/r/folds/{fold}/oof.csv",
        evaluation=evaluation,
        train_accuracy=train_accuracy,
        seconds=10.0 + fold,
        images_per_second=5.0,
        devices=["CPU:0"],
    )


def test_ensemble_training_record_summarises_the_folds():
    folds = [fold_model(0, [0.9, 0.8, 0.1, 0.2], 0.8), fold_model(1, [0.9, 0.4, 0.6, 0.2], 0.6)]

    record = ensemble_training_record(folds, "runs/r/cross_validation/oof.csv")

    assert record["ensemble_of"] == [f.model_key for f in folds]
    cv = record["cross_validation"]
    assert cv["folds"] == 2 and cv["oof_key"] == "runs/r/cross_validation/oof.csv"
    assert cv["per_fold"] == [f.evaluation.model_dump() for f in folds]
    accuracies = [f.evaluation.accuracy for f in folds]
    assert cv["summary"]["accuracy"]["n"] == 2
    assert record["val_accuracy"] == pytest.approx(np.mean(accuracies))
    assert record["train_accuracy"] == pytest.approx(0.7)
    assert record["seconds"] == 21.0
    assert record["devices"] == ["CPU:0"] and record["history"] == {}
