"""Training input: images of a materialised dataset as arrays, cached, and fed through tf.data.

Each image is fetched from the store and converted once (by :func:`cxr_model.images.to_model_input`,
the same conversion scoring uses) into a uint8 array. The arrays of a split are kept in two caches,
keyed by dataset id and image size:

- a local ``.npz`` file (fastest; lost with the machine), and
- shards in the object store, ``cache/arrays/<dataset id>/<size>/<split>-00000.npz`` …, with an
  index ``<split>.json`` that lists the row keys and the shards (survives the machine, so a fresh
  worker or a retrain elsewhere decodes nothing).

Lookup order: local file → store shards → decode from the store (then both caches are written).
Every epoch, fold and retrain on the same dataset id and size reads a cache.

The tf.data pipeline hands the model uint8 batches: the cast to float happens inside the model, on
the accelerator, so the host moves a quarter of the bytes and runs no per-batch map. Grey x-rays
(three equal channels) go in as one channel, which the training model repeats after augmenting.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from botocore.exceptions import ClientError

from cxr_model.images import (
    LEGACY_PREPROCESSING,
    MODEL_CHANNELS,
    Preprocessing,
    to_model_input,
)
from cxr_model.storage import ObjectStore

POSITIVE_LABEL = "covid"
ARRAY_CACHE_PREFIX = "cache/arrays"
SHARD_BYTES = 64 * 2**20  # shard size in the store: big enough for few requests, small for memory
CACHE_FORMAT = 1
DECODE_THREADS = 4  # Pillow releases the GIL while decoding; more threads mostly wait on S3
PREFETCH_BATCHES = 2  # the next batch is ready while the current one trains


@dataclass(frozen=True)
class SplitArrays:
    """One split as arrays: pixels (n, size, size, 3) uint8, labels (n,) float32, and row keys."""

    images: np.ndarray
    labels: np.ndarray
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _input_name(image_size: int, preprocessing: Preprocessing) -> str:
    """``224`` for the study's conversion, ``224-crop-eq`` for another preprocessing."""
    if preprocessing == LEGACY_PREPROCESSING:
        return str(image_size)
    return f"{image_size}-{preprocessing.name}"


def array_cache_prefix(
    dataset_id: str, image_size: int, preprocessing: Preprocessing = LEGACY_PREPROCESSING
) -> str:
    """Where the store keeps the array shards of one dataset at one image size and preprocessing."""
    return f"{ARRAY_CACHE_PREFIX}/{dataset_id}/{_input_name(image_size, preprocessing)}"


def load_split_arrays(
    store: ObjectStore,
    split_frame: pd.DataFrame,
    split: str,
    image_size: int,
    cache_dir: Path,
    dataset_id: str | None = None,
    preprocessing: Preprocessing = LEGACY_PREPROCESSING,
) -> SplitArrays:
    """Pixels and labels of one split: local cache → store shards → decoded once from the store.

    ``split_frame`` is the dataset's ``split.csv``; rows are ordered by ``dataset_key``. Without a
    ``dataset_id`` only the local cache in ``cache_dir`` is used.
    """
    rows = split_frame[split_frame["split"] == split].sort_values("dataset_key")
    keys = [str(key) for key in rows["dataset_key"]]
    labels = (rows["label"] == POSITIVE_LABEL).to_numpy(np.float32)
    local = cache_dir / f"{split}-{_input_name(image_size, preprocessing)}.npz"
    images = _read_local(local, keys)
    if images is not None:
        return SplitArrays(images, labels, keys)
    shards = (
        None if dataset_id is None else array_cache_prefix(dataset_id, image_size, preprocessing)
    )
    images = None if shards is None else read_shards(store, shards, split, keys)
    if images is None:
        images = decode_images(store, keys, image_size, preprocessing)
        if shards is not None:
            write_shards(store, shards, split, images, keys)
    _write_local(local, images, keys)
    return SplitArrays(images, labels, keys)


def decode_images(
    store: ObjectStore,
    keys: list[str],
    image_size: int,
    preprocessing: Preprocessing = LEGACY_PREPROCESSING,
) -> np.ndarray:
    """Fetch and convert each key's image: (n, size, size, 3) uint8 in the order of ``keys``."""

    def convert(key: str) -> np.ndarray:
        return to_model_input(
            store.get_bytes(key), image_size, name=store.uri(key), preprocessing=preprocessing
        )

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        pixels = list(pool.map(convert, keys))
    if not pixels:
        return np.zeros((0, image_size, image_size, MODEL_CHANNELS), np.uint8)
    return np.stack(pixels)


