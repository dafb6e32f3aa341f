"""Evaluate a classifier honestly: scikit-learn metrics, a bootstrap CI and the decision threshold.

Covid is the positive class (label 1). :func:`evaluate_predictions` gives the ranking quality
(ROC AUC with a 95% bootstrap interval, average precision), the calibration (Brier score) and the
decisions at a threshold (confusion matrix, sensitivity, specificity, PPV, NPV, F1, accuracy),
overall and per source. A metric that is undefined on the data (e.g. AUC with a single class) is
``None``, never NaN.

When no threshold is given it is chosen on the same data by a :class:`ThresholdRule` (Youden's J by
default). That makes the threshold-dependent numbers optimistic for these data; the AUC, average
precision and Brier score do not depend on it. PPV and NPV depend on the covid share of the data,
which rarely matches the share where a model would be used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

DEFAULT_THRESHOLD = 0.5  # used when the data cannot choose one (a single class)
DEFAULT_TARGET_SENSITIVITY = 0.95
DEFAULT_BOOTSTRAP = 1000
CI_LEVEL = 0.95


UNKNOWN_SOURCE = "(unknown)"


# Metrics summarised over cross-validation folds, with their table headings.
FOLD_METRICS = {
    "auc": "AUC",
    "average_precision": "AP",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "accuracy": "accuracy",
    "brier": "Brier",
    "threshold": "threshold",
}


class ThresholdRule(BaseModel):
    """How the decision threshold is chosen from validation data when none is given."""

    rule: Literal["youden", "sensitivity"] = Field(
        default="youden",
        description="youden: maximise sensitivity + specificity - 1 on the ROC curve; "
        "sensitivity: the highest threshold whose sensitivity reaches target_sensitivity.",
    )
    target_sensitivity: float = Field(
        default=DEFAULT_TARGET_SENSITIVITY,
        gt=0,
        le=1,
        description="Sensitivity the 'sensitivity' rule must reach.",
    )

    @property
    def name(self) -> str:
        """``youden`` or ``sensitivity>=0.95``, as recorded in :attr:`Evaluation.threshold_rule`."""
        if self.rule == "youden":
            return "youden"
        return f"sensitivity>={self.target_sensitivity:g}"


class SourceEvaluation(BaseModel):
    """Metrics of the images of one source, at the overall threshold."""

    source: str
    n_images: int
    n_covid: int
    n_normal: int
    accuracy: float
    auc: float | None  # None when the source has a single class
    sensitivity: float | None  # None without covid images
    specificity: float | None  # None without normal images


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
    threshold_rule: str = "given"  # "given", "youden", "sensitivity>=0.95", "default (...)"
    auc_ci_low: float | None = None  # percentile bootstrap, resampled within each class
    auc_ci_high: float | None = None
    n_bootstrap: int = 0
    ppv: float | None = None  # precision: covid among the images called covid
    npv: float | None = None  # normal among the images called normal
    f1: float | None = None
    brier: float | None = None  # mean squared error of the probabilities; lower is better
    average_precision: float | None = None
    per_source: list[SourceEvaluation] = Field(default_factory=list)


def as_arrays(labels: Iterable, probabilities: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints and probabilities as floats, checked for shape, range and NaN."""
    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(probabilities, dtype=float).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        raise ValueError("nothing to evaluate: no labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (covid), got {sorted(set(y.tolist()))}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must be finite numbers between 0 and 1")
    return y, p


def both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


def choose_threshold(
    labels: Iterable,
    probabilities: Iterable,
    rule: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
) -> float:
    """The threshold (call covid when probability ≥ it) that ``rule`` picks on these data.

    ``youden`` maximises Youden's J = sensitivity + specificity − 1 over the ROC curve (the highest
    such threshold on a tie); ``sensitivity`` gives the highest threshold whose sensitivity is at
    least ``target_sensitivity``. With a single class there is no curve: 0.5.
    """
    chosen = ThresholdRule(rule=rule, target_sensitivity=target_sensitivity)
    y, p = as_arrays(labels, probabilities)
    if not both_classes(y):
        return DEFAULT_THRESHOLD
    # Every distinct score is a candidate; dropping "intermediate" points could skip the exact
    # threshold where sensitivity first reaches the target.
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # The first point is "nothing is covid" at an infinite threshold: not a usable threshold.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if chosen.rule == "youden":
        best = int(np.argmax(tpr - fpr))  # thresholds decrease, so argmax takes the highest
    else:
        reaching = np.flatnonzero(tpr >= chosen.target_sensitivity)
        best = int(reaching[0])  # the last point has tpr 1, so one always reaches
    return float(thresholds[best])


# --- metrics ------------------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def _counts(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    """``(tn, fp, fn, tp)`` with covid (1) as positive."""
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return int(tn), int(fp), int(fn), int(tp)


def _auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, probabilities)) if both_classes(labels) else None


def _weighted_aucs(
    positives: np.ndarray, negatives: np.ndarray, pos_weights: np.ndarray, neg_weights: np.ndarray
) -> np.ndarray:
    """ROC AUC of many weighted resamples at once (Mann–Whitney: ties count one half).

    ``negatives`` must be sorted ascending; ``pos_weights`` (B × n_pos) and ``neg_weights``
    (B × n_neg) are how often each image appears in each of B resamples. Equal to scikit-learn's
    ``roc_auc_score`` with those sample weights, without B separate calls.
    """
    cumulative = np.concatenate(
        [np.zeros((len(neg_weights), 1)), np.cumsum(neg_weights, axis=1)], axis=1
    )
    below = np.searchsorted(negatives, positives, side="left")
    up_to = np.searchsorted(negatives, positives, side="right")
    beaten = cumulative[:, below] + 0.5 * (cumulative[:, up_to] - cumulative[:, below])
    pairs = pos_weights.sum(axis=1) * neg_weights.sum(axis=1)
    return (pos_weights * beaten).sum(axis=1) / pairs


