"""Training input: decoded once, then served from the local cache or the store's shards (the same
arrays every way), and a seeded tf.data pipeline that reshuffles every epoch."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_model import data
from cxr_model.data import (
    SplitArrays,
    array_cache_prefix,
    decode_images,
    evaluation_batches,
    load_split_arrays,
    read_shards,
    training_batches,
)
from cxr_model.images import to_model_input

SIZE = 32
DATASET = "ds-test"


def png(seed: int, shape: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def split_frame(store) -> pd.DataFrame:
    """Seven small PNGs of several sizes in the store, five in Train and two in Val."""
    rows = []
    for i in range(7):
        split, label = ("Train" if i < 5 else "Val"), ("covid" if i % 2 else "normal")
        key = f"datasets/{DATASET}/{split}/{label}/{i:03d}.png"
        store.put_bytes(key, png(i, (40 + i, 50)))
        rows.append({"split": split, "label": label, "dataset_key": key})
    return pd.DataFrame(rows[::-1])  # the loader orders rows itself


def spoil_sources(store, frame: pd.DataFrame) -> None:
    """Overwrite every source image with junk, so any decode from now on would fail."""
    for key in frame["dataset_key"]:
        store.put_bytes(key, b"not an image")


def test_decode_local_cache_and_store_shards_give_the_same_arrays(
    store, split_frame, tmp_path, monkeypatch
):
    keys = sorted(split_frame.loc[split_frame["split"] == "Train", "dataset_key"])
    expected = np.stack([to_model_input(store.get_bytes(k), SIZE) for k in keys])
    monkeypatch.setattr(data, "SHARD_BYTES", 2 * SIZE * SIZE * 3)  # two images per shard

    decoded = load_split_arrays(store, split_frame, "Train", SIZE, tmp_path / "a", DATASET)
    np.testing.assert_array_equal(decoded.images, expected)
    assert decoded.keys == keys and decoded.images.dtype == np.uint8
    np.testing.assert_array_equal(decoded.labels, [1, 1, 0, 0, 0])  # covid/ sorts first
    index = json.loads(store.get_bytes(f"{array_cache_prefix(DATASET, SIZE)}/Train.json"))
    assert index["keys"] == keys and [s["count"] for s in index["shards"]] == [2, 2, 1]

    spoil_sources(store, split_frame)
    from_shards = load_split_arrays(store, split_frame, "Train", SIZE, tmp_path / "b", DATASET)
    np.testing.assert_array_equal(from_shards.images, expected)
    assert (tmp_path / "b" / f"Train-{SIZE}.npz").exists()  # shards also fill the local cache

    store.put_bytes(f"{array_cache_prefix(DATASET, SIZE)}/Train.json", b"{}")
    from_local = load_split_arrays(store, split_frame, "Train", SIZE, tmp_path / "b", DATASET)
    np.testing.assert_array_equal(from_local.images, expected)
    np.testing.assert_array_equal(from_local.labels, decoded.labels)


def test_a_cache_for_other_images_is_not_used(store, split_frame, tmp_path):
    first = load_split_arrays(store, split_frame, "Val", SIZE, tmp_path, DATASET)
    fewer = split_frame[split_frame["dataset_key"] != first.keys[0]]
    prefix = array_cache_prefix(DATASET, SIZE)
    assert read_shards(store, prefix, "Val", first.keys[1:]) is None
    again = load_split_arrays(store, fewer, "Val", SIZE, tmp_path, DATASET)
    assert again.keys == first.keys[1:]
    np.testing.assert_array_equal(again.images, first.images[1:])


def test_without_a_dataset_id_only_the_local_cache_is_used(store, split_frame, tmp_path):
    arrays = load_split_arrays(store, split_frame, "Val", SIZE, tmp_path)
    assert not list(store.list_keys("cache/"))
    np.testing.assert_array_equal(arrays.images, decode_images(store, arrays.keys, SIZE))


def numbered(n: int) -> SplitArrays:
    """Image i is filled with the value i, so a batch says which images it holds."""
    images = np.repeat(np.arange(n, dtype=np.uint8), 4 * 4 * 3).reshape(n, 4, 4, 3)
    return SplitArrays(images, (np.arange(n) % 2).astype("float32"), [str(i) for i in range(n)])


def epoch_order(dataset) -> list[int]:
    return [int(image[0, 0, 0]) for images, _ in dataset for image in images.numpy()]


def test_training_batches_reshuffle_each_epoch_with_a_fixed_seed():
    arrays = numbered(20)
    batches = training_batches(arrays, batch_size=8, seed=3)
    first, second = epoch_order(batches), epoch_order(batches)
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second  # reshuffled between epochs
    assert epoch_order(training_batches(arrays, batch_size=8, seed=3)) == first  # seeded
    images, labels = next(iter(batches))
    assert images.dtype.name == "uint8" and images.shape == (8, 4, 4, 3)  # cast on the device
    assert [len(images) for images, _ in batches] == [8, 8, 4]


def test_evaluation_batches_keep_the_order():
    assert epoch_order(evaluation_batches(numbered(10), batch_size=4)) == list(range(10))
