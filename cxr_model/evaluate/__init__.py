"""Evaluate a classifier honestly: metrics with a bootstrap CI (``metrics``), plots (``plots``) and
a Markdown report (``report``). Covid is the positive class. This package does not import Prefect.
"""

from cxr_model.evaluate.metrics import (
    CI_LEVEL,
    DEFAULT_BOOTSTRAP,
    DEFAULT_TARGET_SENSITIVITY,
    DEFAULT_THRESHOLD,
    FOLD_METRICS,
    Evaluation,
    SourceEvaluation,
    ThresholdRule,
    bootstrap_aucs,
    choose_threshold,
    evaluate_predictions,
    summarise_folds,
)
from cxr_model.evaluate.plots import PLOT_TITLES, evaluation_plots
from cxr_model.evaluate.report import (
    chosen_on_data,
    evaluation_report_markdown,
    folds_markdown,
    metrics_table_markdown,
    per_source_markdown,
    threshold_text,
)

__all__ = [
    "CI_LEVEL",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_TARGET_SENSITIVITY",
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
