"""Training: history per epoch, a saved classifier without optimizer state, seeded repeatability."""

from __future__ import annotations

import io
import zipfile

import h5py
import keras
import numpy as np
import pytest

from cxr_model.data import SplitArrays
from cxr_model.train import TrainParams, train_model


@pytest.fixture(scope="module")
def arrays() -> SplitArrays:
    """Bright-centred vs dark-centred images: learnable in a couple of epochs at 32 px."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (48, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(48) % 2).astype("float32")
    images[labels == 1, 8:24, 8:24, :] += 150
    return SplitArrays(images, labels, [str(i) for i in range(48)])


def test_training_records_history_and_saves_an_uncompiled_classifier(arrays, tmp_path):
    params = TrainParams(image_size=32, epochs=2, batch_size=16, seed=3)
    result = train_model(arrays, arrays, params, tmp_path)
    assert set(result.history) >= {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"}
    assert all(len(values) == 2 for values in result.history.values())
    assert result.train_accuracy == result.history["accuracy"][-1]
    assert result.images_per_second > 0 and result.devices

    with zipfile.ZipFile(result.model_path) as archive:
        assert '"compile_config": {}' in archive.read("config.json").decode()  # never compiled
        with h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
            assert "optimizer" not in weights.keys()  # no optimizer state saved
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    assert getattr(model, "optimizer", None) is None
    assert [layer.name for layer in model.layers if "random" in layer.name] == []  # no augmentation
    probabilities = model.predict(arrays.images.astype("float32"), verbose=0)
    assert probabilities.shape == (48, 1)


def test_same_data_and_seed_give_the_same_metrics(arrays, tmp_path):
    params = TrainParams(image_size=32, epochs=1, batch_size=16, seed=11)
    first = train_model(arrays, arrays, params, tmp_path / "a")
    second = train_model(arrays, arrays, params, tmp_path / "b")
    assert first.history["loss"] == pytest.approx(second.history["loss"], rel=1e-4)
    assert first.val_accuracy == pytest.approx(second.val_accuracy)
