"""The study's CNN, layer by layer, and augmentation that acts only while training."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_model.model import build_model, seed_cnn, with_augmentation


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
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_augmentation_is_identity_outside_training():
    classifier = build_model("seed_cnn", 48)
    trainer = with_augmentation(classifier, seed=1)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype("float32")
    inference = np.asarray(trainer(pixels, training=False))
    np.testing.assert_allclose(inference, np.asarray(classifier(pixels, training=False)), rtol=1e-6)
    augmenter = trainer.layers[1]
    assert augmenter.name == "seed_augmentation"
    assert not np.allclose(np.asarray(augmenter(pixels, training=True)), pixels)
    assert np.allclose(np.asarray(augmenter(pixels, training=False)), pixels)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build_model("resnet9", 64)
