"""Train a classifier on a materialised dataset and save it for the registry.

Training runs the classifier behind the augmentation block; the saved model is the classifier
alone, uncompiled, so it carries the trained weights and no optimizer state or augmentation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
from pydantic import BaseModel, Field

from cxr_model.data import SplitArrays, evaluation_batches, training_batches
from cxr_model.model import build_model, compile_for_training, with_augmentation


class TrainParams(BaseModel):
    """Training settings; the defaults are the study's."""

    architecture: str = Field(default="seed_cnn", description="Model architecture.")
    image_size: int = Field(default=224, ge=32, le=1024, description="Square input size in pixels.")
    epochs: int = Field(default=6, ge=1, le=500, description="Passes over the training split.")
    batch_size: int = Field(default=32, ge=1, le=1024, description="Images per training step.")
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam learning rate.")
    seed: int = Field(default=42, description="Seed for weights, shuffling and augmentation.")


@dataclass(frozen=True)
class TrainResult:
    """What training produced: the saved model file and how training went."""

    model_path: Path
    history: dict[str, list[float]]
    train_accuracy: float
    val_accuracy: float
    train_images: int
    seconds: float
    images_per_second: float
    devices: list[str] = field(default_factory=list)


def visible_devices() -> list[str]:
    """Accelerators TensorFlow can use, or ``["CPU"]`` when there are none."""
    gpus = tf.config.list_physical_devices("GPU")
    return [gpu.name for gpu in gpus] or ["CPU"]


def train_model(
    train: SplitArrays, val: SplitArrays, params: TrainParams, out_dir: Path
) -> TrainResult:
    """Fit the architecture on ``train`` (validating on ``val`` each epoch) and save it."""
    keras.utils.set_random_seed(params.seed)
    classifier = build_model(params.architecture, params.image_size)
    trainer = compile_for_training(with_augmentation(classifier, params.seed), params.learning_rate)
    started = time.perf_counter()
    fitted = trainer.fit(
        training_batches(train, params.batch_size, params.seed),
        validation_data=evaluation_batches(val, params.batch_size),
        epochs=params.epochs,
        shuffle=False,  # the tf.data pipeline shuffles (seeded) every epoch
        verbose=0,
    )
    seconds = time.perf_counter() - started
    history = {name: [float(v) for v in values] for name, values in fitted.history.items()}
    model_path = out_dir / "model.keras"
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save(model_path)
    return TrainResult(
        model_path=model_path,
        history=history,
        train_accuracy=history["accuracy"][-1],
        val_accuracy=history["val_accuracy"][-1],
        train_images=len(train),
        seconds=seconds,
        images_per_second=len(train) * params.epochs / seconds,
        devices=visible_devices(),
    )


def history_frame(history: dict[str, list[float]]) -> pd.DataFrame:
    """Per-epoch loss/accuracy/AUC as a table (epoch numbers from 1)."""
    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame
