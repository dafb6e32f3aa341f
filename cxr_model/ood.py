"""How unlike the training images an input is: an out-of-distribution (OOD) score per image.

A classifier answers "covid or normal" for anything it is given, noise included. What it saw in
training is summarised at training time in two views of the training images, each as the mean
and a shrunk (Ledoit-Wolf) covariance, so a few hundred images and dead ReLU units still give a
usable inverse:

- the model's penultimate features (the input of its ``covid_probability`` layer): what the
  network makes of an image; noise and photographs land far from x-rays there;
- a 12 × 12 thumbnail of the model input: how the image is laid out; a lateral view or a gradient
  is far from a frontal chest there, even where the network's features are not.

An image's distance is the larger of its Mahalanobis distances in the two views (each in units of
its median on Val), and the flagging threshold is set on the *validation* images (which the model
did not fit) so that at most ``flag_rate`` of ordinary, in-distribution x-rays are flagged
(:func:`conformal_threshold`); anything farther is called out of distribution.

The fitted detector is a few arrays (:meth:`OodDetector.to_bytes`, ``.npz``) stored beside the
model version; scoring computes the features in the same forward pass as the probability
(:func:`with_features`) and the thumbnail from the model input it already has, so the check costs
two small matrix products per image.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:  # Keras and scikit-learn are imported where used: scoring imports this module
    import keras

__all__ = [
    "DEFAULT_FLAG_RATE",
    "FEATURE_LAYER",
    "OOD_FILE",
    "OodDetector",
    "Mahalanobis",
    "OodCheck",
    "feature_extractor",
    "has_feature_head",
    "thumbnails",
    "with_features",
]

FEATURE_LAYER = "covid_probability"  # its input is the penultimate representation
DEFAULT_FLAG_RATE = 0.05  # share of validation images flagged by construction
MIN_FIT_IMAGES = 10
THUMBNAIL_SIDE = 12  # the layout view: small enough to fit on a few hundred images
OOD_FILE = "ood.npz"  # the fitted detector, stored beside a registered version's model


class OodCheck(BaseModel):
    """What a model card says about its version's OOD check (the detector is :data:`OOD_FILE`)."""

    file: str = OOD_FILE
    sha256: str
    method: str = (
        "Mahalanobis distance (Ledoit-Wolf covariance) of the penultimate features and of a "
        "12 x 12 thumbnail, the larger of the two in units of its Val median"
    )
    threshold: float
    flag_rate: float
    n_train: int
    n_val: int
    flagged: dict[str, float] = Field(
        default_factory=dict,
        description="Share of each evaluated split's images flagged out of distribution (Val: "
        "about flag_rate by construction; Holdout: images of sources the model never saw).",
    )

    @classmethod
    def of(cls, data: bytes, detector: OodDetector, flagged: dict[str, float]) -> OodCheck:
        """The card entry for ``detector`` stored as ``data`` (its :meth:`~OodDetector.to_bytes`)."""
        return cls(
            sha256=hashlib.sha256(data).hexdigest(),
            threshold=detector.threshold,
            flag_rate=detector.flag_rate,
            n_train=detector.n_train,
            n_val=detector.n_val,
            flagged=flagged,
        )


def with_features(model: keras.Model) -> keras.Model:
    """``model`` with two outputs: the probability and the penultimate features (one pass).

    Raises ValueError for a model whose probability layer is not a dense head over one feature
    vector (a cross-validation ensemble averages its members' probabilities instead).
    """
    import keras

    head = _head(model)
    return keras.Model(model.inputs, [model.outputs[0], head.input], name=f"{model.name}_features")


def has_feature_head(model: keras.Model) -> bool:
    """``model`` ends in a dense probability layer over penultimate features (not an ensemble)."""
    try:
        _head(model)
    except ValueError:
        return False
    return True


def feature_extractor(model: keras.Model) -> keras.Model:
    """Only the penultimate features of ``model`` (for fitting on training images)."""
    import keras

    return keras.Model(model.inputs, _head(model).input)


def _head(model: keras.Model) -> keras.layers.Layer:
    import keras

    try:
        head = model.get_layer(FEATURE_LAYER)
    except ValueError:
        head = None
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(
            f"{model.name} has no dense {FEATURE_LAYER!r} layer over penultimate features, so "
            "it has no out-of-distribution check (an ensemble averages its members instead)"
        )
    return head


