"""Cross-validation in the retrain flow: folds by patient, out-of-fold predictions, fold metrics,
and the fold models' average registered (and scorable) as one model."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from cxr_model.gate import GateSettings
from cxr_model.registry import Registry
from cxr_model.sample import SampleSpec, generate_sample
from cxr_model.split import TRAIN
from cxr_model.train import TrainParams

pytestmark = pytest.mark.integration
FOLDS = 2


def test_retrain_with_cross_validation_registers_the_fold_ensemble(
    prefect_harness, settings, store, tmp_path
):
    from flows.retrain import RetrainParams, retrain

    sample = generate_sample(
        tmp_path / "sample",
        SampleSpec(
            patients_per_class=8,
            images_per_patient=2,
            image_size=64,
            inbox_images=0,
            include_bad_files=False,
        ),
    )
    result = retrain(
        RetrainParams(
            sources=[f"folder:{sample.train_dir}"],
            training=TrainParams(image_size=32, epochs=1, batch_size=8),
            cv_folds=FOLDS,
            gate=GateSettings(min_auc=0.0, min_sensitivity=0.0),
        )
    )
    split = pd.read_csv(io.BytesIO(store.get_bytes(result.dataset.split_key)), dtype=str)
    train_rows = split[split["split"] == TRAIN]

    training = json.loads(store.get_bytes(result.trained.training_key))
    cv = training["cross_validation"]
    assert cv["folds"] == FOLDS and len(cv["per_fold"]) == FOLDS
    assert cv["summary"]["accuracy"]["n"] == FOLDS
    assert 0.0 <= cv["summary"]["accuracy"]["mean"] <= 1.0

    # every Train image is predicted out of fold exactly once; a patient sits in one fold only
    oof = pd.read_csv(io.BytesIO(store.get_bytes(cv["oof_key"])), dtype={"dataset_key": str})
    assert sorted(oof["dataset_key"]) == sorted(train_rows["dataset_key"])
    patients = oof.merge(train_rows[["dataset_key", "patient_id"]], on="dataset_key")
    assert (patients.groupby("patient_id")["fold"].nunique() == 1).all()
    assert set(oof["fold"]) == set(range(FOLDS))
    assert oof["probability_covid"].between(0, 1).all()

    # the registered model is the average of the fold models, loadable like any other
    models = Registry(store, settings.model_name, settings.cache_dir)
    model, card = models.load(result.registered.version)
    assert [layer.name for layer in model.layers if layer.name.startswith("member_")] == [
        f"member_{n}" for n in range(FOLDS)
    ]
    assert card.training["ensemble_of"] and len(card.training["ensemble_of"]) == FOLDS
    assert result.evaluation.n_images == int((split["split"] == "Val").sum())
