"""The evaluation plots: ROC, precision-recall, reliability diagram and confusion matrix.

Drawn with matplotlib's object API onto Agg canvases (no display, no pyplot state) and returned as
PNG bytes, so they can be stored beside a report or inlined into it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_model.evaluate.metrics import Evaluation, as_arrays, both_classes

CALIBRATION_BINS = 10


FIGURE_SIZE = (4.5, 4.0)  # inches
FIGURE_DPI = 100

PLOT_TITLES = {  # file name → alt text, in report order
    "roc.png": "ROC curve",
    "pr.png": "Precision-recall curve",
    "calibration.png": "Reliability diagram",
    "confusion_matrix.png": "Confusion matrix",
}


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
    if both_classes(y):
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
    if both_classes(y):
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
    y, p = as_arrays(labels, probabilities)
    return {
        "roc.png": _roc_plot(y, p, evaluation),
        "pr.png": _pr_plot(y, p, evaluation),
        "calibration.png": _calibration_plot(y, p, evaluation),
        "confusion_matrix.png": _confusion_plot(evaluation),
    }
