"""Train a classifier on a materialised dataset and save it for the registry.

Training runs the classifier behind the augmentation block; the saved model is the classifier
alone, uncompiled and in float32, so it carries the trained weights and no optimizer state,
augmentation or mixed-precision policy.

Hardware: every visible GPU (``tf.distribute.MirroredStrategy`` over two or more, TensorFlow's
default strategy on one), mixed float16 on GPUs, and a clean CPU fallback. XLA is off unless asked
for, and even then Keras falls back for the training model: TensorFlow has no XLA kernel for the
projective transform the augmentation uses. The result records what was actually used.

Behaviour: seeded (same data and seed → same metrics on CPU), balanced class weights, optional
early stopping with best-weights restore, and per-epoch checkpoints in the object store from which
an interrupted run resumes (:class:`Checkpoint`).

Against shortcut learning (a classifier that recognises the hospital rather than the disease, when
each source brings mostly one label), two options, off by default: per-image weights so each
source counts equally within its label (``source_balance``), and a source-adversarial head whose
reversed gradient pushes the features to hide the source (``source_adversary``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from pydantic import BaseModel, Field, field_validator
from sklearn.utils.class_weight import compute_class_weight

from cxr_model.data import SplitArrays, evaluation_batches, is_grey, training_batches
from cxr_model.images import Preprocessing
from cxr_model.model import (
    ARCHITECTURES,
    UNKNOWN_SOURCE,
    build_model,
    compile_for_training,
    with_augmentation,
    with_source_adversary,
)
from cxr_model.storage import ObjectStore, parse_s3_uri

CHECKPOINTS_PREFIX = "checkpoints"
CHECKPOINT_FORMAT = 1
MIXED_POLICY = "mixed_float16"
FLOAT_POLICY = "float32"
PARAMS_HASH_CHARS = 16


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


@dataclass(frozen=True)
class Hardware:
    """Where and how training runs: the distribution strategy and its devices."""

    strategy: tf.distribute.Strategy
    devices: list[str]
    mixed_precision: bool
    jit_compile: bool

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def _short_name(device: str) -> str:
    """``/job:localhost/replica:0/task:0/device:GPU:0`` → ``GPU:0``."""
    return device.rsplit("device:", 1)[-1].lstrip("/")


def choose_hardware(params: TrainParams, devices: Sequence[str] | None = None) -> Hardware:
    """Strategy, devices, precision and XLA for ``params`` on this machine.

    ``devices`` (TensorFlow logical device names such as ``/cpu:0``) overrides the default, all
    visible GPUs, falling back to the CPU. Two or more devices train with MirroredStrategy.
    """
    names = list(devices or [gpu.name for gpu in tf.config.list_logical_devices("GPU")])
    if len(names) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy(names)
        used = [_short_name(d) for d in strategy.extended.worker_devices]
    else:
        strategy = tf.distribute.get_strategy()
        used = [_short_name(names[0])] if names else ["CPU:0"]
    on_gpu = any("GPU" in name.upper() for name in used)
    mixed = params.mixed_precision == "on" or (params.mixed_precision == "auto" and on_gpu)
    return Hardware(strategy, used, mixed_precision=mixed, jit_compile=params.jit_compile == "on")


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build models under the global Keras dtype policy ``name``; restore the old one after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Per-class loss weights for ``mode`` ('balanced': n / (classes × count)), or None."""
    if mode == "none":
        return None
    y = labels.astype(int)
    classes = np.unique(y)
    weights = compute_class_weight("balanced", classes=classes, y=y)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def source_balanced_weights(labels: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Per-image weights under which every source of a label weighs the same in total.

    Within a label of ``n`` images from ``k`` sources, an image from a source of ``m`` images
    weighs ``n / (k·m)``: each source's total is ``n / k``, and the label's total stays ``n``, so
    class weights keep their meaning on top.
    """
    y = labels.astype(int)
    origin = np.asarray(sources)
    weights = np.empty(len(y), dtype="float32")
    for label in np.unique(y):
        in_label = y == label
        names, counts = np.unique(origin[in_label], return_counts=True)
        per_source = dict(zip(names, in_label.sum() / (len(names) * counts), strict=True))
        weights[in_label] = [per_source[name] for name in origin[in_label]]
    return weights


def image_weights(
    labels: np.ndarray, sources: Sequence[str] | None, params: TrainParams
) -> np.ndarray:
    """Each training image's loss weight: its class weight, times its source weight if asked."""
    by_class = class_weights(labels, params.class_weight) or {}
    weights = np.array([by_class.get(int(y), 1.0) for y in labels], dtype="float32")
    if params.source_balance and sources is not None:  # no sources: one source, nothing to do
        weights *= source_balanced_weights(labels, sources)
    return weights


def _required(sources: Sequence[str] | None, option: str) -> Sequence[str]:
    if sources is None:
        raise ValueError(f"{option} needs the training images' sources: pass sources=[...]")
    return sources


def source_indices(sources: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct sources (sorted) and each image's index among them."""
    names, indices = np.unique(np.asarray(sources, dtype=str), return_inverse=True)
    return [str(name) for name in names], indices.astype("int32")


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


def checkpoint_prefix(dataset_id: str, params: TrainParams) -> str:
    """A checkpoint prefix that is the same for the same dataset and training parameters."""
    digest = hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:PARAMS_HASH_CHARS]
    return f"{CHECKPOINTS_PREFIX}/{dataset_id}/{digest}"


def fetch_weights(store: ObjectStore, uri: str, folder: Path) -> Path:
    """Download an ``s3://bucket/key`` weights file into ``folder``; return the local path."""
    bucket, key = parse_s3_uri(uri)
    return store.in_bucket(bucket).download(key, folder / Path(key).name)


@dataclass(frozen=True)
class Checkpoint:
    """Per-epoch training state in an object store, from which an interrupted run resumes.

    Layout under ``prefix``: two slots, ``slot-0/`` and ``slot-1/``, each holding
    ``trainer.weights.h5`` (training model weights and optimizer state) and, under early stopping,
    ``best.npz`` (the best epoch's weights); and ``latest.json`` (epochs done, history,
    early-stopping state, which slot) written last. Epochs alternate slots, so the slot
    ``latest.json`` names is never the one being overwritten.
    """

    store: ObjectStore
    prefix: str

    def latest(self) -> dict | None:
        """The last completed epoch's state, or None when nothing was checkpointed."""
        found = self.store.get_with_etag(f"{self.prefix}/latest.json")
        return None if found is None else json.loads(found[0])

    def slot_key(self, slot: int, name: str) -> str:
        return f"{self.prefix}/slot-{slot}/{name}"


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras early stopping (best weights restored) whose progress survives a restart."""

    def __init__(self, monitor: str, patience: int, resumed: dict | None, best_weights):
        mode = "min" if monitor.endswith("loss") else "max"
        super().__init__(monitor=monitor, patience=patience, mode=mode, restore_best_weights=True)
        self._resumed = resumed
        self._resumed_best_weights = best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resumed:
            self.wait = self._resumed["wait"]
            self.best = self._resumed["best"]
            self.best_epoch = self._resumed["best_epoch"]
            self.best_weights = self._resumed_best_weights

    def progress(self) -> dict:
        """What :meth:`on_train_begin` needs to carry on after a restart."""
        best = None if self.best is None else float(self.best)
        return {"wait": self.wait, "best": best, "best_epoch": self.best_epoch}


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the training model's weights, optimizer state and progress to S3."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        fingerprint: dict,
        history: dict[str, list[float]],
        early_stopping: ResumableEarlyStopping | None,
        work_dir: Path,
        slot: int,
    ):
        super().__init__()
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.history = history
        self.early_stopping = early_stopping
        self.work_dir = work_dir
        self.slot = slot

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        weights = self.work_dir / "trainer.weights.h5"
        self.model.save_weights(weights)
        self.checkpoint.store.put_file(self.checkpoint.slot_key(self.slot, weights.name), weights)
        stopping = None
        if self.early_stopping is not None:
            stopping = self.early_stopping.progress()
            best = self.early_stopping.best_weights
            if best is not None:
                buffer = io.BytesIO()
                np.savez(buffer, *best)
                key = self.checkpoint.slot_key(self.slot, "best.npz")
                self.checkpoint.store.put_bytes(key, buffer.getvalue())
        state = {
            "fingerprint": self.fingerprint,
            "epochs_done": epoch + 1,
            "stopped": bool(self.model.stop_training),
            "history": self.history,
            "early_stopping": stopping,
            "slot": self.slot,
        }
        self.checkpoint.store.put_bytes(
            f"{self.checkpoint.prefix}/latest.json", json.dumps(state).encode()
        )
        self.slot = 1 - self.slot


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


def _restore(trainer: keras.Model, checkpoint: Checkpoint, state: dict, work_dir: Path) -> list:
    """Load a checkpoint's weights and optimizer state into ``trainer``; return best weights."""
    work_dir.mkdir(parents=True, exist_ok=True)
    slot = state["slot"]
    weights = checkpoint.store.download(
        checkpoint.slot_key(slot, "trainer.weights.h5"), work_dir / "resume.weights.h5"
    )
    trainer.optimizer.build(trainer.trainable_variables)  # else Keras skips the optimizer state
    trainer.load_weights(weights)
    if not state.get("early_stopping") or state["early_stopping"]["best"] is None:
        return []
    best = np.load(io.BytesIO(checkpoint.store.get_bytes(checkpoint.slot_key(slot, "best.npz"))))
    return [best[f"arr_{i}"] for i in range(len(best.files))]


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
        best_weights = _restore(trainer, checkpoint, state, out_dir) if state else []
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


@dataclass(frozen=True)
class CheckpointCleanup:
    """What :func:`remove_old_checkpoints` removed and kept (checkpoint prefixes)."""

    removed: list[str]
    kept: list[str]
    unfinished: list[str]
    objects_removed: int


def _checkpoint_root(key: str) -> str | None:
    """``checkpoints/<dataset>/<params hash>`` of a key under it, else None."""
    parts = key.split("/")
    return "/".join(parts[:3]) if len(parts) > 3 and parts[0] == CHECKPOINTS_PREFIX else None


def _finished(store: ObjectStore, latest_keys: list[str]) -> bool:
    """True when every training state under a checkpoint (one, or one per fold) says it ended."""
    if not latest_keys:
        return False  # crashed before its first epoch ended, or being written now
    for key in latest_keys:
        try:
            state = json.loads(store.get_bytes(key))
            epochs = state["fingerprint"]["params"]["epochs"]
            done = bool(state["stopped"]) or int(state["epochs_done"]) >= int(epochs)
        except (KeyError, TypeError, ValueError):
            return False  # a state we cannot read is not ours to judge: keep it
        if not done:
            return False
    return True


def remove_old_checkpoints(store: ObjectStore, current: str, keep: int) -> CheckpointCleanup:
    """Remove finished training checkpoints but the ``keep`` most recent ones.

    A checkpoint is one ``checkpoints/<dataset>/<params hash>`` prefix: the state of one training
    of one dataset with one set of parameters (cross-validation folds included). ``current`` (the
    checkpoint of the version just registered) counts as the most recent and is always kept when
    ``keep`` ≥ 1. Unfinished checkpoints (a crashed run that may be resumed, or a training running
    now) are never removed.
    """
    if keep < 0:
        raise ValueError(f"keep={keep}: the number of checkpoints to keep must be 0 or more")
    current = current.rstrip("/")
    keys: dict[str, list[str]] = {}
    written: dict[str, datetime] = {}
    for key, modified in store.list_modified(f"{CHECKPOINTS_PREFIX}/"):
        root = _checkpoint_root(key)
        if root is None:
            continue
        keys.setdefault(root, []).append(key)
        written[root] = max(written.get(root, modified), modified)
    unfinished = []
    finished = []
    for root, under in keys.items():
        latest = [k for k in under if k.endswith("/latest.json")]
        (finished if root == current or _finished(store, latest) else unfinished).append(root)
    # most recent first, the current checkpoint before every other
    finished.sort(key=lambda root: (root == current, written[root]), reverse=True)
    kept, removed = finished[:keep], finished[keep:]
    count = 0
    for root in removed:
        for key in keys[root]:
            store.delete(key)
            count += 1
    return CheckpointCleanup(
        removed=removed, kept=kept, unfinished=sorted(unfinished), objects_removed=count
    )


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
