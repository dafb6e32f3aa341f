"""How unlike the training images an input is: an out-of-distribution (OOD) score per image.

A classifier answers "covid or normal" for anything it is given, noise included. What it saw in
training is summarised at training time by the Mahalanobis distance of the model's penultimate
features (the input of its ``covid_probability`` layer) to the training images' features: their
mean and a shrunk (Ledoit-Wolf) covariance, so a few hundred images and dead ReLU units still give
a usable inverse. The flagging threshold is the distance that ``flag_rate`` of the *validation*
images exceed (calibrated on images the model did not fit), so about that share of ordinary,
in-distribution x-rays is flagged and anything farther than that is called out of distribution.

The fitted detector is a few arrays (:meth:`FeatureDistance.to_bytes`, ``.npz``) stored beside the
model version; scoring computes the features in the same forward pass as the probability
(:func:`with_features`), so the check costs one matrix product per image.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:  # Keras and scikit-learn are imported where used: scoring imports this module
    import keras

__all__ = [
    "DEFAULT_FLAG_RATE",
    "FEATURE_LAYER",
    "OOD_FILE",
    "FeatureDistance",
    "OodCheck",
    "feature_extractor",
    "with_features",
]

FEATURE_LAYER = "covid_probability"  # its input is the penultimate representation
DEFAULT_FLAG_RATE = 0.05  # share of validation images flagged by construction
MIN_FIT_IMAGES = 10
OOD_FILE = "ood.npz"  # the fitted detector, stored beside a registered version's model


class OodCheck(BaseModel):
    """What a model card says about its version's OOD check (the detector is :data:`OOD_FILE`)."""

    file: str = OOD_FILE
    sha256: str
    method: str = "Mahalanobis distance of the penultimate features (Ledoit-Wolf covariance)"
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
    def of(cls, data: bytes, detector: FeatureDistance, flagged: dict[str, float]) -> OodCheck:
        """The card entry for ``detector`` stored as ``data`` (its :meth:`~FeatureDistance.to_bytes`)."""
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
class FeatureDistance:
    """Mahalanobis distance to the training features, and the threshold calibrated on Val."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    flag_rate: float
    n_train: int
    n_val: int

    @classmethod
    def fit(
        cls, train: np.ndarray, val: np.ndarray, flag_rate: float = DEFAULT_FLAG_RATE
    ) -> FeatureDistance:
        """Fit on training features; calibrate the threshold on validation features."""
        train, val = _as_matrix(train), _as_matrix(val)
        if len(train) < MIN_FIT_IMAGES or len(val) < 1:
            raise ValueError(
                f"the OOD check needs ≥ {MIN_FIT_IMAGES} training and ≥ 1 validation images "
                f"(got {len(train)} and {len(val)})"
            )
        if not 0 < flag_rate < 1:
            raise ValueError(f"flag_rate must be between 0 and 1, got {flag_rate}")
        from sklearn.covariance import LedoitWolf

        covariance = LedoitWolf().fit(train)
        fitted = cls(
            mean=covariance.location_.astype(np.float64),
            precision=covariance.precision_.astype(np.float64),
            threshold=0.0,
            flag_rate=flag_rate,
            n_train=len(train),
            n_val=len(val),
        )
        threshold = float(np.quantile(fitted.distances(val), 1 - flag_rate))
        return cls(**{**fitted.__dict__, "threshold": threshold})

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance of each row of ``features`` to the training features."""
        centred = _as_matrix(features) - self.mean
        squared = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        return np.sqrt(np.maximum(squared, 0.0))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance relative to the threshold: above 1.0 is out of distribution."""
        return self.distances(features) / self.threshold if self.threshold > 0 else np.inf

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features) <= 1.0

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            precision=self.precision,
            calibration=np.array([self.threshold, self.flag_rate, self.n_train, self.n_val]),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureDistance:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            threshold, flag_rate, n_train, n_val = arrays["calibration"].tolist()
            return cls(
                mean=arrays["mean"],
                precision=arrays["precision"],
                threshold=threshold,
                flag_rate=flag_rate,
                n_train=int(n_train),
                n_val=int(n_val),
            )


def _as_matrix(features: np.ndarray) -> np.ndarray:
    matrix = np.asarray(features, dtype=np.float64)
    return matrix.reshape(len(matrix), -1)
