"""The ONNX export of a registered version scores real x-rays as its Keras model does.

Each architecture, and an ensemble of fold models, is exported with
:func:`cxr_model.inference.export_onnx` and both are run on the same real x-rays from
``../shared``: probabilities within 1e-4, labels identical, and the penultimate features (the OOD
check's input) within 1e-4 of Keras' relative to their scale. A registered export is verified
against its card like ``model.keras``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from helpers import SCORING_CARD

from cxr_model import inference
from cxr_model.ensemble import average_ensemble
from cxr_model.images import to_model_input
from cxr_model.inference import INFERENCE_FILE, ExportError, OnnxModel, export_onnx
from cxr_model.model import ARCHITECTURES, build_model
from cxr_model.ood import with_features
from cxr_model.registry import Registry, RegistryError

SIZE = 64
THRESHOLD = 0.5
TOLERANCE = 1e-4
IMAGES_PER_SOURCE = 4


@pytest.fixture(scope="module")
def xrays(real_data) -> np.ndarray:
    """A few real x-rays of each source and label, as model input."""
    manifest = pd.read_csv(real_data / "manifest.csv")
    picked = manifest.groupby(["source", "label"]).head(IMAGES_PER_SOURCE // 2)
    pixels = [
        to_model_input((real_data / name).read_bytes(), SIZE, name=name) for name in picked["file"]
    ]
    return np.stack(pixels).astype(np.float32)


def assert_scores_alike(model, xrays: np.ndarray) -> inference.Export:
    exported = export_onnx(model, SIZE)
    onnx = OnnxModel(exported.data)
    probabilities, features = onnx.run(xrays)
    if features is None:
        expected = np.asarray(model.predict_on_batch(xrays)).reshape(-1)
    else:
        expected, expected_features = (np.asarray(a) for a in with_features(model)(xrays))
        expected = expected.reshape(-1)
        scale = max(float(np.abs(expected_features).max()), 1.0)
        assert np.abs(features - expected_features).max() / scale < TOLERANCE
    assert probabilities.shape == (len(xrays),)
    assert np.abs(probabilities - expected).max() < TOLERANCE
    assert ((probabilities >= THRESHOLD) == (expected >= THRESHOLD)).all()
    assert exported.artifact.parity_max_abs_diff < TOLERANCE
    assert exported.artifact.sha256 == hashlib.sha256(exported.data).hexdigest()
    return exported


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_each_architecture_scores_real_xrays_alike_in_onnx_runtime(architecture, xrays):
    exported = assert_scores_alike(build_model(architecture, SIZE), xrays)
    assert OnnxModel(exported.data).outputs == ["probability", "features"]


@pytest.mark.slow
def test_an_ensemble_of_folds_scores_real_xrays_alike_in_onnx_runtime(xrays):
    folds = [build_model("seed_cnn", SIZE) for _ in range(3)]
    exported = assert_scores_alike(average_ensemble(folds), xrays)
    assert exported.artifact.outputs == ["probability"]  # an ensemble has no OOD check


@pytest.mark.slow
def test_the_export_carries_its_input_contract():
    exported = export_onnx(build_model("compact_cnn", 32), 32)
    onnx = OnnxModel(exported.data)
    properties = onnx.session.get_modelmeta().custom_metadata_map
    assert properties[inference.IMAGE_SIZE_KEY] == "32"
    assert "0-255" in properties[inference.INPUT_KEY]
    assert onnx.session.get_inputs()[0].shape[1:] == [32, 32, 3]
    artifact = exported.artifact
    assert (artifact.image_size, artifact.bytes, artifact.runtime) == (
        32,
        len(exported.data),
        "onnxruntime",
    )
    assert set(artifact.exported_with) == {"keras", "tensorflow", "tf2onnx", "onnx"}


@pytest.mark.slow
def test_an_export_that_scores_differently_is_refused(monkeypatch):
    true_run = OnnxModel.run

    def off_by_a_little(self, pixels):
        probabilities, features = true_run(self, pixels)
        return probabilities + 1e-3, features

    monkeypatch.setattr(OnnxModel, "run", off_by_a_little)
    with pytest.raises(ExportError, match=r"up to 1\.00e-03 away from Keras"):
        export_onnx(build_model("compact_cnn", 32), 32)


@pytest.mark.slow
def test_a_registered_export_is_verified_against_its_card(settings, store, tmp_path):
    model = build_model("compact_cnn", 32)
    path = tmp_path / "model.keras"
    model.save(path)
    exported = export_onnx(model, 32)
    models = Registry(store, settings.model_name, settings.cache_dir)
    card = models.register(path, **SCORING_CARD, inference=exported.artifact.model_dump())
    with pytest.raises(RegistryError, match=f"{INFERENCE_FILE} is missing, but the card"):
        models.inference_file(card.version)
    models.attach(card.version, INFERENCE_FILE, exported.data)
    local, _ = models.inference_file(card.version)
    assert local.read_bytes() == exported.data

    key = f"{models.prefix}/versions/{card.version:06d}/{INFERENCE_FILE}"
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"another model")
    local.unlink()
    with pytest.raises(RegistryError, match="has sha256 .* but its card says"):
        models.inference_file(card.version)
    assert not local.exists()  # a file that failed its check is not kept


def test_a_version_registered_before_exports_has_no_inference_file(settings, store, tmp_path):
    path = tmp_path / "model.keras"
    build_model("compact_cnn", 32).save(path)
    models = Registry(store, settings.model_name, settings.cache_dir)
    card = models.register(
        path, threshold=0.5, metrics={}, training={}, parameters={}, dataset_id="d1"
    )
    assert models.inference_file(card.version) == (None, card)


def test_registering_with_its_export_records_and_attaches_it_once(settings, store, tmp_path):
    model = build_model("compact_cnn", 32)
    path = tmp_path / "model.keras"
    model.save(path)
    exported = export_onnx(model, 32)
    models = Registry(store, settings.model_name, settings.cache_dir)

    card = models.register(path, **SCORING_CARD, registration_id="run-1", export=exported)
    again = models.register(path, **SCORING_CARD, registration_id="run-1", export=exported)

    assert again.version == card.version  # a retried registration finishes the same version
    assert card.inference == exported.artifact.model_dump()
    local, _ = models.inference_file(card.version)
    assert local.read_bytes() == exported.data
