"""Training: history per epoch, a saved float32 classifier without optimizer state, seeded
repeatability, class weights, early stopping, resuming from S3 checkpoints and two replicas."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from cxr_model.data import SplitArrays
from cxr_model.model import build_model
from cxr_model.train import (
    Checkpoint,
    TrainParams,
    checkpoint_prefix,
    choose_hardware,
    class_weights,
    fetch_weights,
    image_weights,
    source_balanced_weights,
    train_model,
)

REPO = Path(__file__).resolve().parents[1]


def learnable(n: int, seed: int = 0, grey: bool = True) -> SplitArrays:
    """Bright-centred (covid) vs dark-centred (normal) 32 px images: learnable in an epoch or two.

    ``grey``: three equal channels, as real x-rays come; else noise differs per channel.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 32, 32, 1 if grey else 3), dtype=np.uint8)
    labels = (np.arange(n) % 2).astype("float32")
    images[labels == 1, 8:24, 8:24, :] += 150
    images = np.repeat(images, 3, axis=-1) if grey else images
    return SplitArrays(images, labels, [str(i) for i in range(n)])


@pytest.fixture(scope="module")
def arrays() -> SplitArrays:
    return learnable(48)


@pytest.mark.slow
def test_training_records_history_and_saves_an_uncompiled_classifier(tmp_path):
    arrays = learnable(48, grey=False)  # the three-channel path (grey is the others')
    params = TrainParams(image_size=32, epochs=2, batch_size=16, seed=3)
    result = train_model(arrays, arrays, params, tmp_path)
    assert set(result.history) >= {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"}
    assert all(len(values) == 2 for values in result.history.values())
    assert result.train_accuracy == result.history["accuracy"][-1] and result.kept_epoch == 2
    assert result.images_per_second > 0 and result.devices == ["CPU:0"] and result.replicas == 1
    assert result.class_weights == {0: 1.0, 1: 1.0}  # balanced data: equal weights

    with zipfile.ZipFile(result.model_path) as archive:
        assert '"compile_config": {}' in archive.read("config.json").decode()  # never compiled
        with h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
            assert "optimizer" not in weights.keys()  # no optimizer state saved
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    assert getattr(model, "optimizer", None) is None
    assert [layer.name for layer in model.layers if "random" in layer.name] == []  # no augmentation
    probabilities = model.predict(arrays.images, verbose=0)
    assert probabilities.shape == (48, 1)


@pytest.mark.slow
def test_same_data_and_seed_give_the_same_metrics(arrays, tmp_path):
    params = TrainParams(image_size=32, epochs=1, batch_size=16, seed=11)
    first = train_model(arrays, arrays, params, tmp_path / "a")
    second = train_model(arrays, arrays, params, tmp_path / "b")
    assert first.history["loss"] == pytest.approx(second.history["loss"], rel=1e-4)
    assert first.history["val_loss"] == pytest.approx(second.history["val_loss"], rel=1e-4)
    assert first.val_accuracy == pytest.approx(second.val_accuracy)


def test_balanced_class_weights_make_both_classes_count_equally():
    labels = np.array([0, 0, 0, 1], dtype="float32")
    weights = class_weights(labels, "balanced")
    assert weights == pytest.approx({0: 4 / (2 * 3), 1: 4 / (2 * 1)})
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)
    assert class_weights(labels, "none") is None


def test_source_balance_makes_each_source_count_equally_within_its_label():
    labels = np.array([1, 1, 1, 1, 0, 0, 0], dtype="float32")
    sources = ["hannover", "hannover", "hannover", "ieee", "nih", "nih", "actualmed"]
    weights = source_balanced_weights(labels, sources)
    # covid: 4 images, 2 sources → each source totals 2; normal: 3 images, 2 sources → 1.5 each
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2, 0.75, 0.75, 1.5])
    assert weights[labels == 1].sum() == pytest.approx(4)  # a label keeps its total
    np.testing.assert_array_equal(source_balanced_weights(labels, ["one"] * 7), np.ones(7))

    # on top of balanced class weights (covid 7/8, normal 7/6): both classes total 3.5
    combined = image_weights(labels, sources, TrainParams(source_balance=True))
    assert combined[labels == 1].sum() == pytest.approx(combined[labels == 0].sum()) == 3.5
    # without sources every image counts as one source: the class weights alone
    unknown = image_weights(labels, None, TrainParams(source_balance=True))
    by_class = image_weights(labels, None, TrainParams(source_balance=False))
    np.testing.assert_array_equal(unknown, by_class)


