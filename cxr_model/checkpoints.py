"""Training checkpoints in the object store: per-epoch state to resume from, and their cleanup.

A checkpoint is one ``checkpoints/<dataset>/<params hash>`` prefix, the same for the same dataset
and training parameters, so a rerun of an interrupted training finds it (:class:`Checkpoint`
describes its layout). :class:`EpochCheckpoint` writes it after every epoch, :func:`restore`
loads it into a new training model, and :func:`remove_old_checkpoints` removes finished ones.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from cxr_model.storage import ObjectStore

if TYPE_CHECKING:
    from cxr_model.train import TrainParams

CHECKPOINTS_PREFIX = "checkpoints"
CHECKPOINT_FORMAT = 1
PARAMS_HASH_CHARS = 16


def checkpoint_prefix(dataset_id: str, params: TrainParams) -> str:
    """A checkpoint prefix that is the same for the same dataset and training parameters."""
    digest = hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:PARAMS_HASH_CHARS]
    return f"{CHECKPOINTS_PREFIX}/{dataset_id}/{digest}"


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


def restore(trainer: keras.Model, checkpoint: Checkpoint, state: dict, work_dir: Path) -> list:
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
