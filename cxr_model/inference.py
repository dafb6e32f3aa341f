"""Scoring without TensorFlow: each registered version also stored as an ONNX model.

Training needs TensorFlow and Keras; scoring a folder should not have to carry them (a 1.8 GB
install and ~13 s of imports on 2 cores). At registration the Keras model is exported once to
ONNX (:func:`export_onnx`, Keras' exporter through tf2onnx) and stored beside ``model.keras`` as
:data:`INFERENCE_FILE`; its sha256 and contract are on the card (:class:`InferenceArtifact`), and
loading checks it like the Keras file. Scoring runs it with ONNX Runtime (:class:`OnnxModel`).

The contract is the Keras model's: input ``float32`` NHWC ``(batch, size, size, 3)``, RGB pixel
values 0–255 (the output of :func:`cxr_model.images.to_model_input`), each architecture's own
scaling inside the graph; output the covid probability, and, for a model with an
out-of-distribution check, the penultimate features as a second output (one pass, as
:func:`cxr_model.ood.with_features`). The output names are in the ONNX metadata
(:data:`OUTPUTS_KEY`) and on the card.

An export is checked before it is stored: the Keras model and ONNX Runtime score the same
pixels, and a probability that differs by more than :data:`PARITY_TOLERANCE` refuses the export.

This module imports neither TensorFlow nor Keras at import time; only :func:`export_onnx` does.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import keras

INFERENCE_FILE = "model.onnx"
RUNTIME = "onnxruntime"
OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 8
PARITY_SEED = 20261203
PROBABILITY, FEATURES = "probability", "features"
INPUT_NAME = "xray"
OUTPUTS_KEY = "cxr.outputs"
IMAGE_SIZE_KEY = "cxr.image_size"
INPUT_KEY = "cxr.input"
INPUT_CONTRACT = (
    "float32 NHWC (batch, size, size, 3), RGB pixel values 0-255; the model scales them itself"
)
EXPORTER_PACKAGES = ("keras", "tensorflow", "tf2onnx", "onnx")


class ExportError(RuntimeError):
    """A model that cannot be exported, or whose export scores differently from Keras."""


class InferenceArtifact(BaseModel):
    """What a model card says about its version's ONNX export (the file is :data:`INFERENCE_FILE`)."""

    file: str = INFERENCE_FILE
    sha256: str
    bytes: int
    runtime: str = RUNTIME
    opset: int = OPSET
    image_size: int
    input: str = INPUT_CONTRACT
    outputs: list[str] = Field(
        description="The graph's outputs in order: probability, and features for a version with "
        "an out-of-distribution check."
    )
    exported_with: dict[str, str] = Field(default_factory=dict)
    parity_max_abs_diff: float = Field(
        description="Largest difference of a probability between Keras and ONNX Runtime on the "
        "export's check images (refused above PARITY_TOLERANCE)."
    )
    parity_images: int


@dataclass(frozen=True)
class Export:
    """An exported model: the ONNX file's bytes and its card entry."""

    data: bytes
    artifact: InferenceArtifact


def check_pixels(image_size: int, count: int = PARITY_IMAGES) -> np.ndarray:
    """Deterministic check inputs: uniform noise, a black and a white image, and smooth ramps,
    all 0–255 (the values every export is compared with Keras on)."""
    rng = np.random.default_rng(PARITY_SEED)
    noise = rng.uniform(0, 255, (max(count - 3, 1), image_size, image_size, 3))
    ramp = np.broadcast_to(np.linspace(0, 255, image_size)[None, :, None], noise.shape[1:])
    flat = [np.zeros(noise.shape[1:]), np.full(noise.shape[1:], 255.0), ramp]
    return np.concatenate([noise, np.stack(flat)])[:count].astype(np.float32)


