"""Train a classifier on a materialised dataset and save it for the registry.

Training runs the classifier behind the augmentation block; the saved model is the classifier
alone, uncompiled and in float32, so it carries the trained weights and no optimizer state,
augmentation or mixed-precision policy. Seeded (same data and seed → same metrics on CPU), with
optional early stopping (best weights restored) and an optional source-adversarial head whose
reversed gradient pushes the features to hide the source (``source_adversary``).

Its parts: where it runs (:mod:`cxr_model.hardware`), the images' loss weights
(:mod:`cxr_model.loss_weights`), and per-epoch checkpoints an interrupted run resumes from
(:mod:`cxr_model.checkpoints`); their names stay importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from pydantic import BaseModel, Field, field_validator

from cxr_model.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINTS_PREFIX,
    PARAMS_HASH_CHARS,
    Checkpoint,
    CheckpointCleanup,
    EpochCheckpoint,
    ResumableEarlyStopping,
    checkpoint_prefix,
    remove_old_checkpoints,
    restore,
)
from cxr_model.data import SplitArrays, evaluation_batches, is_grey, training_batches
from cxr_model.hardware import (
    FLOAT_POLICY,
    MIXED_POLICY,
    Hardware,
    choose_hardware,
    dtype_policy,
)
from cxr_model.images import Preprocessing
from cxr_model.loss_weights import (
    class_weights,
    image_weights,
    source_balanced_weights,
    source_indices,
)
from cxr_model.model import (
    ARCHITECTURES,
    UNKNOWN_SOURCE,
    build_model,
    compile_for_training,
    with_augmentation,
    with_source_adversary,
)
from cxr_model.storage import ObjectStore, parse_s3_uri

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINTS_PREFIX",
    "FLOAT_POLICY",
    "MIXED_POLICY",
    "PARAMS_HASH_CHARS",
    "Checkpoint",
    "CheckpointCleanup",
    "EpochCheckpoint",
    "EpochLog",
    "Hardware",
    "ResumableEarlyStopping",
    "TrainParams",
    "TrainResult",
    "checkpoint_prefix",
    "choose_hardware",
    "class_weights",
    "dtype_policy",
    "fetch_weights",
    "history_frame",
    "image_weights",
    "remove_old_checkpoints",
    "source_balanced_weights",
    "source_indices",
    "train_model",
    "training_summary",
]


class TrainParams(BaseModel):
    """Training settings; the defaults are the study's (6 epochs, no early stopping), except the
    two that leave-source-out evaluation on real x-rays showed to help a model learn the disease
    rather than the hospital: aspect-preserving padding with histogram equalisation, and
    source-balanced weights
    (BENCHMARKS.md, "Shortcut mitigation")."""

    architecture: str = Field(
        default="seed_cnn",
        description="Model architecture: seed_cnn (the study's), compact_cnn, densenet121, "
        "efficientnetb0 or resnet50.",
    )
    image_size: int = Field(default=224, ge=32, le=1024, description="Square input size in pixels.")
    preprocessing: Preprocessing = Field(
        default_factory=lambda: Preprocessing(resize="pad", equalize=True),
        description="How images are resized and normalised (recorded on the card; scoring "
        "applies the same). Default: histogram-equalised, padded to a square keeping the "
        "aspect ratio.",
    )
    epochs: int = Field(default=6, ge=1, le=500, description="Passes over the training split.")
    batch_size: int = Field(
        default=32, ge=1, le=1024, description="Images per training step, over all replicas."
    )
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam learning rate.")
    seed: int = Field(default=42, description="Seed for weights, shuffling and augmentation.")
    weights: str | None = Field(
        default=None,
        description="Initial weights: None (random), a local .h5/.weights.h5 file or an s3:// "
        "URI (a notop backbone file for Keras Applications architectures). Never downloaded "
        "from the internet.",
    )
    class_weight: Literal["balanced", "none"] = Field(
        default="balanced",
        description="Weight the loss so both classes count equally ('balanced', scikit-learn's "
        "compute_class_weight) or not ('none'). Training accuracy/AUC are then weighted too; "
        "validation metrics never are.",
    )
    patience: int | None = Field(
        default=None,
        ge=0,
        description="Early stopping: stop after this many epochs without improvement of "
        "`monitor` and keep the best epoch's weights. None or 0: off, so every epoch runs (the "
        "study's behaviour).",
    )
    monitor: Literal["val_loss", "val_auc"] = Field(
        default="val_loss", description="What early stopping watches (lower loss, higher AUC)."
    )
    mixed_precision: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="mixed_float16 compute with float32 weights and output; auto: on GPUs only.",
    )
    jit_compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="XLA compilation; auto: off. On TensorFlow Keras falls back to no XLA for "
        "the training model anyway (no XLA kernel for the augmentation's image transform).",
    )
    source_balance: bool = Field(
        default=True,
        description="Weight images so that each source counts equally within its label (on top "
        "of the class weights); with one source, or no sources given, it changes nothing.",
    )
    source_adversary: float = Field(
        default=0.0,
        ge=0,
        description="λ of a source-adversarial head behind a gradient reversal layer: the "
        "features are trained to hide which source an image came from. 0: no head. Needs the "
        "training images' sources; the saved model is the classifier alone.",
    )

    @property
    def needs_sources(self) -> bool:
        """Whether training needs each training image's source."""
        return self.source_balance or self.source_adversary > 0

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}")
        return name