@dataclass(frozen=True)
class Mahalanobis:
    """Mean and shrunk inverse covariance of a set of vectors; distances of others to them."""

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray) -> Mahalanobis:
        from sklearn.covariance import LedoitWolf

        covariance = LedoitWolf().fit(_as_matrix(vectors))
        return cls(
            covariance.location_.astype(np.float64), covariance.precision_.astype(np.float64)
        )

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        centred = _as_matrix(vectors) - self.mean
        squared = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        return np.sqrt(np.maximum(squared, 0.0))


def conformal_threshold(val_distances: np.ndarray, flag_rate: float) -> float:
    """The Val distance of rank ⌈(n + 1)(1 − flag_rate)⌉ (split conformal): a new image from
    Val's distribution exceeds it with probability at most ``flag_rate``, however few the Val
    images (with fewer than 1 / flag_rate − 1 of them it is their largest)."""
    ordered = np.sort(np.asarray(val_distances, dtype=np.float64))
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * (1 - flag_rate)))
    return float(ordered[rank - 1])


def thumbnails(images: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Each model input ``(n, size, size, channels)`` as a ``side`` × ``side`` grey thumbnail
    (block means of its centre), flattened: the image's layout without its detail."""
    images = np.asarray(images)
    block = images.shape[1] // side
    if block < 1:
        raise ValueError(f"images of {images.shape[1]} px are smaller than a {side} px thumbnail")
    start = (images.shape[1] - block * side) // 2
    centre = images[:, start : start + block * side, start : start + block * side, 0]
    blocks = centre.reshape(len(images), side, block, side, block).astype(np.float64)
    return blocks.mean(axis=(2, 4)).reshape(len(images), side * side)


@dataclass(frozen=True)
class OodDetector:
    """How far an image is from the training images, in two views, with a threshold from Val.

    The penultimate features say what the network makes of an image (noise and photographs land
    far away); a 12 × 12 thumbnail of the model input says how the image is laid out (a lateral
    view, a gradient or a blank page has no frontal chest's layout, whatever the network makes of
    it). Each view's Mahalanobis distance is divided by its median on Val, the larger of the two
    is the image's distance, and the threshold is :func:`conformal_threshold` of the Val distances.
    """

    features: Mahalanobis
    pixels: Mahalanobis
    scales: tuple[float, float]
    threshold: float
    flag_rate: float
    n_train: int
    n_val: int

    @classmethod
    def fit(
        cls,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        flag_rate: float = DEFAULT_FLAG_RATE,
    ) -> OodDetector:
        """Fit on Train's (features, thumbnails); calibrate on Val's."""
        n_train, n_val = len(train[0]), len(val[0])
        if n_train < MIN_FIT_IMAGES or n_val < 1:
            raise ValueError(
                f"the OOD check needs ≥ {MIN_FIT_IMAGES} training and ≥ 1 validation images "
                f"(got {n_train} and {n_val})"
            )
        if not 0 < flag_rate < 1:
            raise ValueError(f"flag_rate must be between 0 and 1, got {flag_rate}")
        features, pixels = Mahalanobis.fit(train[0]), Mahalanobis.fit(train[1])
        scales = tuple(
            max(float(np.median(view.distances(values))), 1e-12)
            for view, values in ((features, val[0]), (pixels, val[1]))
        )
        fitted = cls(features, pixels, scales, 1.0, flag_rate, n_train, n_val)
        return replace(fitted, threshold=conformal_threshold(fitted.distances(*val), flag_rate))

    def distances(self, features: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """The larger of the two views' distances, each in units of its Val median."""
        return np.maximum(
            self.features.distances(features) / self.scales[0],
            self.pixels.distances(pixels) / self.scales[1],
        )

    def scores(self, features: np.ndarray, images: np.ndarray) -> np.ndarray:
        """OOD scores of model inputs ``images`` with their penultimate ``features``: the
        distance over the threshold, so above 1.0 is out of distribution."""
        return self.distances(features, thumbnails(images)) / self.threshold

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            feature_mean=self.features.mean,
            feature_precision=self.features.precision,
            pixel_mean=self.pixels.mean,
            pixel_precision=self.pixels.precision,
            calibration=np.array(
                [*self.scales, self.threshold, self.flag_rate, self.n_train, self.n_val]
            ),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> OodDetector:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            f_scale, p_scale, threshold, flag_rate, n_train, n_val = arrays["calibration"].tolist()
            return cls(
                features=Mahalanobis(arrays["feature_mean"], arrays["feature_precision"]),
                pixels=Mahalanobis(arrays["pixel_mean"], arrays["pixel_precision"]),
                scales=(f_scale, p_scale),
                threshold=threshold,
                flag_rate=flag_rate,
                n_train=int(n_train),
                n_val=int(n_val),
            )


def _as_matrix(values: np.ndarray) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    return matrix.reshape(len(matrix), -1)
