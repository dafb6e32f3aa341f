"""Ensembles: the output is the mean of the members', and it saves and loads like any model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cxr_model.ensemble import average_ensemble
from cxr_model.model import build_model

SIZE = 32


def members(count: int) -> list[keras.Model]:
    keras.utils.set_random_seed(0)
    return [build_model("seed_cnn", SIZE) for _ in range(count)]


def pixels(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def test_ensemble_output_is_the_mean_of_its_members(tmp_path):
    models = members(3)
    x = pixels()
    each = np.stack([m.predict(x, verbose=0) for m in models])
    assert each.std(axis=0).max() > 1e-4  # the members really differ
    ensemble = average_ensemble(models)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), each.mean(axis=0), atol=1e-6)

    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), each.mean(axis=0), atol=1e-6)
    assert loaded.output.dtype == "float32" and loaded.output_shape == (None, 1)


def test_members_must_take_the_same_input():
    with pytest.raises(ValueError, match="different input shapes"):
        average_ensemble([build_model("seed_cnn", 32), build_model("seed_cnn", 48)])
    with pytest.raises(ValueError, match="at least one"):
        average_ensemble([])
