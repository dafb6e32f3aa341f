"""Model runners for scoring: a Keras model or an ONNX export, in padded batches, with OOD scores.

A :data:`Predict` takes a stack of decoded images and gives their covid probabilities (and OOD
scores, for a version with an out-of-distribution check). Batches are padded to a power of two,
so the runtime sees few distinct shapes, and taken one at a time, so concurrent chunks share the
model while their reading and decoding go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cxr_model.ood import OodDetector, with_features

if TYPE_CHECKING:
    import keras

    from cxr_model.inference import OnnxModel

PREDICT_BATCH = 32  # a power of two (see padded_size)
# ONNX Runtime's memory grows with the batch (its arena holds the activations): small batches
# keep a scoring worker's peak low at a modest cost in speed (BENCHMARKS.md, issue 14).
ONNX_BATCH = 4

Predict = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
"""Pixels ``(n, size, size, 3)`` → covid probabilities ``(n,)``, or ``(probabilities, OOD
scores)`` for a model with an out-of-distribution check (:mod:`cxr_model.ood`; above 1.0 is out)."""

RunBatch = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]
"""One batch of pixels → covid probabilities ``(n,)`` and the penultimate features ``(n, k)``
(None for a model run without them)."""


def batch_predictor(
    run: RunBatch, ood: OodDetector | None = None, batch_size: int = PREDICT_BATCH
) -> Predict:
    """:data:`Predict` over a model's ``run``: batches of at most ``batch_size``, one batch at a
    time. With ``ood`` (the version's fitted out-of-distribution check) ``run`` also gives the
    penultimate features, and each image gets its OOD score with its probability.

    A last, smaller batch is padded to :func:`padded_size` rather than to a whole batch, so a
    run of 100 images predicts 100, not 128. The runtime already spreads one batch over every
    core, so concurrent chunks take turns at the model batch by batch, while their reading and
    decoding go on.
    """
    lock = threading.Lock()

    def predict(pixels: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        probabilities, scores = [np.empty(0, np.float32)], [np.empty(0)]
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size].astype(np.float32, copy=False)
            size = padded_size(len(batch), batch_size)
            padding = np.zeros((size - len(batch), *batch.shape[1:]), np.float32)
            whole = np.concatenate([batch, padding]) if len(padding) else batch
            with lock:
                predicted, features = run(whole)
            if ood is not None:
                if features is None:
                    raise ValueError(
                        "the model gives no features for its out-of-distribution check"
                    )
                scores.append(ood.scores(np.asarray(features)[: len(batch)], batch))
            probabilities.append(np.asarray(predicted).reshape(-1)[: len(batch)])
        if ood is None:
            return np.concatenate(probabilities)
        return np.concatenate(probabilities), np.concatenate(scores)

    return predict


def keras_predictor(model: keras.Model, ood: OodDetector | None = None) -> Predict:
    """:func:`batch_predictor` for a Keras model (versions registered before ONNX exports, and
    models being trained): ``predict_on_batch``, which skips what ``model.predict`` sets up on
    every call (a data adapter, an iterator, callbacks)."""
    network = model if ood is None else with_features(model)

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        predicted = network.predict_on_batch(pixels)
        if ood is None:
            return np.asarray(predicted), None
        return np.asarray(predicted[0]), np.asarray(predicted[1])

    return batch_predictor(run, ood)


def onnx_predictor(model: OnnxModel, ood: OodDetector | None = None) -> Predict:
    """:func:`batch_predictor` for a version's ONNX export in ONNX Runtime (no TensorFlow), in
    batches of :data:`ONNX_BATCH`."""
    return batch_predictor(model.run, ood, ONNX_BATCH)


def padded_size(count: int, batch_size: int = PREDICT_BATCH) -> int:
    """The batch size ``count`` images (1 to ``batch_size``) are predicted as: the next power of
    two. Few distinct shapes mean few traces of the predict function (TensorFlow generalises
    after the second; JAX would compile each), and little padding."""
    return min(batch_size, 1 << (count - 1).bit_length())
