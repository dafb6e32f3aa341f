"""A Keras model's covid probabilities for a batch of images: what evaluation and
cross-validation score with (scoring runs the ONNX export instead, see :mod:`cxr_model.scoring`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

PREDICT_BATCH = 64


def _predict(model: keras.Model, images: np.ndarray, batch_size: int):
    return model.predict(np.asarray(images, dtype="float32"), batch_size=batch_size, verbose=0)


def predict_probabilities(
    model: keras.Model, images: np.ndarray, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """The covid probability of each image (n,), in the order of ``images`` (n, size, size, 3)."""
    return np.asarray(_predict(model, images, batch_size)).reshape(-1)


def predict_with_features(
    network: keras.Model, images: np.ndarray, batch_size: int = PREDICT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (n,) and penultimate features (n, d) from one pass of a two-output network
    (:func:`cxr_model.ood.with_features`)."""
    probabilities, features = _predict(network, images, batch_size)
    return np.asarray(probabilities).reshape(-1), np.asarray(features)
