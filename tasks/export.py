"""Export: the trained model as ONNX, so that scoring runs without TensorFlow."""

from __future__ import annotations

from prefect import task

from cxr_model.inference import INFERENCE_FILE, export_onnx
from tasks.common import TRANSIENT_RETRIES, say, store
from tasks.shared import ExportedModel, staged_model

MEGABYTE = 1e6  # as the model card counts


@task(name="export-model", **TRANSIENT_RETRIES)
def export_model(model_key: str, image_size: int, run_prefix: str) -> ExportedModel:
    """Export the staged model for ONNX Runtime and stage it beside the Keras file; the export is
    refused when it scores differently from Keras (:func:`cxr_model.inference.export_onnx`)."""
    exported = export_onnx(staged_model(model_key), image_size)
    key = f"{run_prefix}/{INFERENCE_FILE}"
    store().put_bytes(key, exported.data)
    artifact = exported.artifact
    say(
        f"exported for ONNX Runtime: {artifact.bytes / MEGABYTE:.1f} MB, outputs "
        f"{', '.join(artifact.outputs)}; probabilities within {artifact.parity_max_abs_diff:.1e} "
        f"of Keras on {artifact.parity_images} check images"
    )
    return ExportedModel(key=key, artifact=artifact)
