"""On the real x-rays, where the source gives the label away, cxr says so and does not promote.

The whole ../shared/data/cxr-real manifest goes through `cxr train` (the console script) at a tiny
size: the shortcut audit flags the data, actualmed (the one hospital with both classes) is held out
automatically, the internal and honest estimates are printed side by side, and the model stays a
candidate with the reason. Then the same run with ``gate.allow_confounded`` promotes it and says so
on the card, in the alias history and in the run's state message.
"""

from __future__ import annotations

import json

import pytest

from cxr_model.gate import GateSettings
from cxr_model.manifest import read_csv
from cxr_model.registry import CHAMPION, Registry
from cxr_model.train import TrainParams
from tests.test_pipeline import _cxr

pytestmark = pytest.mark.integration


def _prefix(models: Registry, store, version: int) -> str:
    return models.version_uri(version).split(f"s3://{store.bucket}/")[1].rstrip("/")


def test_confounded_real_data_are_flagged_held_out_and_not_promoted(
    prefect_harness, settings, store, real_data
):
    from flows.retrain import RetrainParams, retrain

    manifest = f"manifest:{real_data / 'manifest.csv'}"
    out = _cxr("train", manifest, "--image-size", "32", "--epochs", "1", "--seed", "3")
    assert "WARNING: source separates the labels" in out
    assert "held-out sources:    actualmed" in out
    assert "internal (Val):      AUC" in out and "chosen on Val" in out
    assert "honest estimate:     held-out-source AUC (actualmed)" in out
    assert "within actualmed:" in out and "26 covid, 18 normal, Holdout" in out
    assert "both at threshold 0.5" in out
    assert "as CANDIDATE" in out and "Not promoted" in out

    models = Registry(store, settings.model_name, settings.cache_dir)
    card = models.card(1)
    found = card.generalisation
    assert found["confounded"] and found["held_out_sources"] == ["actualmed"]
    assert (found["held_out"]["n_covid"], found["held_out"]["n_normal"]) == (26, 18)
    assert found["held_out"]["threshold"] == card.threshold  # chosen on Val, applied unchanged
    assert models.aliases() == {"candidate": 1}
    text = store.get_bytes(f"{_prefix(models, store, 1)}/model_card.md").decode()
    assert "## Internal vs honest estimates" in text
    assert "**Warning: the shortcut audit flagged the training data" in text

    params = RetrainParams(
        sources=[manifest],
        training=TrainParams(image_size=32, epochs=1, seed=3),
        gate=GateSettings(min_auc=0.0, min_sensitivity=0.0, allow_confounded=True),
    )
    state = retrain(params, return_state=True)
    result = state.result()
    assert result.ingest.stored_now == 0
    split = read_csv(store, result.dataset.split_key)
    assert set(split[split["source"] == "actualmed"]["split"]) == {"Holdout"}
    assert "Holdout" not in set(split[split["source"] != "actualmed"]["split"])
    assert (result.registered.version, result.registered.alias) == (2, CHAMPION)
    assert result.registered.overridden
    assert "Allowed by gate.allow_confounded" in result.registered.reason
    assert state.message.startswith("cxr-covid v2 registered as champion")
    assert "honest estimate: held-out-source AUC (actualmed)" in state.message
    history = models.alias(CHAMPION).history
    assert "allow_confounded" in history[-1].reason
    gate = json.loads(store.get_bytes(f"{_prefix(models, store, 2)}/gate.json"))
    assert gate["overridden"] and gate["confounded"]
