"""cxr_model.predict: the covid probabilities evaluation and cross-validation score with."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cxr_model.ood import FEATURE_LAYER, with_features
from cxr_model.predict import predict_probabilities, predict_with_features

SIZE = 4
FEATURES = 3


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    hidden = keras.layers.Dense(FEATURES, activation="relu")(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid", name=FEATURE_LAYER)(hidden)
    return keras.Model(inputs, outputs)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)


def test_one_probability_per_image_whatever_the_batch(model, images):
    expected = np.asarray(model(images.astype("float32"))).reshape(-1)

    probabilities = predict_probabilities(model, images)

    assert probabilities.shape == (5,)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    np.testing.assert_allclose(
        predict_probabilities(model, images, batch_size=2), expected, rtol=1e-5
    )


def test_features_come_with_the_same_probabilities(model, images):
    probabilities, features = predict_with_features(with_features(model), images)

    np.testing.assert_allclose(probabilities, predict_probabilities(model, images), rtol=1e-5)
    assert features.shape == (5, FEATURES)