@pytest.mark.slow
def test_source_adversarial_training_saves_the_classifier_alone(arrays, tmp_path):
    sources = ["a", "b", "c"] * (len(arrays) // 3)
    params = TrainParams(
        architecture="compact_cnn",
        image_size=32,
        epochs=1,
        batch_size=16,
        source_balance=True,
        source_adversary=0.5,
    )
    result = train_model(arrays, arrays, params, tmp_path, sources=sources)
    assert {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"} <= set(result.history)
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    assert len(model.inputs) == 1 and model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert not {"gradient_reversal", "source_guess"} & {layer.name for layer in model.layers}
    assert np.isfinite(model.predict(arrays.images, verbose=0)).all()
    with pytest.raises(ValueError, match="source_adversary needs the training images' sources"):
        train_model(arrays, arrays, params.model_copy(update={"source_balance": False}), tmp_path)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch(arrays, tmp_path):
    # validation labels are the opposite of training's: the better the model learns, the worse
    # its validation loss, so it stops early and must keep the best (earliest) weights
    flipped = SplitArrays(arrays.images, 1 - arrays.labels, arrays.keys)
    params = TrainParams(image_size=32, epochs=6, batch_size=16, seed=2, patience=1)
    result = train_model(arrays, flipped, params, tmp_path)
    val_losses = result.history["val_loss"]
    assert len(val_losses) < params.epochs  # stopped early
    assert result.kept_epoch == 1 + int(np.argmin(val_losses))
    assert result.val_accuracy == result.history["val_accuracy"][result.kept_epoch - 1]
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    probabilities = model.predict(flipped.images, verbose=0)
    loss = keras.losses.BinaryCrossentropy()(flipped.labels[:, None], probabilities)
    assert float(loss) == pytest.approx(min(val_losses), rel=1e-4)


class Crash(keras.callbacks.Callback):
    """Stands for a killed worker: fails once the first epoch (and its checkpoint) is done."""

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()
        raise RuntimeError("simulated crash")


class Watch(keras.callbacks.Callback):
    """Records where a run starts from and which epochs it runs."""

    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_train_begin(self, logs=None):
        self.start_weights = self.model.get_weights()
        self.start_steps = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.slow
def test_a_crashed_run_resumes_from_its_last_checkpoint(arrays, store, tmp_path):
    params = TrainParams(image_size=32, epochs=2, batch_size=16, seed=5, patience=5)
    checkpoint = Checkpoint(store, checkpoint_prefix("dataset-1", params))
    crash = Crash()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_model(
            arrays, arrays, params, tmp_path / "a", checkpoint=checkpoint, callbacks=[crash]
        )
    saved = checkpoint.latest()
    assert saved["epochs_done"] == 1 and len(saved["history"]["loss"]) == 1

    watch = Watch()
    result = train_model(
        arrays, arrays, params, tmp_path / "b", checkpoint=checkpoint, callbacks=[watch]
    )
    assert result.initial_epoch == 1 and watch.epochs == [1]  # epoch 1 was not run again
    assert watch.start_steps == 3  # Adam's state came back: 48 images / 16 per step
    for resumed, crashed in zip(watch.start_weights, crash.weights, strict=True):
        np.testing.assert_array_equal(resumed, crashed)
    assert len(result.history["loss"]) == params.epochs
    assert result.history["loss"][0] == saved["history"]["loss"][0]
    assert checkpoint.latest()["epochs_done"] == 2

    # a rerun of a finished run trains nothing and keeps the best epoch's weights
    done = train_model(arrays, arrays, params, tmp_path / "c", checkpoint=checkpoint)
    assert done.initial_epoch == 2 and done.images_per_second == 0.0
    assert done.history == result.history
    assert done.kept_epoch == 1 + int(np.argmin(result.history["val_loss"]))


def test_checkpoint_prefix_is_stable_per_dataset_and_params():
    params = TrainParams(epochs=3)
    assert checkpoint_prefix("d1", params) == checkpoint_prefix("d1", TrainParams(epochs=3))
    assert checkpoint_prefix("d1", params) != checkpoint_prefix("d1", TrainParams(epochs=4))
    assert checkpoint_prefix("d1", params).startswith("checkpoints/d1/")
    assert checkpoint_prefix("d1", params) != checkpoint_prefix("d2", params)


def test_initial_weights_come_from_s3(store, tmp_path):
    start = build_model("compact_cnn", 32)
    start.save_weights(tmp_path / "start.weights.h5")
    store.put_file("weights/start.weights.h5", tmp_path / "start.weights.h5")
    local = fetch_weights(store, store.uri("weights/start.weights.h5"), tmp_path / "fetched")
    rebuilt = build_model("compact_cnn", 32, weights=local)
    pixels = learnable(4).images.astype("float32")
    np.testing.assert_array_equal(np.asarray(rebuilt(pixels)), np.asarray(start(pixels)))


@pytest.mark.slow
def test_cpu_hardware_and_mixed_precision_training(arrays, tmp_path):
    cpu = choose_hardware(TrainParams())
    assert (cpu.devices, cpu.replicas, cpu.mixed_precision, cpu.jit_compile) == (
        ["CPU:0"],
        1,
        False,
        False,
    )
    params = TrainParams(image_size=32, epochs=1, batch_size=16, mixed_precision="on")
    result = train_model(arrays, arrays, params, tmp_path)
    assert result.mixed_precision and keras.config.dtype_policy().name == "float32"
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # saved plain
    assert np.isfinite(model.predict(arrays.images, verbose=0)).all()


def test_unknown_architecture_is_refused_in_the_params():
    with pytest.raises(ValueError, match="unknown architecture 'vgg99'"):
        TrainParams(architecture="vgg99")


TWO_REPLICAS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    from pathlib import Path
    from cxr_model.train import TrainParams, train_model
    from tests.test_train import learnable

    arrays = learnable(32)
    params = TrainParams(image_size=32, epochs=1, batch_size=16)
    result = train_model(arrays, arrays, params, Path(sys.argv[1]), devices=["/cpu:0", "/cpu:1"])
    model = keras.saving.load_model(result.model_path, compile=False, safe_mode=True)
    probabilities = model.predict(arrays.images, verbose=0)
    print(json.dumps({"replicas": result.replicas, "devices": result.devices,
                      "finite": bool(np.isfinite(probabilities).all()),
                      "epochs": len(result.history["loss"])}))
    """
)


@pytest.mark.slow
def test_two_replicas_train_with_mirrored_strategy(tmp_path):
    # TensorFlow's devices are fixed at its first use, so the split CPU needs a fresh process
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"replicas": 2, "devices": ["CPU:0", "CPU:1"], "finite": True, "epochs": 1}


@pytest.mark.slow
def test_training_logs_one_line_per_epoch(arrays, tmp_path):
    """Issue 13, item 5: training wrote nothing to the run log for minutes."""
    lines: list[str] = []
    params = TrainParams(image_size=32, epochs=3, batch_size=16, seed=2)
    result = train_model(arrays, arrays, params, tmp_path, progress=lines.append)
    assert len(lines) == 3
    for epoch, line in enumerate(lines):
        assert line.startswith(f"epoch {epoch + 1}/3: loss ")
        for name in ("loss", "accuracy", "auc"):
            assert f"{result.history[name][epoch]:.4f}" in line
            assert f"{result.history['val_' + name][epoch]:.4f}" in line
        assert "AUC" in line and "; validation loss " in line
        rate = float(line.split("; ")[-1].split(" images/s")[0])
        assert rate > 0


@pytest.mark.slow
def test_a_resumed_training_logs_only_the_epochs_it_runs(arrays, store, tmp_path):
    params = TrainParams(image_size=32, epochs=2, batch_size=16, seed=5)
    checkpoint = Checkpoint(store, checkpoint_prefix("dataset-log", params))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_model(
            arrays, arrays, params, tmp_path / "a", checkpoint=checkpoint, callbacks=[Crash()]
        )
    lines: list[str] = []
    train_model(
        arrays, arrays, params, tmp_path / "b", checkpoint=checkpoint, progress=lines.append
    )
    assert [line.split(":")[0] for line in lines] == ["epoch 2/2"]


def fake_checkpoint(store, prefix: str, epochs_done: int, epochs: int, *, fold: str = "") -> None:
    """A checkpoint in the layout :class:`EpochCheckpoint` writes (two slots, latest.json)."""
    where = f"{prefix}/{fold}" if fold else prefix
    for slot in (0, 1):
        store.put_bytes(f"{where}/slot-{slot}/trainer.weights.h5", b"weights")
    state = {
        "fingerprint": {"format": 1, "params": {"epochs": epochs}},
        "epochs_done": epochs_done,
        "stopped": False,
        "history": {},
        "early_stopping": None,
        "slot": 0,
    }
    store.put_bytes(f"{where}/latest.json", json.dumps(state).encode())


@pytest.mark.slow
def test_old_checkpoints_are_removed_once_a_version_is_registered(arrays, store, tmp_path):
    """Issue 13, item 6: checkpoints were never cleaned (904 MB of 1.7 GB after four trainings)."""
    import time

    from cxr_model.train import remove_old_checkpoints

    # a real finished training of an older dataset, then older trainings of other datasets
    real = TrainParams(image_size=32, epochs=1, batch_size=16, seed=1)
    oldest = checkpoint_prefix("dataset-a", real)
    train_model(arrays, arrays, real, tmp_path, checkpoint=Checkpoint(store, oldest))
    time.sleep(1.1)  # S3 times are to the second
    older = checkpoint_prefix("dataset-b", TrainParams(epochs=3))
    fake_checkpoint(store, older, epochs_done=3, epochs=3)
    time.sleep(1.1)
    folds = checkpoint_prefix("dataset-c", TrainParams(epochs=2))  # cross-validation: per fold
    for fold in ("fold-0-of-2", "fold-1-of-2"):
        fake_checkpoint(store, folds, epochs_done=2, epochs=2, fold=fold)
    crashed = checkpoint_prefix("dataset-d", TrainParams(epochs=5))  # may be resumed: kept
    fake_checkpoint(store, crashed, epochs_done=2, epochs=5)
    current = checkpoint_prefix("dataset-e", TrainParams(epochs=2))
    fake_checkpoint(store, current, epochs_done=2, epochs=2)
    store.put_bytes("checkpoints/README.txt", b"not a checkpoint")  # left alone
    time.sleep(1.1)

    done = remove_old_checkpoints(store, current, keep=2)
    assert done.kept == [current, folds]  # this training's, then the most recent other
    assert sorted(done.removed) == sorted([oldest, older])
    assert done.unfinished == [crashed]
    assert done.objects_removed == 2 + 3  # one epoch: one slot and latest.json; two slots and it
    assert not any(store.list_keys(oldest + "/")) and not any(store.list_keys(older + "/"))
    assert store.exists(f"{crashed}/latest.json") and store.exists("checkpoints/README.txt")

    done = remove_old_checkpoints(store, current, keep=1)
    assert done.removed == [folds] and done.kept == [current] and done.objects_removed == 6
    done = remove_old_checkpoints(store, current, keep=0)
    assert done.removed == [current] and done.kept == []
    assert sorted(store.list_keys("checkpoints/")) == sorted(
        [*store.list_keys(crashed + "/"), "checkpoints/README.txt"]
    )


def test_checkpoints_kept_is_a_setting(settings, monkeypatch):
    from cxr_model.config import Settings

    assert settings.keep_checkpoints == 1
    monkeypatch.setenv("CXR_KEEP_CHECKPOINTS", "3")
    assert Settings().keep_checkpoints == 3
    monkeypatch.setenv("CXR_KEEP_CHECKPOINTS", "-1")
    with pytest.raises(ValueError, match="keep_checkpoints"):
        Settings()


@pytest.mark.slow
def test_the_retrain_flow_cleans_checkpoints_after_registering(prefect_harness, store):
    """The task the retraining flow runs after ``register_model``: it reads the setting."""
    import inspect

    from flows.retrain import retrain
    from tasks.shared import DatasetRef
    from tasks.train import clean_checkpoints

    source = inspect.getsource(retrain.fn)
    assert source.index("clean_checkpoints(") > source.index("register_model(")
    old = checkpoint_prefix("dataset-old", TrainParams(epochs=1))
    fake_checkpoint(store, old, epochs_done=1, epochs=1)
    params = TrainParams(epochs=2)
    current = checkpoint_prefix("dataset-new", params)
    fake_checkpoint(store, current, epochs_done=2, epochs=2)
    dataset = DatasetRef(dataset_id="dataset-new", uri="s3://x", split_key="k", counts={})
    done = clean_checkpoints(dataset, params)
    assert done.removed == [old] and done.kept == [current] and done.objects_removed == 3
    assert store.exists(f"{current}/latest.json") and not store.exists(f"{old}/latest.json")