def bootstrap_aucs(
    labels: Iterable, probabilities: Iterable, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> np.ndarray:
    """AUCs of ``n_bootstrap`` resamples drawn with replacement *within each class*, so that every
    resample keeps the class sizes (and has both classes). Empty for a single class."""
    y, p = as_arrays(labels, probabilities)
    if not both_classes(y) or n_bootstrap < 1:
        return np.empty(0)
    positives, negatives = p[y == 1], np.sort(p[y == 0])
    rng = np.random.default_rng(seed)
    pos_weights = rng.multinomial(
        len(positives), np.full(len(positives), 1 / len(positives)), size=n_bootstrap
    )
    neg_weights = rng.multinomial(
        len(negatives), np.full(len(negatives), 1 / len(negatives)), size=n_bootstrap
    )
    return _weighted_aucs(positives, negatives, pos_weights, neg_weights)


def _per_source(
    labels: np.ndarray, probabilities: np.ndarray, sources: np.ndarray, threshold: float
) -> list[SourceEvaluation]:
    results = []
    for source in sorted(set(sources.tolist())):
        mask = sources == source
        y, p = labels[mask], probabilities[mask]
        tn, fp, fn, tp = _counts(y, (p >= threshold).astype(int))
        results.append(
            SourceEvaluation(
                source=source,
                n_images=len(y),
                n_covid=int(y.sum()),
                n_normal=int((1 - y).sum()),
                accuracy=float((tp + tn) / len(y)),
                auc=_auc(y, p),
                sensitivity=_ratio(tp, tp + fn),
                specificity=_ratio(tn, tn + fp),
            )
        )
    return results


def _source_names(sources: Sequence | None, n: int) -> np.ndarray | None:
    """Source names as strings (missing → "(unknown)"), or None when not given."""
    if sources is None:
        return None
    names = [
        UNKNOWN_SOURCE
        if s is None or (isinstance(s, float) and math.isnan(s)) or str(s) == ""
        else str(s)
        for s in sources
    ]
    if len(names) != n:
        raise ValueError(f"{len(names)} sources but {n} labels")
    return np.array(names, dtype=object)


def evaluate_predictions(
    labels: Iterable,
    probabilities: Iterable,
    threshold: float | None = None,
    *,
    sources: Sequence | None = None,
    rule: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> Evaluation:
    """Metrics for binary ``labels`` (1 = covid) and predicted covid ``probabilities``.

    ``threshold`` None: chosen on these data by ``rule`` (see :func:`choose_threshold`). The AUC
    interval is the 2.5th–97.5th percentile of ``n_bootstrap`` within-class resamples, seeded by
    ``seed`` (0 resamples: no interval). ``sources`` (one name per image) adds per-source results
    when it names more than one source.
    """
    y, p = as_arrays(labels, probabilities)
    names = _source_names(sources, len(y))
    both = both_classes(y)
    if threshold is not None:
        rule_name = "given"
    elif both:
        threshold = choose_threshold(y, p, rule, target_sensitivity)
        rule_name = ThresholdRule(rule=rule, target_sensitivity=target_sensitivity).name
    else:
        threshold, rule_name = DEFAULT_THRESHOLD, "default (single class)"
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = _counts(y, predicted)
    aucs = bootstrap_aucs(y, p, n_bootstrap, seed)
    ci_low = ci_high = None
    if len(aucs):
        tail = (1 - CI_LEVEL) / 2 * 100
        ci_low, ci_high = (float(v) for v in np.percentile(aucs, [tail, 100 - tail]))
    return Evaluation(
        n_images=len(y),
        n_covid=int(y.sum()),
        n_normal=int((1 - y).sum()),
        threshold=float(threshold),
        threshold_rule=rule_name,
        accuracy=float(accuracy_score(y, predicted)),
        auc=_auc(y, p),
        auc_ci_low=ci_low,
        auc_ci_high=ci_high,
        n_bootstrap=len(aucs),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        # F1 is undefined only when there is nothing covid, called or true
        f1=float(f1_score(y, predicted, zero_division=0)) if tp + fp + fn else None,
        brier=float(brier_score_loss(y, p, labels=[0, 1])),
        average_precision=float(average_precision_score(y, p)) if both else None,
        confusion_matrix={"tp": tp, "fn": fn, "fp": fp, "tn": tn},
        per_source=(
            _per_source(y, p, names, float(threshold))
            if names is not None and len(set(names.tolist())) > 1
            else []
        ),
    )


def summarise_folds(evaluations: list[Evaluation]) -> dict[str, dict[str, float]]:
    """Metric → {mean, sd, n} over cross-validation folds, ignoring folds where it is None.

    ``sd`` is the sample standard deviation (ddof 1), 0.0 for a single fold. Metrics that no fold
    has are left out.
    """
    summary = {}
    for metric in FOLD_METRICS:
        values = np.array(
            [getattr(e, metric) for e in evaluations if getattr(e, metric) is not None],
            dtype=float,
        )
        if len(values):
            summary[metric] = {
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values),
            }
    return summary
