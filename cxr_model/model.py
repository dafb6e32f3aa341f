"""Classifiers for COVID-19 vs normal x-rays, built with backend-neutral Keras 3 layers.

Input: images of ``image_size``×``image_size``×3 with pixel values 0–255 (the output of
:func:`cxr_model.images.to_model_input`, any numeric dtype); each model's own preprocessing
(rescaling, ImageNet normalisation) is part of the model, so a saved model takes raw pixels at
scoring time. Output: the probability that the x-ray shows COVID-19, in float32 whatever the
dtype policy.

Architectures (:data:`ARCHITECTURES`):

- ``seed_cnn``: the study's network, layer for layer (the default).
- ``compact_cnn``: a small modern CNN (conv + batch norm + relu blocks, global average pooling),
  quick to retrain and independent of the input size in parameter count.
- ``densenet121``, ``efficientnetb0``, ``resnet50``: Keras Applications backbones without their
  ImageNet top, average-pooled, under a sigmoid head. They take the same 0–255 input; each
  backbone's ImageNet preprocessing is expressed as built-in layers, so models save and load in
  safe mode without custom code.

The seed augmentation (shear, zoom, flip: one :class:`StudyAugmentation` layer) is placed in
front of the classifier only for training (:func:`with_augmentation`); the registered model is the
classifier alone, so scoring never carries augmentation layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

# The study's ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True,
# rescale=1/255). Its shear_range is an angle in degrees, so the study sheared by at most 0.2°.
SHEAR_DEGREES = 0.2
ZOOM = 0.2
FLIP_PROBABILITY = 0.5
FILL_MODE = "nearest"  # ImageDataGenerator's default
RESCALE = 1.0 / 255
DROPOUT_CONV = 0.25
DROPOUT_DENSE = 0.5
DENSE_UNITS = 64
KERNEL = (3, 3)
POOL = (2, 2)

COMPACT_FILTERS = (32, 64, 128, 256)
# Keras' default momentum (0.99) keeps 0.99**steps of the initial statistics (mean 0, variance 1)
# in the moving averages that inference uses: after 6 epochs of ~14 steps still 43 %, while the
# first block's input variance is ~0.007, so every prediction collapsed to one class. At 0.7 the
# initial values are gone within an epoch and the averages follow the last few batches.
BATCH_NORM_MOMENTUM = 0.7
COMPACT_DROPOUT = 0.3
HEAD_DROPOUT = 0.2

# ImageNet statistics the Keras Applications weights were trained with (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MIN_BACKBONE_SIZE = 32
CHANNELS = 3


@keras.saving.register_keras_serializable(package="cxr")
class StudyAugmentation(layers.Layer):
    """The study's augmentation (ImageDataGenerator shear, zoom, horizontal flip) in one resampling.

    Per image, as ``ImageDataGenerator.get_random_transform``/``apply_transform`` draw and apply
    them: a shear angle in ±``shear_degrees`` (horizontal: a row moves by its height), zoom factors
    along x and y drawn independently from 1 ± ``zoom``, then a horizontal flip with probability
    ½. The three compose into one affine map, so each image is resampled once (bilinear, edges
    extended), as the study's scipy transform does, rather than once per Keras Random* layer:
    sharper, and three times less work. Identity outside training. Backend-neutral (``keras.ops``).
    """

    def __init__(
        self,
        shear_degrees: float = SHEAR_DEGREES,
        zoom: float = ZOOM,
        horizontal_flip: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.shear_degrees = shear_degrees
        self.zoom = zoom
        self.horizontal_flip = horizontal_flip
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # TensorFlow has no XLA kernel for the projective transform

    def call(self, images, training=False):
        if not training:
            return images
        batch = ops.shape(images)[0]
        height, width = ops.shape(images)[1], ops.shape(images)[2]
        shear = math.radians(self.shear_degrees)
        angle = keras.random.uniform(
            (batch,), -shear, shear, dtype="float32", seed=self.seed_generator
        )
        zoom_x, zoom_y = ops.unstack(
            keras.random.uniform(
                (2, batch), 1 - self.zoom, 1 + self.zoom, dtype="float32", seed=self.seed_generator
            )
        )
        flip = ops.ones((batch,), dtype="float32")
        if self.horizontal_flip:
            coin = keras.random.uniform((batch,), dtype="float32", seed=self.seed_generator)
            flip = ops.where(coin < FLIP_PROBABILITY, -flip, flip)
        transform = study_transform(angle, zoom_x, zoom_y, flip, height, width)
        return ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode=FILL_MODE
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "shear_degrees": self.shear_degrees,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "seed": self.seed,
        }


def study_transform(angle, zoom_x, zoom_y, flip, height, width):
    """Per-image affine maps (n, 8) from output to input pixel, as ``keras.ops.image`` takes them.

    ImageDataGenerator's map in pixel coordinates centred on the image middle ``(c_x, c_y)``, with
    the flip (``flip`` = −1) applied to its output:
    ``x_in − c_x = zoom_x·flip·(x − c_x) − sin(angle)·zoom_y·(y − c_y)`` and
    ``y_in − c_y = cos(angle)·zoom_y·(y − c_y)``.
    """
    centre_x = ops.cast(width, "float32") / 2 - 0.5
    centre_y = ops.cast(height, "float32") / 2 - 0.5
    a0 = zoom_x * flip
    a1 = -ops.sin(angle) * zoom_y
    b1 = ops.cos(angle) * zoom_y
    zeros = ops.zeros_like(a0)
    return ops.stack(
        [
            a0,
            a1,
            centre_x - a0 * centre_x - a1 * centre_y,
            zeros,
            b1,
            centre_y - b1 * centre_y,
            zeros,
            zeros,
        ],
        axis=1,
    )


def seed_augmentation(seed: int | None = None) -> StudyAugmentation:
    """The study's shear, zoom and horizontal flip as one layer; identity outside training."""
    return StudyAugmentation(seed=seed, dtype="float32", name="seed_augmentation")


