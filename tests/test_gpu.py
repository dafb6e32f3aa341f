"""Training uses the GPU when TensorFlow sees one (skipped on machines without one)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cxr_model.data import SplitArrays
from cxr_model.train import TrainParams, train_model

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="TensorFlow sees no GPU")
def test_training_runs_on_the_gpu(tmp_path):
    rng = np.random.default_rng(0)
    arrays = SplitArrays(
        rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8),
        (np.arange(16) % 2).astype("float32"),
        [],
    )
    result = train_model(
        arrays, arrays, TrainParams(image_size=32, epochs=1, batch_size=8), tmp_path
    )
    assert any("GPU" in device for device in result.devices)
    assert result.model_path.exists()