@dataclass(frozen=True)
class TrainResult:
    """What training produced: the saved model file and how training went.

    ``history`` covers every epoch, resumed ones included; accuracies are the kept epoch's (the
    best one under early stopping, else the last). ``images_per_second`` counts the epochs this
    call ran (0 when a finished checkpoint left nothing to run).
    """

    model_path: Path
    history: dict[str, list[float]]
    train_accuracy: float
    val_accuracy: float
    train_images: int
    seconds: float
    images_per_second: float
    devices: list[str] = field(default_factory=list)
    replicas: int = 1
    mixed_precision: bool = False
    jit_compile: bool = False
    initial_epoch: int = 0
    kept_epoch: int = 0
    class_weights: dict[int, float] | None = None


def _required(sources: Sequence[str] | None, option: str) -> Sequence[str]:
    if sources is None:
        raise ValueError(f"{option} needs the training images' sources: pass sources=[...]")
    return sources


def _training_data(
    train: SplitArrays,
    weights: np.ndarray,
    source_index: np.ndarray | None,
    params: TrainParams,
    grey: bool,
) -> tf.data.Dataset:
    """(image, label, weight) batches; image is ``{"xray", "source"}`` for the adversary."""
    # training_batches shuffles (image, row) pairs; the row carries label, weight and source
    # so that they stay with their image
    index = np.full(len(train), UNKNOWN_SOURCE) if source_index is None else source_index
    rows = np.stack([train.labels, weights, index], axis=1).astype("float32")
    batches = training_batches(
        SplitArrays(train.images, rows, train.keys), params.batch_size, params.seed, grey
    )

    def unpack(images, row):
        inputs = images
        if source_index is not None:
            inputs = {"xray": images, "source": tf.cast(row[:, 2], tf.int32)}
        return inputs, row[:, 0], row[:, 1]

    return batches.map(unpack)


def _validation_data(val: SplitArrays, params: TrainParams, grey: bool) -> tf.data.Dataset:
    """Validation batches; for the adversary, with no source (it learns nothing from them)."""
    batches = evaluation_batches(val, params.batch_size, grey)
    if not params.source_adversary:
        return batches
    return batches.map(
        lambda images, labels: (
            {"xray": images, "source": tf.fill(tf.shape(labels), UNKNOWN_SOURCE)},
            labels,
        )
    )