def _xray_input(image_size: int) -> keras.KerasTensor:
    return keras.Input(shape=(image_size, image_size, CHANNELS), name="xray")


def _probability(x: keras.KerasTensor) -> keras.KerasTensor:
    # float32 output keeps probabilities exact under a mixed-precision policy
    return layers.Dense(1, activation="sigmoid", dtype="float32", name="covid_probability")(x)


def seed_cnn(image_size: int = 224) -> keras.Model:
    """Conv32 → Conv64 → Pool → Drop .25 → Conv128 → Pool → Drop .25 → Dense64 → Drop .5 → sigmoid."""
    inputs = _xray_input(image_size)
    x = layers.Rescaling(RESCALE, name="rescale")(inputs)
    x = layers.Conv2D(32, KERNEL, activation="relu")(x)
    x = layers.Conv2D(64, KERNEL, activation="relu")(x)
    x = layers.MaxPooling2D(POOL)(x)
    x = layers.Dropout(DROPOUT_CONV)(x)
    x = layers.Conv2D(128, KERNEL, activation="relu")(x)
    x = layers.MaxPooling2D(POOL)(x)
    x = layers.Dropout(DROPOUT_CONV)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(DENSE_UNITS, activation="relu")(x)
    x = layers.Dropout(DROPOUT_DENSE)(x)
    return keras.Model(inputs, _probability(x), name="seed_cnn")


