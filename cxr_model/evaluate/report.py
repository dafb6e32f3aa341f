"""An evaluation as Markdown: the key numbers, the plots, per-source and per-fold tables.

Numbers are shown with three decimals and ``n/a`` where a metric is undefined; a threshold chosen
on the evaluated data is said to be so, since the numbers that depend on it are then optimistic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cxr_model.evaluate.metrics import FOLD_METRICS, Evaluation, summarise_folds
from cxr_model.evaluate.plots import PLOT_TITLES
from cxr_model.html_report import data_uri
from cxr_model.markdown import markdown_table


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
    rows = [
        (
            "images",
            f"{evaluation.n_images} ({evaluation.n_covid} covid, {evaluation.n_normal} normal)",
        ),
        ("ROC AUC", _auc_text(evaluation)),
        ("average precision", _fmt(evaluation.average_precision)),
        ("threshold", threshold_text(evaluation)),
        ("sensitivity", _fmt(evaluation.sensitivity)),
        ("specificity", _fmt(evaluation.specificity)),
        ("PPV", _fmt(evaluation.ppv)),
        ("NPV", _fmt(evaluation.npv)),
        ("F1", _fmt(evaluation.f1)),
        ("accuracy", _fmt(evaluation.accuracy)),
        ("Brier score", _fmt(evaluation.brier)),
        ("confusion matrix", f"TP {m['tp']}, FN {m['fn']}, FP {m['fp']}, TN {m['tn']}"),
    ]
    return markdown_table(["metric", "value"], rows)


def per_source_markdown(evaluation: Evaluation) -> list[str]:
    """Per-source results as markdown table lines (empty when there are none)."""
    if not evaluation.per_source:
        return []
    header = [
        "source",
        "images",
        "covid",
        "normal",
        "accuracy",
        "AUC",
        "sensitivity",
        "specificity",
    ]
    rows = [
        (
            s.source,
            s.n_images,
            s.n_covid,
            s.n_normal,
            _fmt(s.accuracy),
            _fmt(s.auc),
            _fmt(s.sensitivity),
            _fmt(s.specificity),
        )
        for s in evaluation.per_source
    ]
    return markdown_table(header, rows, align="lrrrrrrr")


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


def folds_markdown(evaluations: list[Evaluation], title: str = "Cross-validation") -> str:
    """One row per fold and a mean ± sd row, as a markdown table."""
    summary = summarise_folds(evaluations)
    rows: list[list[object]] = [
        [number, e.n_images, *(_fmt(getattr(e, metric)) for metric in FOLD_METRICS)]
        for number, e in enumerate(evaluations, start=1)
    ]
    means = [
        f"{summary[m]['mean']:.3f} ± {summary[m]['sd']:.3f}" if m in summary else "n/a"
        for m in FOLD_METRICS
    ]
    rows.append(["mean ± sd", sum(e.n_images for e in evaluations), *means])
    header = ["fold", "images", *FOLD_METRICS.values()]
    table = markdown_table(header, rows, align="l" + "r" * (len(header) - 1))
    return "\n".join([f"## {title}", "", *table]) + "\n"
