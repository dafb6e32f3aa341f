"""What the training tasks hand each other: the dataset, the staged model, its export and the
champion's evaluation, and the helpers that load a dataset's arrays or a staged model.

Task modules import this module and :mod:`tasks.common`, never each other. It is kept apart from
:mod:`tasks.common` because it imports the training stack (Keras, scikit-learn), which scoring
must not need.
"""

from __future__ import annotations

from pathlib import Path

import keras
from pydantic import BaseModel

from cxr_model.config import get_settings
from cxr_model.data import SplitArrays, load_split_arrays
from cxr_model.evaluate import Evaluation
from cxr_model.images import LEGACY_PREPROCESSING, Preprocessing
from cxr_model.inference import InferenceArtifact
from cxr_model.split import HoldOut, load_split
from cxr_model.train import TrainParams, fetch_weights
from tasks.common import store


class DatasetRef(BaseModel):
    """A materialised dataset: its id, its split manifest, and image counts per split and label."""

    dataset_id: str
    uri: str
    split_key: str
    counts: dict[str, dict[str, int]]
    held_out: HoldOut = HoldOut(reason="none")
    shortcut_flags: list[str] = []  # the shortcut audit's warnings on the accepted images


class TrainedModel(BaseModel):
    """A trained, not yet registered model staged in the store, with how training went."""

    model_key: str
    training_key: str
    params: TrainParams
    train_accuracy: float
    val_accuracy: float
    images_per_second: float
    seconds: float
    devices: list[str]


class ExportedModel(BaseModel):
    """The ONNX export staged at ``key``, and what its version's card says about it."""

    key: str
    artifact: InferenceArtifact


class ChampionEvaluation(BaseModel):
    """The champion's version and its metrics on a run's validation split, or, for a champion
    that exists but cannot be loaded, why (``evaluation`` None; ``version`` None when even the
    alias record cannot be read)."""

    version: int | None
    evaluation: Evaluation | None = None
    problem: str | None = None


def split_arrays(
    dataset: DatasetRef,
    image_size: int,
    *splits: str,
    preprocessing: Preprocessing = LEGACY_PREPROCESSING,
) -> list[SplitArrays]:
    """The named splits of a dataset as arrays: local cache, then the store's shards, then decode."""
    objects = store()
    frame = load_split(objects, dataset.split_key)
    cache = get_settings().cache_dir / "datasets" / dataset.dataset_id
    return [
        load_split_arrays(
            objects, frame, split, image_size, cache, dataset.dataset_id, preprocessing
        )
        for split in splits
    ]


def image_sources(dataset: DatasetRef, arrays: SplitArrays) -> list[str]:
    """Each image's source (the split manifest's ``source`` column), in the order of ``arrays``."""
    frame = load_split(store(), dataset.split_key).set_index("dataset_key")
    return [str(source) for source in frame.loc[arrays.keys, "source"]]


def local_weights(params: TrainParams, folder: Path) -> Path | None:
    """``params.weights`` as a local file: an ``s3://`` URI is downloaded into ``folder``."""
    if params.weights is None:
        return None
    if params.weights.startswith("s3://"):
        return fetch_weights(store(), params.weights, folder)
    return Path(params.weights)


def staged_model(model_key: str) -> keras.Model:
    """A model staged by this run (not yet registered), through the local cache."""
    local = get_settings().cache_dir / model_key
    return keras.saving.load_model(store().download(model_key, local), compile=False)
