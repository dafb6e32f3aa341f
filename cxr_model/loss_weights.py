"""Loss weights of training images: balanced classes, and sources that count equally.

Against shortcut learning (a classifier that recognises the hospital rather than the disease,
when each source brings mostly one label), each source can be made to count equally within its
label (``source_balance``), on top of the class weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

if TYPE_CHECKING:
    from cxr_model.train import TrainParams


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Per-class loss weights for ``mode`` ('balanced': n / (classes × count)), or None."""
    if mode == "none":
        return None
    y = labels.astype(int)
    classes = np.unique(y)
    weights = compute_class_weight("balanced", classes=classes, y=y)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def source_balanced_weights(labels: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Per-image weights under which every source of a label weighs the same in total.

    Within a label of ``n`` images from ``k`` sources, an image from a source of ``m`` images
    weighs ``n / (k·m)``: each source's total is ``n / k``, and the label's total stays ``n``, so
    class weights keep their meaning on top.
    """
    y = labels.astype(int)
    origin = np.asarray(sources)
    weights = np.empty(len(y), dtype="float32")
    for label in np.unique(y):
        in_label = y == label
        names, counts = np.unique(origin[in_label], return_counts=True)
        per_source = dict(zip(names, in_label.sum() / (len(names) * counts), strict=True))
        weights[in_label] = [per_source[name] for name in origin[in_label]]
    return weights


def image_weights(
    labels: np.ndarray, sources: Sequence[str] | None, params: TrainParams
) -> np.ndarray:
    """Each training image's loss weight: its class weight, times its source weight if asked."""
    by_class = class_weights(labels, params.class_weight) or {}
    weights = np.array([by_class.get(int(y), 1.0) for y in labels], dtype="float32")
    if params.source_balance and sources is not None:  # no sources: one source, nothing to do
        weights *= source_balanced_weights(labels, sources)
    return weights


def source_indices(sources: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct sources (sorted) and each image's index among them."""
    names, indices = np.unique(np.asarray(sources, dtype=str), return_inverse=True)
    return [str(name) for name in names], indices.astype("int32")
