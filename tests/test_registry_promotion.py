"""The retrain flow's last steps against a real store: the champion re-evaluated, the new model
registered and gated (``evaluate_champion`` → ``register_model``).

A champion that exists but cannot be loaded never lets a new model through as "first model", and a
registration retried after 503s on the alias move registers the model once.
"""

from __future__ import annotations

import json

import pytest
from prefect import flow
from s3_faults import s3_faults

from cxr_model.evaluate import Evaluation, ThresholdRule
from cxr_model.gate import GateDecision, GateSettings
from cxr_model.generalisation import Generalisation
from cxr_model.quality import QualityReport
from cxr_model.registry import CANDIDATE, CHAMPION, COMPLETE, Registry
from cxr_model.train import TrainParams
from tasks.common import store as task_store
from tasks.evaluate import evaluate_champion
from tasks.registry import register_model
from tasks.shared import DatasetRef, TrainedModel

pytestmark = pytest.mark.integration
CARD = dict(threshold=0.5, metrics={"accuracy": 0.9}, training={}, parameters={}, dataset_id="d0")
RUN = "runs/retrain/test"


def _evaluation() -> Evaluation:
    """Numbers that clear every minimum: with no champion this model would be promoted."""
    return Evaluation(
        n_images=100,
        n_covid=40,
        n_normal=60,
        threshold=0.5,
        accuracy=0.9,
        auc=0.95,
        sensitivity=0.9,
        specificity=0.9,
        confusion_matrix={"tp": 36, "fn": 4, "fp": 6, "tn": 54},
        threshold_rule="youden",
    )


def _staged(store) -> TrainedModel:
    """A trained model and what register_model reads beside it, staged as a run leaves them."""
    store.put_bytes(f"{RUN}/model/model.keras", b"the new model's bytes")
    store.put_bytes(f"{RUN}/model/training.json", json.dumps({"epochs": 1}).encode())
    store.put_bytes(
        f"{RUN}/quality/report.json",
        QualityReport(outcomes=[], total=2, accepted_keys=["a", "b"], rejected=[], docs_dir="")
        .model_dump_json()
        .encode(),
    )
    store.put_bytes(
        f"{RUN}/quality/accepted.csv",
        b"key,source,label,license\na,nih,normal,CC0\nb,nih,covid,CC0\n",
    )
    return TrainedModel(
        model_key=f"{RUN}/model/model.keras",
        training_key=f"{RUN}/model/training.json",
        params=TrainParams(),
        train_accuracy=0.9,
        val_accuracy=0.9,
        images_per_second=1.0,
        seconds=1.0,
        devices=["cpu"],
    )


DATASET = DatasetRef(dataset_id="d1", uri="s3://x/datasets/d1", split_key="unused", counts={})


def _retrain_tail(trained: TrainedModel, register=register_model):
    """The end of the retrain flow: the champion on the same data, then register and gate."""

    @flow(name="retrain-tail")
    def tail():
        champion = evaluate_champion(DATASET, ThresholdRule())
        return register(
            trained,
            _evaluation(),
            Generalisation(confounded=False),
            champion,
            GateSettings(),
            DATASET,
            f"{RUN}/quality/report.json",
            f"{RUN}/quality/accepted.csv",
            {},
        )

    return tail()


def _break_card(models: Registry) -> None:
    models.store.delete(f"{models.prefix}/versions/000001/card.json")


def _break_model(models: Registry) -> None:
    models.store.put_bytes(f"{models.prefix}/versions/000001/model.keras", b"swapped")


def _break_alias(models: Registry) -> None:
    models.store.put_bytes(f"{models.prefix}/aliases/champion.json", b'{"alias": "champion"}')


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        (_break_card, "version 1 is incomplete: no card"),
        (_break_model, "refusing to load a model that changed after registration"),
        (_break_alias, "aliases/champion.json: "),
    ],
    ids=["card deleted", "sha256 mismatch", "alias unreadable"],
)
def test_a_champion_that_cannot_be_loaded_blocks_promotion(
    prefect_harness, settings, store, tmp_path, breakage, named
):
    models = Registry(store, settings.model_name, settings.cache_dir)
    (tmp_path / "champion.keras").write_bytes(b"the champion's bytes")
    models.register(tmp_path / "champion.keras", **CARD)
    models.set_alias(CHAMPION, 1, reason="first model")
    alias_before = store.get_bytes(f"{models.prefix}/aliases/champion.json")
    breakage(models)
    alias_broken = store.get_bytes(f"{models.prefix}/aliases/champion.json")

    registered = _retrain_tail(_staged(store))

    assert (registered.version, registered.alias) == (2, CANDIDATE)
    assert "First model" not in registered.reason
    assert registered.reason.startswith("Not promoted: the champion")
    assert "cannot be loaded" in registered.reason and named in registered.reason
    assert "\n" not in registered.reason
    # the champion alias was not moved (nor rewritten)
    assert store.get_bytes(f"{models.prefix}/aliases/champion.json") == alias_broken
    if breakage is not _break_alias:
        assert alias_broken == alias_before
    gate = GateDecision.model_validate_json(
        store.get_bytes(f"{models.prefix}/versions/000002/gate.json")
    )
    assert not gate.promote and gate.champion_problem and named in gate.champion_problem


def test_a_registration_retried_after_503s_on_the_alias_move_registers_once(
    prefect_harness, settings, store
):
    models = Registry(store, settings.model_name, settings.cache_dir)
    quick_retries = register_model.with_options(retry_delay_seconds=0)
    client = task_store().client  # the client the tasks use
    with s3_faults(client, "PutObject", "/aliases/champion.json", unavailable=5) as faults:
        registered = _retrain_tail(_staged(store), register=quick_retries)
    assert faults.used_up
    assert (registered.version, registered.alias) == (1, CHAMPION)
    assert [row["status"] for row in models.describe()] == [COMPLETE]
    assert [m.version for m in models.alias(CHAMPION).history] == [1]
    assert store.exists(f"{models.prefix}/versions/000001/gate.json")