def fetch_weights(store: ObjectStore, uri: str, folder: Path) -> Path:
    """Download an ``s3://bucket/key`` weights file into ``folder``; return the local path."""
    bucket, key = parse_s3_uri(uri)
    return store.in_bucket(bucket).download(key, folder / Path(key).name)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch to ``log`` (the run's log when Prefect wraps training): the epoch, its
    training and validation loss, accuracy and AUC, and the images per second it ran at."""

    def __init__(self, log: Callable[[str], None], images: int, epochs: int):
        super().__init__()
        self.log = log
        self.images = images
        self.epochs = epochs
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        logs = logs or {}

        def metrics(prefix: str) -> str:
            shown = [("loss", "loss"), ("accuracy", "accuracy"), ("auc", "AUC")]
            return ", ".join(
                f"{label} {float(logs[prefix + name]):.4f}"
                for name, label in shown
                if prefix + name in logs
            )

        line = f"epoch {epoch + 1}/{self.epochs}: {metrics('')}"
        if validation := metrics("val_"):
            line += f"; validation {validation}"
        rate = self.images / seconds if seconds > 0 else 0.0
        self.log(f"{line}; {rate:.1f} images/s ({seconds:.1f}s)")


def train_model(
    train: SplitArrays,
    val: SplitArrays,
    params: TrainParams,
    out_dir: Path,
    *,
    checkpoint: Checkpoint | None = None,
    devices: Sequence[str] | None = None,
    weights_file: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    sources: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fit the architecture on ``train`` (validating on ``val`` each epoch) and save it.

    ``checkpoint``: save state after every epoch and resume from the latest one when present.
    ``devices``: train on these TensorFlow devices instead of all GPUs (or the CPU).
    ``weights_file``: a local copy of ``params.weights`` (see :func:`fetch_weights`); without it
    ``params.weights`` must be a local path or None. ``callbacks`` run after the library's own.
    ``sources``: each training image's source, which ``source_balance`` and
    ``source_adversary`` need. ``progress``: called with one line per epoch (:class:`EpochLog`).
    """
    if sources is not None and len(sources) != len(train):
        raise ValueError(f"{len(sources)} sources for {len(train)} training images")
    source_index = None
    sources_seen: list[str] = []
    if params.source_adversary:
        sources_seen, source_index = source_indices(_required(sources, "source_adversary"))
    keras.utils.set_random_seed(params.seed)
    hardware = choose_hardware(params, devices)
    fingerprint = {
        "format": CHECKPOINT_FORMAT,
        "params": params.model_dump(mode="json"),
        "mixed_precision": hardware.mixed_precision,
    }
    state = checkpoint.latest() if checkpoint else None
    if state is not None and state.get("fingerprint") != fingerprint:
        state = None  # another run's or another precision's state: start afresh
    grey = is_grey(train.images) and is_grey(val.images)
    classifier, trainer = _build_trainer(
        params, hardware, weights_file or params.weights, grey, len(sources_seen)
    )
    with hardware.strategy.scope():
        best_weights = restore(trainer, checkpoint, state, out_dir) if state else []
    initial_epoch = state["epochs_done"] if state else 0
    history = {name: list(values) for name, values in (state or {}).get("history", {}).items()}
    early_stopping = None
    if params.patience:
        resumed = state["early_stopping"] if state else None
        early_stopping = ResumableEarlyStopping(
            params.monitor, params.patience, resumed, best_weights or None
        )
    own: list[keras.callbacks.Callback] = [early_stopping] if early_stopping else []
    if progress is not None:
        own.append(EpochLog(progress, len(train), params.epochs))
    if checkpoint is not None:
        slot = 1 - state["slot"] if state else 0
        own.append(EpochCheckpoint(checkpoint, fingerprint, history, early_stopping, out_dir, slot))
    weights_by_class = class_weights(train.labels, params.class_weight)
    weights = image_weights(train.labels, sources, params)
    started = time.perf_counter()
    if state and (state["stopped"] or initial_epoch >= params.epochs):
        _finish_without_fitting(trainer, early_stopping)
    else:
        fitted = trainer.fit(
            _training_data(train, weights, source_index, params, grey),
            validation_data=_validation_data(val, params, grey),
            epochs=params.epochs,
            initial_epoch=initial_epoch,
            callbacks=[*own, *callbacks],
            shuffle=False,  # the tf.data pipeline shuffles (seeded) every epoch
            verbose=0,
        )
        if checkpoint is None:  # else EpochCheckpoint has appended each epoch already
            for name, values in fitted.history.items():
                history.setdefault(name, []).extend(float(v) for v in values)
    seconds = time.perf_counter() - started
    epochs_run = len(history["loss"]) - initial_epoch
    # the epoch whose weights are kept: the best under early stopping, else the last
    kept = early_stopping.best_epoch if early_stopping else len(history["loss"]) - 1
    model_path = out_dir / "model.keras"
    out_dir.mkdir(parents=True, exist_ok=True)
    _export(classifier, params, hardware).save(model_path)
    return TrainResult(
        model_path=model_path,
        history=history,
        train_accuracy=history["accuracy"][kept],
        val_accuracy=history["val_accuracy"][kept],
        train_images=len(train),
        seconds=seconds,
        images_per_second=len(train) * epochs_run / seconds if epochs_run else 0.0,
        devices=hardware.devices,
        replicas=hardware.replicas,
        mixed_precision=hardware.mixed_precision,
        jit_compile=bool(trainer.jit_compile),
        initial_epoch=initial_epoch,
        kept_epoch=kept + 1,
        class_weights=weights_by_class,
    )


def _build_trainer(
    params: TrainParams, hardware: Hardware, weights: Path | str | None, grey: bool, sources: int
) -> tuple[keras.Model, keras.Model]:
    """The classifier and its compiled training model, on ``hardware`` in its precision.

    ``sources``: how many sources the adversary tells apart (with ``params.source_adversary``).
    """
    policy = MIXED_POLICY if hardware.mixed_precision else FLOAT_POLICY
    with dtype_policy(policy), hardware.strategy.scope():
        classifier = build_model(params.architecture, params.image_size, weights)
        if params.source_adversary:
            model = with_source_adversary(
                classifier, sources, params.source_adversary, params.seed, grey
            )
        else:
            model = with_augmentation(classifier, params.seed, grey)
        trainer = compile_for_training(model, params.learning_rate, hardware.jit_compile)
    return classifier, trainer


def _finish_without_fitting(
    trainer: keras.Model, early_stopping: ResumableEarlyStopping | None
) -> None:
    """A finished checkpoint: restore the best epoch's weights as the end of training would."""
    if early_stopping is not None:
        early_stopping.set_model(trainer)
        early_stopping.on_train_begin()
        early_stopping.on_train_end()


def _export(classifier: keras.Model, params: TrainParams, hardware: Hardware) -> keras.Model:
    """The classifier to save: as trained, or rebuilt in float32 when trained in mixed precision."""
    if not hardware.mixed_precision:
        return classifier
    with dtype_policy(FLOAT_POLICY):
        plain = build_model(params.architecture, params.image_size)
    plain.set_weights(classifier.get_weights())
    return plain


def history_frame(history: dict[str, list[float]]) -> pd.DataFrame:
    """Per-epoch loss/accuracy/AUC as a table (epoch numbers from 1)."""
    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


def training_summary(result: TrainResult) -> str:
    """One line on how training went; a resumed run says it resumed, and from which epoch,
    instead of "trained in 0s (0.0 images/s)"."""
    epochs = len(next(iter(result.history.values()), []))
    precision = "mixed float16" if result.mixed_precision else "float32"
    accuracy = (
        f"train accuracy {result.train_accuracy:.3f}, validation accuracy "
        f"{result.val_accuracy:.3f} (epoch {result.kept_epoch})"
    )
    ran = epochs - result.initial_epoch
    if result.initial_epoch and ran <= 0:
        return (
            f"resumed from the checkpoint, which holds this training finished ({epochs} epochs): "
            f"nothing trained now; {accuracy}"
        )
    speed = (
        f"{result.seconds:.0f}s ({result.images_per_second:.1f} images/s on "
        f"{', '.join(result.devices)}, {precision})"
    )
    if result.initial_epoch:
        return (
            f"resumed from the checkpoint after epoch {result.initial_epoch}: trained {ran} more "
            f"epoch(s) in {speed}: {accuracy}"
        )
    return f"trained in {speed}: {accuracy}"
