"""Validation metrics, thresholds, bootstrap intervals, plots and reports against values worked
out by hand (or by numpy/scikit-learn where the hand computation would be a loop)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_model.evaluate import (
    Evaluation,
    bootstrap_aucs,
    choose_threshold,
    evaluate_predictions,
    evaluation_plots,
    evaluation_report_markdown,
    folds_markdown,
    summarise_folds,
)
from cxr_model.evaluate.metrics import _weighted_aucs
from cxr_model.html_report import linked_images, markdown_to_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 4 covid, 6 normal; at 0.5: tp=3 (0.9, 0.8, 0.6), fn=1 (0.3), fp=1 (0.7), tn=5
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PROBS = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])
# 4 normal, 4 covid; one normal (0.6) above one covid (0.4)
OVERLAP_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
OVERLAP_PROBS = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def _separable(n_per_class: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from two overlapping score distributions."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(shift, 1, n_per_class), rng.normal(0, 1, n_per_class)]
    labels = np.r_[np.ones(n_per_class, int), np.zeros(n_per_class, int)]
    return labels, 1 / (1 + np.exp(-scores))


def test_metrics_match_hand_computed_values():
    result = evaluate_predictions(LABELS, PROBS, threshold=0.5, n_bootstrap=0)
    assert result.confusion_matrix == {"tp": 3, "fn": 1, "fp": 1, "tn": 5}
    assert result.threshold_rule == "given"
    assert result.accuracy == pytest.approx(0.8)
    assert result.sensitivity == pytest.approx(3 / 4)
    assert result.specificity == pytest.approx(5 / 6)
    assert result.ppv == pytest.approx(3 / 4)  # tp / (tp + fp)
    assert result.npv == pytest.approx(5 / 6)  # tn / (tn + fn)
    assert result.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # AUC: of 24 (positive, negative) pairs the positive ranks higher in 6 + 6 + 5 + 4 = 21
    assert result.auc == pytest.approx(21 / 24)
    # Brier: covid (0.1² + 0.2² + 0.4² + 0.7²) + normal (0.7² + 0.4² + 0.2² + 0.1² + 0.1² + 0.05²)
    assert result.brier == pytest.approx((0.70 + 0.7125) / 10)
    # AP: precision at each covid in score order: 1/1, 2/2, 3/4 (0.7 is normal), 4/6
    assert result.average_precision == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert (result.n_covid, result.n_normal) == (4, 6)
    assert result.auc_ci_low is None and result.n_bootstrap == 0


def test_youden_threshold_separates_perfectly_separable_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    # J = 1 from 0.7 down to just above 0.3; the highest such threshold is taken
    assert choose_threshold(labels, probs) == pytest.approx(0.7)
    result = evaluate_predictions(labels, probs, n_bootstrap=0)
    assert result.threshold_rule == "youden"
    assert (result.sensitivity, result.specificity, result.accuracy) == (1.0, 1.0, 1.0)


def test_youden_tie_takes_the_highest_threshold():
    # J at 0.7: 0.75 - 0 = 0.75; at 0.6: 0.75 - 0.25; at 0.4: 1 - 0.25 = 0.75 (tie)
    assert choose_threshold(OVERLAP_LABELS, OVERLAP_PROBS) == pytest.approx(0.7)


def test_target_sensitivity_rule_takes_highest_threshold_reaching_the_target():
    # sensitivity at 0.9, 0.8, 0.7, 0.6, 0.4: 0.25, 0.5, 0.75, 0.75, 1.0
    pick = lambda target: choose_threshold(  # noqa: E731
        OVERLAP_LABELS, OVERLAP_PROBS, rule="sensitivity", target_sensitivity=target
    )
    assert pick(0.75) == pytest.approx(0.7)
    assert pick(0.95) == pytest.approx(0.4)
    assert pick(0.5) == pytest.approx(0.8)
    result = evaluate_predictions(OVERLAP_LABELS, OVERLAP_PROBS, rule="sensitivity", n_bootstrap=0)
    assert result.threshold_rule == "sensitivity>=0.95"
    assert result.threshold == pytest.approx(0.4)
    assert result.sensitivity == 1.0 and result.specificity == pytest.approx(0.75)


def test_target_sensitivity_reached_exactly_is_not_overshot():
    labels, probs = _separable(20, seed=3)
    threshold = choose_threshold(labels, probs, rule="sensitivity", target_sensitivity=0.95)
    called = probs[labels == 1] >= threshold
    assert called.sum() == 19  # 19/20 = 0.95 reached, not overshot to 20/20


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="rule"):
        choose_threshold(LABELS, PROBS, rule="median")


def test_weighted_aucs_equal_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(1)
    positives = rng.integers(0, 5, 7) / 5  # coarse scores: plenty of ties
    negatives = np.sort(rng.integers(0, 5, 9) / 5)
    pos_weights, neg_weights = rng.integers(1, 4, (20, 7)), rng.integers(1, 4, (20, 9))
    fast = _weighted_aucs(positives, negatives, pos_weights, neg_weights)
    labels = np.r_[np.ones(7), np.zeros(9)]
    scores = np.r_[positives, negatives]
    expected = [
        roc_auc_score(labels, scores, sample_weight=np.r_[pos_weights[i], neg_weights[i]])
        for i in range(20)
    ]
    np.testing.assert_allclose(fast, expected, atol=1e-12)


def test_bootstrap_interval_is_seeded_contains_the_auc_and_shrinks_with_data():
    labels, probs = _separable(30, seed=0)
    first = evaluate_predictions(labels, probs, n_bootstrap=500, seed=7)
    again = evaluate_predictions(labels, probs, n_bootstrap=500, seed=7)
    other = evaluate_predictions(labels, probs, n_bootstrap=500, seed=8)
    assert (first.auc_ci_low, first.auc_ci_high) == (again.auc_ci_low, again.auc_ci_high)
    assert (first.auc_ci_low, first.auc_ci_high) != (other.auc_ci_low, other.auc_ci_high)
    assert first.auc_ci_low < first.auc < first.auc_ci_high
    assert first.n_bootstrap == 500
    big_labels, big_probs = _separable(600, seed=0)
    big = evaluate_predictions(big_labels, big_probs, n_bootstrap=500, seed=7)
    assert big.auc_ci_low < big.auc < big.auc_ci_high
    assert big.auc_ci_high - big.auc_ci_low < (first.auc_ci_high - first.auc_ci_low) / 2


def test_bootstrap_resamples_keep_both_classes():
    # one covid image: resampling the whole set would often drop it; within-class never does
    aucs = bootstrap_aucs([1, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.95, 0.3], n_bootstrap=200)
    assert len(aucs) == 200 and np.isfinite(aucs).all()
    assert set(np.round(aucs, 6)) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_single_class_has_no_auc_and_does_not_crash():
    result = evaluate_predictions(np.array([1, 1]), np.array([0.9, 0.2]))
    assert result.auc is None and result.specificity is None
    assert result.auc_ci_low is None and result.auc_ci_high is None
    assert result.average_precision is None
    assert result.threshold == 0.5 and result.threshold_rule == "default (single class)"
    assert result.sensitivity == 0.5
    assert result.brier == pytest.approx((0.1**2 + 0.8**2) / 2)
    assert "NaN" not in result.model_dump_json()
    plots = evaluation_plots([1, 1], [0.9, 0.2], result)
    assert all(png.startswith(PNG_MAGIC) for png in plots.values())
    assert "n/a (single class)" in evaluation_report_markdown(result, plots)


def test_per_source_results_show_a_source_that_collapses():
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    # hospital-a: right every time; hospital-b: every image on the wrong side of 0.5
    probs = np.array([0.9, 0.8, 0.1, 0.2, 0.2, 0.1, 0.8, 0.9])
    sources = ["hospital-a"] * 4 + ["hospital-b"] * 4
    result = evaluate_predictions(labels, probs, 0.5, sources=sources, n_bootstrap=0)
    by_source = {s.source: s for s in result.per_source}
    assert set(by_source) == {"hospital-a", "hospital-b"}
    good, bad = by_source["hospital-a"], by_source["hospital-b"]
    assert (good.accuracy, good.auc, good.sensitivity, good.specificity) == (1, 1, 1, 1)
    assert (bad.accuracy, bad.auc, bad.sensitivity, bad.specificity) == (0, 0, 0, 0)
    assert (bad.n_images, bad.n_covid, bad.n_normal) == (4, 2, 2)
    assert result.accuracy == 0.5
    report = evaluation_report_markdown(result)
    assert "| hospital-b | 4 | 2 | 2 | 0.000 | 0.000 | 0.000 | 0.000 |" in report


def test_per_source_needs_more_than_one_source():
    one = evaluate_predictions(LABELS, PROBS, 0.5, sources=["a"] * 10, n_bootstrap=0)
    assert one.per_source == []
    missing = evaluate_predictions(LABELS, PROBS, 0.5, sources=[None] * 5 + ["a"] * 5)
    assert [s.source for s in missing.per_source] == ["(unknown)", "a"]
    with pytest.raises(ValueError, match="3 sources but 10 labels"):
        evaluate_predictions(LABELS, PROBS, sources=["a", "b", "c"])


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="3 labels but 2 probabilities"):
        evaluate_predictions([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="between 0 and 1"):
        evaluate_predictions([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="no labels"):
        evaluate_predictions([], [])


def test_plots_are_png_images():
    labels, probs = _separable(40, seed=2)
    result = evaluate_predictions(labels, probs, n_bootstrap=100)
    plots = evaluation_plots(labels, probs, result)
    assert set(plots) == {"roc.png", "pr.png", "calibration.png", "confusion_matrix.png"}
    for name, png in plots.items():
        assert png.startswith(PNG_MAGIC), name
        assert len(png) > 1000, name


def test_report_has_the_key_numbers_and_embeds_the_plots():
    result = evaluate_predictions(OVERLAP_LABELS, OVERLAP_PROBS, n_bootstrap=200, seed=1)
    report = evaluation_report_markdown(
        result, ["confusion_matrix.png", "roc.png"], title="Run 7 validation"
    )
    assert report.startswith("## Run 7 validation")
    assert f"| ROC AUC | {result.auc:.3f} (95% CI {result.auc_ci_low:.3f}–" in report
    assert "| threshold | 0.700 (youden, chosen on these data) |" in report
    assert "| confusion matrix | TP 3, FN 1, FP 0, TN 4 |" in report
    # plots in the standard order, by relative file name
    assert report.index("![ROC curve](roc.png)") < report.index(
        "![Confusion matrix](confusion_matrix.png)"
    )
    assert "Per source" not in report


def test_older_stored_evaluations_still_parse():
    stored = evaluate_predictions(LABELS, PROBS, 0.5, n_bootstrap=0).model_dump(
        include={
            "n_images",
            "n_covid",
            "n_normal",
            "threshold",
            "accuracy",
            "auc",
            "sensitivity",
            "specificity",
            "confusion_matrix",
        }
    )
    parsed = Evaluation.model_validate(json.loads(json.dumps(stored)))
    assert parsed.threshold_rule == "given" and parsed.per_source == []


def test_fold_summary_matches_numpy():
    folds = [evaluate_predictions(*_separable(20, seed=s), n_bootstrap=0) for s in range(3)] + [
        evaluate_predictions([1, 1, 1], [0.9, 0.8, 0.2], n_bootstrap=0)
    ]  # AUC None
    summary = summarise_folds(folds)
    aucs = np.array([f.auc for f in folds[:3]])
    assert summary["auc"]["n"] == 3
    assert summary["auc"]["mean"] == pytest.approx(aucs.mean())
    assert summary["auc"]["sd"] == pytest.approx(aucs.std(ddof=1))
    accuracies = np.array([f.accuracy for f in folds])
    assert summary["accuracy"]["n"] == 4
    assert summary["accuracy"]["sd"] == pytest.approx(accuracies.std(ddof=1))
    assert summarise_folds(folds[:1])["auc"]["sd"] == 0.0
    table = folds_markdown(folds)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "fold" not in line]
    assert len(rows) == 5  # 4 folds and the mean row
    assert f"| mean ± sd | {sum(f.n_images for f in folds)} | " in table
    assert f"{aucs.mean():.3f} ± {aucs.std(ddof=1):.3f}" in table


def test_report_with_plot_bytes_shows_them_inline_and_links_no_file():
    labels, probs = _separable(40, seed=2)
    result = evaluate_predictions(labels, probs, n_bootstrap=0)
    plots = evaluation_plots(labels, probs, result)
    report = evaluation_report_markdown(result, plots)
    assert linked_images(report) == []  # nothing relative to nothing, no file://
    assert report.count("](data:image/png;base64,") == 4
    roc = base64.b64decode(report.split("![ROC curve](data:image/png;base64,")[1].split(")")[0])
    assert roc == plots["roc.png"]
    page = markdown_to_html(report, "Evaluation <report>")
    assert page.count('<img src="data:image/png;base64,') == 4
    assert "<title>Evaluation &lt;report&gt;</title>" in page
    assert "<table>" in page and "ROC AUC" in page


def test_html_report_shows_markup_in_its_text_as_text():
    page = markdown_to_html("| source |\n|---|\n| <script>alert(1)</script> |\n", "r")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert linked_images("![x](roc.png) ![y](file:///tmp/a.png)") == [
        "roc.png",
        "file:///tmp/a.png",
    ]
