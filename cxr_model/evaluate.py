"""Evaluate a classifier honestly: scikit-learn metrics, a bootstrap CI, plots and a report.

Covid is the positive class (label 1). :func:`evaluate_predictions` gives the ranking quality
(ROC AUC with a 95% bootstrap interval, average precision), the calibration (Brier score) and the
decisions at a threshold (confusion matrix, sensitivity, specificity, PPV, NPV, F1, accuracy),
overall and per source. A metric that is undefined on the data (e.g. AUC with a single class) is
``None``, never NaN.

When no threshold is given it is chosen on the same data by a :class:`ThresholdRule` (Youden's J by
default). That makes the threshold-dependent numbers optimistic for these data; the AUC, average
precision and Brier score do not depend on it. PPV and NPV depend on the covid share of the data,
which rarely matches the share where a model would be used.

Plots are drawn with matplotlib's object API onto Agg canvases (no display, no pyplot state) and
returned as PNG bytes. This module does not import Prefect.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydantic import BaseModel, Field
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr_model.html_report import data_uri
from cxr_model.safe_text import markdown_cell

__all__ = [
    "CI_LEVEL",
    "DEFAULT_THRESHOLD",
    "FOLD_METRICS",
    "PLOT_TITLES",
    "Evaluation",
    "SourceEvaluation",
    "ThresholdRule",
    "bootstrap_aucs",
    "choose_threshold",
    "chosen_on_data",
    "evaluate_predictions",
    "evaluation_plots",
    "evaluation_report_markdown",
    "folds_markdown",
    "metrics_table_markdown",
    "per_source_markdown",
    "summarise_folds",
    "threshold_text",
]

DEFAULT_THRESHOLD = 0.5  # used when the data cannot choose one (a single class)
DEFAULT_TARGET_SENSITIVITY = 0.95
DEFAULT_BOOTSTRAP = 1000
CI_LEVEL = 0.95
CALIBRATION_BINS = 10
UNKNOWN_SOURCE = "(unknown)"
FIGURE_SIZE = (4.5, 4.0)  # inches
FIGURE_DPI = 100

PLOT_TITLES = {  # file name → alt text, in report order
    "roc.png": "ROC curve",
    "pr.png": "Precision-recall curve",
    "calibration.png": "Reliability diagram",
    "confusion_matrix.png": "Confusion matrix",
}
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


# --- thresholds ---------------------------------------------------------------------------------


def _as_arrays(labels: Iterable, probabilities: Iterable) -> tuple[np.ndarray, np.ndarray]:
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


def _both_classes(labels: np.ndarray) -> bool:
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
    y, p = _as_arrays(labels, probabilities)
    if not _both_classes(y):
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
    return float(roc_auc_score(labels, probabilities)) if _both_classes(labels) else None


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
    y, p = _as_arrays(labels, probabilities)
    if not _both_classes(y) or n_bootstrap < 1:
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
    y, p = _as_arrays(labels, probabilities)
    names = _source_names(sources, len(y))
    both = _both_classes(y)
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


# --- plots --------------------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    return figure, figure.subplots()


def _no_curve(axes: Axes, why: str) -> None:
    axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes)


def _roc_plot(y: np.ndarray, p: np.ndarray, evaluation: Evaluation) -> bytes:
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    if _both_classes(y):
        fpr, tpr, _ = roc_curve(y, p)
        ci = (
            f" (95% CI {evaluation.auc_ci_low:.2f}–{evaluation.auc_ci_high:.2f})"
            if evaluation.auc_ci_low is not None and evaluation.auc_ci_high is not None
            else ""
        )
        axes.plot(fpr, tpr, label=f"AUC {evaluation.auc:.3f}{ci}")
        if evaluation.sensitivity is not None and evaluation.specificity is not None:
            axes.plot(
                [1 - evaluation.specificity],
                [evaluation.sensitivity],
                "o",
                label=f"threshold {evaluation.threshold:.3f}",
            )
        axes.legend(loc="lower right", fontsize="small")
    else:
        _no_curve(axes, "single class: no ROC curve")
    axes.set(xlabel="1 − specificity", ylabel="sensitivity", title="ROC (covid positive)")
    axes.set(xlim=(0, 1), ylim=(0, 1.02))
    return _png(figure)


def _pr_plot(y: np.ndarray, p: np.ndarray, evaluation: Evaluation) -> bytes:
    figure, axes = _figure()
    if _both_classes(y):
        precision, recall, _ = precision_recall_curve(y, p)
        axes.plot(recall, precision, label=f"AP {evaluation.average_precision:.3f}")
        axes.axhline(y.mean(), linestyle=":", color="grey", label=f"covid share {y.mean():.2f}")
        if evaluation.ppv is not None and evaluation.sensitivity is not None:
            axes.plot([evaluation.sensitivity], [evaluation.ppv], "o", label="threshold")
        axes.legend(loc="lower left", fontsize="small")
    else:
        _no_curve(axes, "single class: no PR curve")
    axes.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision–recall")
    axes.set(xlim=(0, 1), ylim=(0, 1.02))
    return _png(figure)


def _calibration_plot(y: np.ndarray, p: np.ndarray, evaluation: Evaluation) -> bytes:
    figure, axes = _figure()
    observed, predicted = calibration_curve(y, p, n_bins=CALIBRATION_BINS, strategy="uniform")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    axes.plot(predicted, observed, "o-", label="model")
    axes.legend(loc="upper left", fontsize="small")
    axes.set(
        xlabel="mean predicted covid probability",
        ylabel="observed covid share",
        title=f"Reliability (Brier {evaluation.brier:.3f})",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    return _png(figure)


def _confusion_plot(evaluation: Evaluation) -> bytes:
    figure, axes = _figure()
    m = evaluation.confusion_matrix
    cells = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])  # rows: true, columns: called
    axes.imshow(cells, cmap="Blues")
    for (row, column), count in np.ndenumerate(cells):
        dark = count > cells.max() / 2
        axes.text(column, row, str(count), ha="center", va="center", color="w" if dark else "k")
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["normal", "covid"],
        yticklabels=["normal", "covid"],
        xlabel="called",
        ylabel="true",
        title=f"Confusion matrix at {evaluation.threshold:.3f}",
    )
    return _png(figure)


def evaluation_plots(
    labels: Iterable, probabilities: Iterable, evaluation: Evaluation
) -> dict[str, bytes]:
    """File name → PNG bytes for the ROC, precision-recall, reliability and confusion plots of
    ``evaluation`` (which must come from these labels and probabilities)."""
    y, p = _as_arrays(labels, probabilities)
    return {
        "roc.png": _roc_plot(y, p, evaluation),
        "pr.png": _pr_plot(y, p, evaluation),
        "calibration.png": _calibration_plot(y, p, evaluation),
        "confusion_matrix.png": _confusion_plot(evaluation),
    }


# --- reports ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _auc_text(evaluation: Evaluation) -> str:
    if evaluation.auc is None:
        return "n/a (single class)"
    if evaluation.auc_ci_low is None or evaluation.auc_ci_high is None:
        return _fmt(evaluation.auc)
    return f"{evaluation.auc:.3f} (95% CI {evaluation.auc_ci_low:.3f}–{evaluation.auc_ci_high:.3f})"


def chosen_on_data(evaluation: Evaluation) -> bool:
    """Whether the threshold was picked by a rule on the evaluated data themselves."""
    return evaluation.threshold_rule != "given" and not evaluation.threshold_rule.startswith(
        "default"
    )


def threshold_text(evaluation: Evaluation) -> str:
    """``0.412 (youden, chosen on these data)``: the threshold and where it came from."""
    how = evaluation.threshold_rule
    if chosen_on_data(evaluation):
        how += ", chosen on these data"
    return f"{evaluation.threshold:.3f} ({how})"


def metrics_table_markdown(evaluation: Evaluation) -> list[str]:
    """The key numbers of ``evaluation`` as markdown table lines."""
    m = evaluation.confusion_matrix
    return [
        "| metric | value |",
        "|---|---|",
        f"| images | {evaluation.n_images} ({evaluation.n_covid} covid, "
        f"{evaluation.n_normal} normal) |",
        f"| ROC AUC | {_auc_text(evaluation)} |",
        f"| average precision | {_fmt(evaluation.average_precision)} |",
        f"| threshold | {threshold_text(evaluation)} |",
        f"| sensitivity | {_fmt(evaluation.sensitivity)} |",
        f"| specificity | {_fmt(evaluation.specificity)} |",
        f"| PPV | {_fmt(evaluation.ppv)} |",
        f"| NPV | {_fmt(evaluation.npv)} |",
        f"| F1 | {_fmt(evaluation.f1)} |",
        f"| accuracy | {_fmt(evaluation.accuracy)} |",
        f"| Brier score | {_fmt(evaluation.brier)} |",
        f"| confusion matrix | TP {m['tp']}, FN {m['fn']}, FP {m['fp']}, TN {m['tn']} |",
    ]


def per_source_markdown(evaluation: Evaluation) -> list[str]:
    """Per-source results as markdown table lines (empty when there are none)."""
    if not evaluation.per_source:
        return []
    lines = [
        "| source | images | covid | normal | accuracy | AUC | sensitivity | specificity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {markdown_cell(s.source)} | {s.n_images} | {s.n_covid} | {s.n_normal} "
        f"| {_fmt(s.accuracy)} | {_fmt(s.auc)} | {_fmt(s.sensitivity)} "
        f"| {_fmt(s.specificity)} |"
        for s in evaluation.per_source
    ]
    return lines


def evaluation_report_markdown(
    evaluation: Evaluation,
    plots: Mapping[str, bytes] | Iterable[str] = (),
    title: str = "Validation evaluation",
) -> str:
    """A markdown report: key numbers, the plots and the per-source table.

    ``plots`` as file name → PNG bytes (:func:`evaluation_plots`) puts each plot inline as a
    ``data:`` image, so the report shows them wherever it is rendered (the Prefect UI, an HTML
    page); as file names only, it links them by relative name, for a report stored beside them.
    """
    lines = [f"## {title}", "", *metrics_table_markdown(evaluation), ""]
    if chosen_on_data(evaluation):
        lines += [
            "The threshold was chosen on the data it is evaluated on, so the threshold-dependent "
            "numbers are optimistic; AUC, average precision and Brier score do not depend on it.",
            "",
        ]
    names = list(plots)
    ordered = [n for n in PLOT_TITLES if n in names] + [n for n in names if n not in PLOT_TITLES]
    inline = isinstance(plots, Mapping)
    lines += [
        f"![{PLOT_TITLES.get(name, name.rsplit('.', 1)[0])}]"
        f"({data_uri(name, plots[name]) if inline else name})"
        for name in ordered
    ]
    if ordered:
        lines.append("")
    if evaluation.per_source:
        lines += [
            "### Per source",
            "",
            f"At the overall threshold {evaluation.threshold:.3f}.",
            "",
            *per_source_markdown(evaluation),
            "",
        ]
    return "\n".join(lines)


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


def folds_markdown(evaluations: list[Evaluation], title: str = "Cross-validation") -> str:
    """One row per fold and a mean ± sd row, as a markdown table."""
    summary = summarise_folds(evaluations)
    heads = list(FOLD_METRICS.values())
    lines = [
        f"## {title}",
        "",
        f"| fold | images | {' | '.join(heads)} |",
        f"|---|---:|{'---:|' * len(heads)}",
    ]
    for number, e in enumerate(evaluations, start=1):
        cells = " | ".join(_fmt(getattr(e, metric)) for metric in FOLD_METRICS)
        lines.append(f"| {number} | {e.n_images} | {cells} |")
    means = " | ".join(
        f"{summary[m]['mean']:.3f} ± {summary[m]['sd']:.3f}" if m in summary else "n/a"
        for m in FOLD_METRICS
    )
    total = sum(e.n_images for e in evaluations)
    lines.append(f"| mean ± sd | {total} | {means} |")
    return "\n".join(lines) + "\n"
