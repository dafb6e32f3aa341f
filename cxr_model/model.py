"""The study's CNN, built with backend-neutral Keras 3 layers (no ``tf.*`` in the model).

Input: images of ``image_size``×``image_size``×3 with pixel values 0–255 (the output of
:func:`cxr_model.images.to_model_input`); rescaling to 0–1 is the classifier's first layer, so a
saved model takes raw pixels at scoring time. Output: the probability that the x-ray shows COVID-19.

The seed augmentation (shear, zoom, flip) is a block of preprocessing layers placed in front of the
classifier only for training (:func:`with_augmentation`); the registered model is the classifier
alone, so scoring never carries augmentation layers.
"""

from __future__ import annotations

import keras
from keras import layers

# The study's ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True, rescale=1/255).
SHEAR = 0.2
ZOOM = 0.2
RESCALE = 1.0 / 255
DROPOUT_CONV = 0.25
DROPOUT_DENSE = 0.5
DENSE_UNITS = 64
KERNEL = (3, 3)
POOL = (2, 2)


def seed_augmentation(seed: int | None = None) -> keras.Sequential:
    """Shear, zoom and horizontal flip as layers; they are identity outside training."""
    return keras.Sequential(
        [
            layers.RandomShear(x_factor=SHEAR, y_factor=SHEAR, seed=seed),
            layers.RandomZoom(height_factor=(-ZOOM, ZOOM), width_factor=(-ZOOM, ZOOM), seed=seed),
            layers.RandomFlip("horizontal", seed=seed),
        ],
        name="seed_augmentation",
    )


def seed_cnn(image_size: int = 224) -> keras.Model:
    """Conv32 → Conv64 → Pool → Drop .25 → Conv128 → Pool → Drop .25 → Dense64 → Drop .5 → sigmoid."""
    inputs = keras.Input(shape=(image_size, image_size, 3), name="xray")
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
    # float32 output keeps probabilities exact under a mixed-precision policy
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="covid_probability")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


ARCHITECTURES = {"seed_cnn": seed_cnn}


def build_model(architecture: str, image_size: int) -> keras.Model:
    """A fresh, uncompiled classifier of the named architecture."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture](image_size=image_size)


def with_augmentation(classifier: keras.Model, seed: int | None = None) -> keras.Model:
    """The training model: seed augmentation, then ``classifier`` (whose layers it shares)."""
    inputs = keras.Input(shape=classifier.input_shape[1:], name="xray")
    outputs = classifier(seed_augmentation(seed)(inputs))
    return keras.Model(inputs, outputs, name=f"{classifier.name}_training")


def compile_for_training(model: keras.Model, learning_rate: float) -> keras.Model:
    """The study's training setup: adam and binary cross-entropy, reporting accuracy and AUC."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model
