"""Training input: images of a materialised dataset as tensors, through tf.data.

Each image is fetched from the store and converted once (by :func:`cxr_model.images.to_model_input`,
the same conversion scoring uses) into a uint8 array; the arrays of a split are cached locally per
dataset id and image size, so later epochs and reruns on the same data decode nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from cxr_model.images import to_model_input
from cxr_model.storage import ObjectStore

POSITIVE_LABEL = "covid"


@dataclass(frozen=True)
class SplitArrays:
    """One split as arrays: pixels (n, size, size, 3) uint8, labels (n,) float32, and row keys."""

    images: np.ndarray
    labels: np.ndarray
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_split_arrays(
    store: ObjectStore, split_frame: pd.DataFrame, split: str, image_size: int, cache_dir: Path
) -> SplitArrays:
    """Pixels and labels of one split, from the local cache or decoded once from the store."""
    rows = split_frame[split_frame["split"] == split].sort_values("dataset_key")
    keys = list(rows["dataset_key"])
    cache = cache_dir / f"{split}-{image_size}.npz"
    cached = _read_cache(cache)
    if cached is not None and cached.keys == keys:
        return cached

    def convert(key: str) -> np.ndarray:
        return to_model_input(store.get_bytes(key), image_size, name=store.uri(key))

    with ThreadPoolExecutor(max_workers=4) as pool:
        pixels = list(pool.map(convert, keys))
    images = np.stack(pixels) if pixels else np.zeros((0, image_size, image_size, 3), np.uint8)
    labels = (rows["label"] == POSITIVE_LABEL).to_numpy(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.stem + ".part.npz")
    np.savez(partial, images=images, labels=labels, keys=np.array(keys, dtype=str))
    partial.replace(cache)
    return SplitArrays(images, labels, keys)


def _read_cache(path: Path) -> SplitArrays | None:
    """The cached arrays, or None when there are none or they cannot be read (then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            return SplitArrays(cached["images"], cached["labels"], [str(k) for k in cached["keys"]])
    except (OSError, ValueError, KeyError):
        return None


def _as_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), labels


def training_batches(arrays: SplitArrays, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled (reshuffled each epoch), batched, prefetched training data."""
    data = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    data = data.shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True)
    return (
        data.batch(batch_size)
        .map(_as_float, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def evaluation_batches(arrays: SplitArrays, batch_size: int) -> tf.data.Dataset:
    """Batches in a fixed order, for validation and prediction."""
    data = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    return (
        data.batch(batch_size)
        .map(_as_float, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