def _read_local(path: Path, keys: list[str]) -> np.ndarray | None:
    """The cached images when the file holds exactly ``keys``; None when absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            if [str(k) for k in cached["keys"]] != keys:
                return None
            return cached["images"]
    except (OSError, ValueError, KeyError):
        return None


def _write_local(path: Path, images: np.ndarray, keys: list[str]) -> None:
    """Write the local cache atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".part.npz")
    np.savez(partial, images=images, keys=np.array(keys, dtype=str))
    partial.replace(path)


def _shard_rows(images: np.ndarray) -> int:
    """Images per shard so that a shard holds about :data:`SHARD_BYTES`."""
    per_image = max(1, int(np.prod(images.shape[1:])) * images.itemsize)
    return max(1, SHARD_BYTES // per_image)


def write_shards(
    store: ObjectStore, prefix: str, split: str, images: np.ndarray, keys: list[str]
) -> list[str]:
    """Store a split's images as ``<prefix>/<split>-NNNNN.npz`` shards, then their index.

    The index is written last, so a reader that finds it finds every shard it names. Shards are
    deterministic for a dataset id, so two writers racing write the same bytes.
    """
    rows = _shard_rows(images)
    shards = []
    for number, start in enumerate(range(0, len(keys), rows)):
        buffer = io.BytesIO()
        np.savez(buffer, images=images[start : start + rows])
        key = f"{prefix}/{split}-{number:05d}.npz"
        store.put_bytes(key, buffer.getvalue(), content_type="application/octet-stream")
        shards.append({"key": key, "count": len(images[start : start + rows])})
    index = {
        "format": CACHE_FORMAT,
        "split": split,
        "shape": list(images.shape[1:]),
        "keys": keys,
        "shards": shards,
    }
    store.put_bytes(f"{prefix}/{split}.json", json.dumps(index).encode())
    return [shard["key"] for shard in shards]


def read_shards(store: ObjectStore, prefix: str, split: str, keys: list[str]) -> np.ndarray | None:
    """The split's images from the store's shards, or None when there is no usable index.

    An index for other keys (a different split of the same id cannot happen, but a half-written
    or older cache can) or shards that do not add up are ignored, and the images are decoded anew.
    """
    found = store.get_with_etag(f"{prefix}/{split}.json")
    if found is None:
        return None
    try:
        index = json.loads(found[0])
        if index.get("format") != CACHE_FORMAT or index["keys"] != keys:
            return None
        parts = []
        for shard in index["shards"]:
            with np.load(io.BytesIO(store.get_bytes(shard["key"])), allow_pickle=False) as data:
                parts.append(data["images"])
    except (ValueError, KeyError, TypeError, OSError, ClientError):
        return None  # a missing or damaged shard: decode anew
    if not parts:
        return np.zeros((0, *index["shape"]), np.uint8)
    images = np.concatenate(parts)
    return images if len(images) == len(keys) else None


def is_grey(images: np.ndarray) -> bool:
    """True when every channel equals the first (x-rays as ``to_model_input`` makes them)."""
    return all(np.array_equal(images[..., 0], images[..., c]) for c in range(1, images.shape[-1]))


def _slices(arrays: SplitArrays, grey: bool) -> tf.data.Dataset:
    """(image, label) pairs; ``grey`` keeps one channel (the training model repeats it)."""
    images = np.ascontiguousarray(arrays.images[..., :1]) if grey else arrays.images
    return tf.data.Dataset.from_tensor_slices((images, arrays.labels)).with_options(
        _in_memory_options()
    )


def _in_memory_options() -> tf.data.Options:
    """One private thread and no autotuning: batching arrays in memory needs no more.

    With tf.data's defaults (autotuning, the shared thread pool), ``fit`` on 2 CPU cores trained at
    about 0.65–0.75 of the same model fed in-memory tensors (bench/input_pipeline.py); the
    pipeline's threads competed with the training step for the cores.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return options


def training_batches(
    arrays: SplitArrays, batch_size: int, seed: int, grey: bool = False
) -> tf.data.Dataset:
    """Shuffled (seeded, reshuffled each epoch), batched, prefetched uint8 training data."""
    data = _slices(arrays, grey).shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(PREFETCH_BATCHES)


def evaluation_batches(arrays: SplitArrays, batch_size: int, grey: bool = False) -> tf.data.Dataset:
    """uint8 batches in a fixed order, for validation and prediction."""
    return _slices(arrays, grey).batch(batch_size).prefetch(PREFETCH_BATCHES)
