"""Training uses the GPU when TensorFlow sees one, in mixed precision, and still saves a float32
classifier (skipped on machines without a GPU)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_model.data import SplitArrays
from cxr_model.train import TrainParams, choose_hardware, train_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="TensorFlow sees no GPU"),
]


def test_training_runs_on_the_gpu_in_mixed_precision(tmp_path):
    rng = np.random.default_rng(0)
    arrays = SplitArrays(
        rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8),
        (np.arange(16) % 2).astype("float32"),
        [str(i) for i in range(16)],
    )
    params = TrainParams(image_size=32, epochs=1, batch_size=8)
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert choose_hardware(params).replicas == gpus  # every GPU, mirrored when several

    result = train_model(arrays, arrays, params, tmp_path)
    assert all("GPU" in device for device in result.devices) and result.mixed_precision
    model = keras.saving.load_model(result.model_path, compile=False, safe_mode=True)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert np.isfinite(model.predict(arrays.images, verbose=0)).all()
