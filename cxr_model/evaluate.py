"""Evaluate a classifier on the validation split with scikit-learn's metrics."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

DEFAULT_THRESHOLD = 0.5


class Evaluation(BaseModel):
    """Validation metrics at a decision threshold; covid is the positive class."""

    n_images: int
    n_covid: int
    n_normal: int
    threshold: float
    accuracy: float
    auc: float | None  # undefined when the split has a single class
    sensitivity: float | None
    specificity: float | None
    confusion_matrix: dict[str, int]  # tp, fn, fp, tn


def evaluate_predictions(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> Evaluation:
    """Metrics for binary ``labels`` (1 = covid) and predicted covid ``probabilities``."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    return Evaluation(
        n_images=len(labels),
        n_covid=int(labels.sum()),
        n_normal=int((1 - labels).sum()),
        threshold=threshold,
        accuracy=float(accuracy_score(labels, predicted)),
        auc=float(roc_auc_score(labels, probabilities)) if both_classes else None,
        sensitivity=float(tp / (tp + fn)) if tp + fn else None,
        specificity=float(tn / (tn + fp)) if tn + fp else None,
        confusion_matrix={"tp": int(tp), "fn": int(fn), "fp": int(fp), "tn": int(tn)},
    )
