"""Architectures: the study's CNN layer by layer, every model saves and loads in safe mode, and
augmentation acts only while training."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_model.model import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    GradientReversal,
    build_model,
    compile_for_training,
    seed_cnn,
    study_transform,
    with_augmentation,
)

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")


def test_seed_cnn_is_the_study_network():
    model = seed_cnn(image_size=224)
    layers = [
        (
            type(layer).__name__,
            getattr(layer, "filters", None)
            or getattr(layer, "units", None)
            or getattr(layer, "rate", None),
        )
        for layer in model.layers[1:]
    ]
    assert layers == [
        ("Rescaling", None),
        ("Conv2D", 32),
        ("Conv2D", 64),
        ("MaxPooling2D", None),
        ("Dropout", 0.25),
        ("Conv2D", 128),
        ("MaxPooling2D", None),
        ("Dropout", 0.25),
        ("Flatten", None),
        ("Dense", 64),
        ("Dropout", 0.5),
        ("Dense", 1),
    ]
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1)
    # 224 → conv 222 → conv 220 → pool 110 → conv 108 → pool 54: 54*54*128 features into Dense 64
    assert model.layers[-3].kernel.shape == (54 * 54 * 128, 64)
    assert [layer.activation.__name__ for layer in model.layers if hasattr(layer, "kernel")] == [
        "relu",
        "relu",
        "relu",
        "relu",
        "sigmoid",
    ]


SLOW_TO_SAVE = {"densenet121"}  # over 5 s on 2 cores


@pytest.mark.parametrize(
    "architecture",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_SAVE else n
        for n in sorted(ARCHITECTURES)
    ],
)
def test_architecture_saves_and_reloads_in_safe_mode(architecture, pixels, tmp_path):
    model = build_model(architecture, SIZE)
    assert model.input_shape == (None, SIZE, SIZE, 3) and model.output_shape == (None, 1)
    head = model.layers[-1]
    assert head.activation.__name__ == "sigmoid" and head.dtype_policy.compute_dtype == "float32"
    probabilities = np.asarray(model(pixels, training=False))
    assert probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(pixels, training=False)), probabilities)


def test_backbones_normalise_like_their_imagenet_weights():
    densenet = build_model("densenet121", SIZE)
    grey = np.full((1, SIZE, SIZE, 3), 128.0, dtype="float32")
    normalised = np.asarray(densenet.get_layer("imagenet_normalization")(grey))[0, 0, 0]
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(normalised, expected, rtol=1e-5)

    resnet = build_model("resnet50", SIZE)
    rgb = np.zeros((1, SIZE, SIZE, 3), dtype="float32")
    rgb[..., 0], rgb[..., 2] = 200.0, 10.0
    bgr = np.asarray(resnet.get_layer("caffe_bgr")(rgb))[0, 0, 0]
    np.testing.assert_allclose(bgr, [10 - 103.939, 0 - 116.779, 200 - 123.68], rtol=1e-5)

    efficientnet = build_model("efficientnetb0", SIZE).get_layer("efficientnetb0")
    norm = next(layer for layer in efficientnet.layers if type(layer).__name__ == "Normalization")
    np.testing.assert_allclose(np.ravel(norm.mean), IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(np.ravel(norm.variance), np.square(IMAGENET_STD), rtol=1e-6)


def test_weights_file_initialises_the_classifier(pixels, tmp_path):
    trained = build_model("compact_cnn", SIZE)
    trained.save_weights(tmp_path / "start.weights.h5")
    started = build_model("compact_cnn", SIZE, weights=tmp_path / "start.weights.h5")
    np.testing.assert_array_equal(
        np.asarray(started(pixels, training=False)), np.asarray(trained(pixels, training=False))
    )
    with pytest.raises(FileNotFoundError, match="missing.weights.h5 does not exist"):
        build_model("seed_cnn", SIZE, weights=tmp_path / "missing.weights.h5")
    with pytest.raises(ValueError, match="fetch them to a local file first"):
        build_model("resnet50", SIZE, weights="s3://bucket/resnet50_notop.h5")


def test_augmentation_acts_only_in_training(pixels):
    classifier = build_model("seed_cnn", SIZE)
    trainer = with_augmentation(classifier, seed=1)
    first = np.asarray(trainer(pixels, training=True))
    second = np.asarray(trainer(pixels, training=True))
    assert not np.allclose(first, second)  # new augmentation (and dropout) every call

    inference = np.asarray(trainer(pixels, training=False))
    np.testing.assert_allclose(inference, np.asarray(classifier(pixels, training=False)), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(classifier(pixels, training=False)),
        np.asarray(classifier(pixels, training=False)),
    )
    augmenter = trainer.get_layer("seed_augmentation")
    assert not np.allclose(np.asarray(augmenter(pixels, training=True)), pixels)
    np.testing.assert_array_equal(np.asarray(augmenter(pixels, training=False)), pixels)


def test_grey_training_model_computes_what_the_three_channel_one_does(pixels):
    classifier = build_model("seed_cnn", SIZE)
    grey = np.repeat(pixels[..., :1], 3, axis=-1)
    three = with_augmentation(classifier, seed=4)
    one = with_augmentation(classifier, seed=4, grey=True)
    assert one.input_shape == (None, SIZE, SIZE, 1)
    np.testing.assert_allclose(
        np.asarray(one(grey[..., :1], training=False)),
        np.asarray(three(grey, training=False)),
        rtol=1e-6,
    )
    augment = one.get_layer("seed_augmentation")
    augmented = np.asarray(augment(grey, training=True))
    np.testing.assert_array_equal(augmented[..., 0], augmented[..., 2])  # same map per channel


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy generator's scipy import
@pytest.mark.parametrize(
    ("shear", "zoom_x", "zoom_y", "flip"),
    [(0.2, 1.0, 1.0, False), (15.0, 1.1, 0.85, False), (-10.0, 0.8, 1.2, True)],
)
def test_augmentation_resamples_as_the_study_generator_did(shear, zoom_x, zoom_y, flip):
    image = np.random.default_rng(1).uniform(0, 255, (40, 40, 3)).astype("float32")
    study = tf.keras.preprocessing.image.ImageDataGenerator().apply_transform(
        image, {"shear": shear, "zx": zoom_x, "zy": zoom_y, "flip_horizontal": flip}
    )
    transform = study_transform(
        np.float32([math.radians(shear)]),
        np.float32([zoom_x]),
        np.float32([zoom_y]),
        np.float32([-1.0 if flip else 1.0]),
        40,
        40,
    )
    ours = keras.ops.image.affine_transform(
        image[None], transform, interpolation="bilinear", fill_mode="nearest"
    )
    np.testing.assert_allclose(np.asarray(ours)[0], study, atol=0.01)  # of 0-255


def test_augmentation_draws_the_study_ranges():
    layer = with_augmentation(build_model("seed_cnn", SIZE), seed=0).get_layer("seed_augmentation")
    assert (layer.shear_degrees, layer.zoom, layer.horizontal_flip) == (0.2, 0.2, True)
    # a one-pixel-wide vertical line: where it lands shows the flip and horizontal zoom
    line = np.zeros((200, 33, 33, 1), dtype="float32")
    line[:, :, 4, :] = 255.0
    moved = np.asarray(layer(line, training=True))[:, 16, :, 0].argmax(axis=1)
    flipped = moved > 16
    assert 0.3 < flipped.mean() < 0.7  # about half flipped
    # column 4 is 12 px left of the centre; zoom 0.8–1.2 puts it 10–15 px from the centre
    distance = np.abs(moved - 16)
    assert distance.min() >= 9 and distance.max() <= 16 and len(set(distance)) > 3


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build_model("resnet9", 64)


def blobs(n: int, size: int, seed: int, contrast: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise images, a brighter centre square on every second one (label 1): separable."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 100, (n, size, size, 1), dtype=np.uint8)
    labels = (np.arange(n) % 2).astype("float32")
    images[labels == 1, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] += contrast
    return np.repeat(images, 3, axis=-1), labels


@pytest.fixture
def deterministic_ops():
    """TensorFlow's deterministic kernels for one test: a from-scratch backbone trained for a few
    steps otherwise ends differently with the order multi-threaded reductions happened to take
    (DenseNet-121 reached 0.61 instead of ≥ 0.9 in a loaded CI run)."""
    from tensorflow.python.framework import config as framework_config  # no public "disable"

    tf.config.experimental.enable_op_determinism()
    yield
    framework_config.disable_op_determinism()


def fit_briefly(classifier: keras.Model, images, labels, epochs: int, batch_size: int = 16):
    """A short, seeded training of ``classifier`` behind the augmentation, as train.py runs it."""
    trainer = compile_for_training(with_augmentation(classifier, seed=0), learning_rate=1e-3)
    return trainer.fit(images, labels, batch_size=batch_size, epochs=epochs, verbose=0)


@pytest.mark.slow
def test_compact_cnn_predicts_after_a_short_training_what_it_learned():
    # The reported defect: after a few dozen steps compact_cnn called every image normal at
    # inference. Its batch norm's moving statistics still held most of their initial variance of
    # 1, where the first block's input varies by ~0.01.
    keras.utils.set_random_seed(0)
    images, labels = blobs(128, 48, seed=0)
    classifier = build_model("compact_cnn", 48)
    fit_briefly(classifier, images, labels, epochs=3)  # 24 steps

    first = next(
        layer for layer in classifier.layers if type(layer).__name__ == "BatchNormalization"
    )
    seen = np.asarray(keras.Model(classifier.input, first.input)(images.astype("float32")))
    ratio = np.asarray(first.moving_variance) / seen.var(axis=(0, 1, 2))
    assert 0.5 < np.median(ratio) < 2  # the moving variance describes what the layer sees

    unseen, truth = blobs(64, 48, seed=1)
    predicted = classifier.predict(unseen, verbose=0).ravel() > 0.5
    assert (predicted == truth).mean() >= 0.9


LEARNING_SIZE = 32
QUICK = {"seed_cnn", "compact_cnn"}  # the Keras Applications backbones take 20 s and more
UNLEARNED = pytest.mark.xfail(
    reason="EfficientNetB0 from scratch stays at chance after these 32 steps", strict=False
)


def _learning_case(name: str):
    if name in QUICK:
        return name
    marks = [pytest.mark.slow, UNLEARNED] if name == "efficientnetb0" else [pytest.mark.slow]
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("architecture", [_learning_case(name) for name in ARCHITECTURES])
def test_architecture_learns_a_separable_problem_and_predicts_the_same_after_reloading(
    architecture, tmp_path, deterministic_ops
):
    keras.utils.set_random_seed(0)
    images, labels = blobs(128, LEARNING_SIZE, seed=0, contrast=80)
    classifier = build_model(architecture, LEARNING_SIZE)
    fit_briefly(classifier, images, labels, epochs=4)

    unseen, truth = blobs(64, LEARNING_SIZE, seed=1, contrast=80)
    direct = np.asarray(classifier(unseen.astype("float32"), training=False)).ravel()
    assert ((direct > 0.5) == truth).mean() >= 0.9
    np.testing.assert_allclose(classifier.predict(unseen, verbose=0).ravel(), direct, atol=1e-5)
    classifier.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(unseen, verbose=0).ravel(), direct, atol=1e-5)


def test_gradient_reversal_multiplies_the_gradient_by_minus_lambda():
    layer = GradientReversal(scale=0.3)
    x = tf.constant([[1.0, -2.0, 3.0]])
    upstream = tf.constant([[0.5, 1.0, -4.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        target = tf.reduce_sum(y * upstream)  # so the gradient arriving at y is ``upstream``
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))  # identity forward
    np.testing.assert_allclose(np.asarray(tape.gradient(target, x)), -0.3 * np.asarray(upstream))
    assert GradientReversal.from_config(layer.get_config()).scale == 0.3


JAX_REVERSAL = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from cxr_model.model import GradientReversal
    layer = GradientReversal(scale=0.3)
    upstream = jnp.array([0.5, 1.0, -4.0])
    grad = jax.grad(lambda x: jnp.sum(layer(x) * upstream))(jnp.array([1.0, -2.0, 3.0]))
    assert jnp.allclose(grad, -0.3 * upstream), grad
    """
)


@pytest.mark.slow
def test_gradient_reversal_works_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", JAX_REVERSAL], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