def compact_cnn(image_size: int = 224) -> keras.Model:
    """Four conv (no bias) → batch norm → relu → pool blocks, global average pool, dropout, sigmoid."""
    inputs = _xray_input(image_size)
    x = layers.Rescaling(RESCALE, name="rescale")(inputs)
    for filters in COMPACT_FILTERS:
        x = layers.Conv2D(filters, KERNEL, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(POOL)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(COMPACT_DROPOUT)(x)
    return keras.Model(inputs, _probability(x), name="compact_cnn")


def _imagenet_normalization(name: str) -> layers.Normalization:
    """0–255 pixels → (pixel/255 − ImageNet mean) / ImageNet std, per RGB channel ("torch" mode)."""
    return layers.Normalization(
        mean=[255 * m for m in IMAGENET_MEAN],
        variance=[(255 * s) ** 2 for s in IMAGENET_STD],
        dtype="float32",
        name=name,
    )


def _caffe_preprocessing(x: keras.KerasTensor) -> keras.KerasTensor:
    """RGB 0–255 → BGR minus the ImageNet BGR mean ("caffe" mode), as a fixed 1×1 convolution.

    A 1×1 convolution with a channel-permutation kernel and the negated mean as bias is exactly
    ``x[..., ::-1] - mean`` and, unlike a Lambda layer, saves and loads in safe mode.
    """
    layer = layers.Conv2D(CHANNELS, 1, trainable=False, dtype="float32", name="caffe_bgr")
    out = layer(x)
    reverse = np.eye(CHANNELS, dtype="float32")[::-1].reshape(1, 1, CHANNELS, CHANNELS)
    layer.set_weights([reverse, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
    return out


def _set_imagenet_statistics(backbone: keras.Model) -> None:
    """Give EfficientNet's built-in Normalization layer the ImageNet mean and variance.

    Keras builds it unadapted (mean 0, variance 1) for ``weights=None`` and, for its ImageNet
    file, stores standard deviations where variances belong (fixed by an extra layer only when
    Keras downloads the weights itself). Setting the statistics here makes every EfficientNet
    normalise as its ImageNet weights expect, whatever weights file is loaded.
    """
    normalization = next(
        layer for layer in backbone.layers if isinstance(layer, layers.Normalization)
    )
    normalization.adapt_mean.assign(np.asarray(IMAGENET_MEAN, dtype="float32"))
    normalization.adapt_variance.assign(np.square(np.asarray(IMAGENET_STD, dtype="float32")))
    normalization.finalize_state()


def _backbone_classifier(
    name: str, backbone: keras.Model, preprocess: Callable | None, image_size: int
) -> keras.Model:
    """xray → preprocessing → backbone (avg-pooled features) → dropout → sigmoid."""
    inputs = _xray_input(image_size)
    x = preprocess(inputs) if preprocess else inputs
    x = backbone(x)
    x = layers.Dropout(HEAD_DROPOUT, name="head_dropout")(x)
    return keras.Model(inputs, _probability(x), name=name)


def _application(constructor: Callable, image_size: int, weights: Path | None) -> keras.Model:
    if image_size < MIN_BACKBONE_SIZE:
        raise ValueError(
            f"Keras Applications backbones need images of at least {MIN_BACKBONE_SIZE}px"
        )
    backbone = constructor(
        include_top=False,
        weights=None if weights is None else str(weights),
        input_shape=(image_size, image_size, CHANNELS),
        pooling="avg",
    )
    # inference statistics that follow x-rays within an epoch, as compact_cnn's do
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    return backbone


def densenet121(image_size: int = 224, weights: Path | None = None) -> keras.Model:
    """DenseNet121 (ImageNet "torch" normalisation in front) under a sigmoid head."""
    backbone = _application(keras.applications.DenseNet121, image_size, weights)
    normalize = _imagenet_normalization("imagenet_normalization")
    return _backbone_classifier("densenet121", backbone, normalize, image_size)


def efficientnetb0(image_size: int = 224, weights: Path | None = None) -> keras.Model:
    """EfficientNetB0, which rescales and normalises 0–255 input itself, under a sigmoid head."""
    backbone = _application(keras.applications.EfficientNetB0, image_size, weights)
    _set_imagenet_statistics(backbone)
    return _backbone_classifier("efficientnetb0", backbone, None, image_size)


def resnet50(image_size: int = 224, weights: Path | None = None) -> keras.Model:
    """ResNet50 (ImageNet "caffe" preprocessing in front) under a sigmoid head."""
    backbone = _application(keras.applications.ResNet50, image_size, weights)
    return _backbone_classifier("resnet50", backbone, _caffe_preprocessing, image_size)


def _own_network(builder: Callable[[int], keras.Model]) -> Callable[..., keras.Model]:
    """Our CNNs take a weights file for the whole classifier (``.weights.h5``)."""

    def build(image_size: int = 224, weights: Path | None = None) -> keras.Model:
        model = builder(image_size)
        if weights is not None:
            model.load_weights(weights)
        return model

    return build


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": _own_network(seed_cnn),
    "compact_cnn": _own_network(compact_cnn),
    "densenet121": densenet121,
    "efficientnetb0": efficientnetb0,
    "resnet50": resnet50,
}
"""Architecture name → builder ``(image_size, weights=None) -> keras.Model``."""


def build_model(
    architecture: str, image_size: int, weights: str | Path | None = None
) -> keras.Model:
    """A fresh, uncompiled classifier of the named architecture.

    ``weights``: None (random initialisation) or a local weights file: for the Keras Applications
    backbones a notop ``.h5``/``.weights.h5`` file of the backbone, for our CNNs a
    ``.weights.h5`` of the whole classifier. Nothing is ever downloaded; fetch an ``s3://`` URI
    first (:func:`cxr_model.train.fetch_weights`).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}"
        )
    if weights is not None:
        if str(weights).startswith("s3://"):
            raise ValueError(f"weights {weights} are in S3: fetch them to a local file first")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        weights = Path(weights)
    return ARCHITECTURES[architecture](image_size=image_size, weights=weights)


def _augmented_xray(
    classifier: keras.Model, seed: int | None, grey: bool
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The training input and its augmented version in the shape ``classifier`` takes."""
    height, width, channels = classifier.input_shape[1:]
    inputs = keras.Input(shape=(height, width, 1 if grey else channels), name="xray")
    x = seed_augmentation(seed)(inputs)
    if grey:
        x = layers.Concatenate(name="grey_to_channels")([x] * channels)
    return inputs, x


def with_augmentation(
    classifier: keras.Model, seed: int | None = None, grey: bool = False
) -> keras.Model:
    """The training model: seed augmentation, then ``classifier`` (whose layers it shares).

    ``grey``: the training model takes one channel, augments it and repeats it to the
    classifier's three. For x-rays whose channels are copies of one (as
    :func:`cxr_model.images.to_model_input` makes them) this is the same computation with a third
    of the input bytes and augmentation work; the classifier, and so scoring, is unchanged.
    """
    inputs, x = _augmented_xray(classifier, seed, grey)
    return keras.Model(inputs, classifier(x), name=f"{classifier.name}_training")


@keras.saving.register_keras_serializable(package="cxr")
class GradientReversal(layers.Layer):
    """Identity forward; backward, the incoming gradient times ``-scale``. Backend-neutral.

    Features in front of it are trained to make whatever stands behind it fail: the domain-
    adversarial trick (Ganin & Lempitsky, 2015) with ``scale`` as its λ.
    """

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        scale = self.scale

        @ops.custom_gradient
        def reverse(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return ops.multiply(upstream, -scale)

            return ops.copy(x), grad

        return reverse(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


UNKNOWN_SOURCE = -1
"""Source index of images whose source the adversary must not learn from (validation)."""


@keras.saving.register_keras_serializable(package="cxr")
class SourceAdversaryLoss(layers.Layer):
    """Adds the adversary's sparse categorical cross-entropy to the model's loss.

    Takes ``[covid_probability, source, source_probabilities]`` and passes the probability
    through, so the training model keeps one output (and its metrics keep their names). Images of
    source :data:`UNKNOWN_SOURCE` add nothing: validation batches carry no sources.
    """

    def call(self, inputs):
        probability, source, source_probabilities = inputs
        source = ops.reshape(ops.cast(source, "int32"), (-1,))
        known = ops.cast(source != UNKNOWN_SOURCE, "float32")
        crossentropy = keras.losses.sparse_categorical_crossentropy(
            ops.maximum(source, 0), source_probabilities
        )
        self.add_loss(ops.sum(crossentropy * known) / ops.maximum(ops.sum(known), 1.0))
        return probability

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def with_source_adversary(
    classifier: keras.Model,
    sources: int,
    weight: float,
    seed: int | None = None,
    grey: bool = False,
) -> keras.Model:
    """The training model of :func:`with_augmentation` plus a source-adversarial head.

    Inputs ``{"xray": images, "source": source index}``; output the covid probability. The
    classifier's penultimate features go through :class:`GradientReversal` (λ = ``weight``) into
    a softmax over the ``sources`` image sources, whose cross-entropy joins the loss: the head
    learns to tell sources apart, the features learn to hide them (objective BCE − λ·CE for the
    features). The classifier alone, which scoring uses, never carries the head.
    """
    inputs, x = _augmented_xray(classifier, seed, grey)
    source = keras.Input(shape=(), dtype="int32", name="source")
    features = classifier.get_layer("covid_probability").input
    probability, hidden = keras.Model(classifier.input, [classifier.output, features])(x)
    reversed_features = GradientReversal(weight, name="gradient_reversal")(hidden)
    guess = layers.Dense(sources, activation="softmax", dtype="float32", name="source_guess")(
        reversed_features
    )
    probability = SourceAdversaryLoss(dtype="float32", name="source_adversary")(
        [probability, source, guess]
    )
    return keras.Model(
        {"xray": inputs, "source": source}, probability, name=f"{classifier.name}_adversarial"
    )


def compile_for_training(
    model: keras.Model, learning_rate: float, jit_compile: bool = False
) -> keras.Model:
    """The study's training setup: adam and binary cross-entropy, reporting accuracy and AUC.

    ``jit_compile`` asks for XLA; Keras falls back (with a warning) when a layer cannot be
    compiled, as its random image layers cannot on TensorFlow, so read ``model.jit_compile``
    afterwards for what is used.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
        jit_compile=jit_compile,
    )
    return model