def export_onnx(model: keras.Model, image_size: int, pixels: np.ndarray | None = None) -> Export:
    """``model`` as ONNX for ONNX Runtime, with the penultimate features as a second output when
    it has an out-of-distribution head (:func:`cxr_model.ood.with_features`); checked against
    Keras on ``pixels`` (default :func:`check_pixels`). Raises :class:`ExportError`."""
    import keras
    import onnx

    from cxr_model.ood import has_feature_head, with_features

    outputs = [PROBABILITY, FEATURES] if has_feature_head(model) else [PROBABILITY]
    network = with_features(model) if len(outputs) == 2 else model
    signature = [
        keras.InputSpec(shape=(None, image_size, image_size, 3), dtype="float32", name=INPUT_NAME)
    ]
    with tempfile.TemporaryDirectory(prefix="cxr-export-") as folder:
        path = Path(folder) / INFERENCE_FILE
        try:
            with warnings.catch_warnings(), _statistics_as_constants(network):
                # tf2onnx on numpy 2: Keras patches it, numpy warns about the patched attribute
                warnings.simplefilter("ignore", FutureWarning)
                network.export(
                    str(path),
                    format="onnx",
                    verbose=False,
                    input_signature=signature,
                    opset_version=OPSET,
                )
            graph = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as one
            reason = " ".join(str(exc).split())[:300]
            raise ExportError(
                f"{model.name} cannot be exported to ONNX: {type(exc).__name__}: {reason}"
            ) from exc
    extra = [i.name for i in graph.graph.input if i.name != INPUT_NAME]
    if extra:
        raise ExportError(
            f"the ONNX export of {model.name} expects inputs besides {INPUT_NAME!r}: "
            f"{', '.join(extra)} (a constant the exporter did not freeze): not stored"
        )
    onnx.helper.set_model_props(
        graph,
        {
            OUTPUTS_KEY: ",".join(outputs),
            IMAGE_SIZE_KEY: str(image_size),
            INPUT_KEY: INPUT_CONTRACT,
        },
    )
    data = graph.SerializeToString()
    checked = check_pixels(image_size) if pixels is None else pixels.astype(np.float32)
    expected = network.predict_on_batch(checked)
    expected = np.asarray(expected[0] if len(outputs) == 2 else expected).reshape(-1)
    found, _ = OnnxModel(data).run(checked)
    difference = float(np.max(np.abs(found - expected)))
    if not difference <= PARITY_TOLERANCE:  # also refuses NaN
        raise ExportError(
            f"the ONNX export of {model.name} scores {len(checked)} check images up to "
            f"{difference:.2e} away from Keras (tolerance {PARITY_TOLERANCE:g}): not stored"
        )
    artifact = InferenceArtifact(
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        image_size=image_size,
        outputs=outputs,
        exported_with={name: metadata.version(name) for name in EXPORTER_PACKAGES},
        parity_max_abs_diff=difference,
        parity_images=len(checked),
    )
    return Export(data, artifact)


def _layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """``layer`` and every layer inside it, through nested models (a backbone)."""
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from _layers(inner)


@contextmanager
def _statistics_as_constants(model: keras.Model) -> Iterator[None]:
    """Normalization layers' statistics as numpy arrays while ``model`` is exported.

    Keras keeps a Normalization layer's mean and variance as eager tensors, which the traced
    function captures and tf2onnx leaves as extra graph inputs rather than constants (Keras 3.15,
    tf2onnx 1.17): the DenseNet, ResNet and EfficientNet exports could not run. As numpy arrays
    they are traced into the graph as constants. The layers get their tensors back afterwards.
    """
    import keras

    held = [
        (layer, layer.mean, layer.variance)
        for layer in _layers(model)
        if isinstance(layer, keras.layers.Normalization)
        and getattr(layer, "mean", None) is not None
    ]
    try:
        for layer, mean, variance in held:
            layer.mean, layer.variance = np.asarray(mean), np.asarray(variance)
        yield
    finally:
        for layer, mean, variance in held:
            layer.mean, layer.variance = mean, variance


class OnnxModel:
    """An exported model in an ONNX Runtime session: pixels in, probabilities (and features) out.

    One session uses every core for one batch (``intra_op`` threads), so callers run one batch at
    a time. ``source`` is the ONNX file or its bytes.
    """

    def __init__(self, source: bytes | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are not for users
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(
            source if isinstance(source, bytes) else str(source), options, providers=providers
        )
        properties = self.session.get_modelmeta().custom_metadata_map
        self.outputs = properties.get(OUTPUTS_KEY, PROBABILITY).split(",")
        self.input = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def has_features(self) -> bool:
        return FEATURES in self.outputs

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Covid probabilities ``(n,)`` of ``pixels`` ``(n, size, size, 3)``, and the penultimate
        features ``(n, k)`` when the model has them (else None)."""
        found = self.session.run(
            self.output_names, {self.input: np.ascontiguousarray(pixels, dtype=np.float32)}
        )
        named = dict(zip(self.outputs, found, strict=True))
        return named[PROBABILITY].reshape(-1), named.get(FEATURES)
