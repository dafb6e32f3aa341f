"""Evidence from unseen sources: a model that learned the hospital must not look good here."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_model.generalisation import assess_generalisation, within_source_aucs


def _hospitals(seed: int = 0):
    """Hospital A: mostly covid; B: mostly normal; C: both. Scores follow the hospital only."""
    rng = np.random.default_rng(seed)
    sources = np.array(["A"] * 60 + ["B"] * 60 + ["C"] * 40)
    labels = np.concatenate([rng.random(60) < 0.9, rng.random(60) < 0.1, np.arange(40) % 2 == 0])
    by_hospital = {"A": 0.8, "B": 0.2, "C": 0.5}
    scores = np.array([by_hospital[s] for s in sources]) + rng.normal(0, 0.05, len(sources))
    return labels.astype(int), scores, sources


def test_a_hospital_detector_scores_well_pooled_but_at_chance_within_sources():
    labels, scores, sources = _hospitals()
    assert roc_auc_score(labels, scores) > 0.85  # the flattering pooled number
    per_source, stratified = within_source_aucs(labels, scores, sources, ["Val"] * len(labels))
    assert {row.source for row in per_source} == {"A", "B", "C"}
    assert stratified is not None
    assert 0.3 < stratified.auc < 0.7
    assert stratified.auc_ci_low <= stratified.auc <= stratified.auc_ci_high


def test_the_stratified_auc_is_the_pair_weighted_mean_of_counted_sources():
    labels, scores, sources = _hospitals(1)
    per_source, stratified = within_source_aucs(labels, scores, sources, ["Val"] * len(labels))
    counted = [row for row in per_source if row.enough]
    weights = np.array([row.n_covid * row.n_normal for row in counted], float)
    expected = float(np.average([row.auc for row in counted], weights=weights))
    assert stratified.auc == pytest.approx(expected)
    assert stratified.sources == [row.source for row in counted]
    for row in per_source:
        mask = sources == row.source
        assert row.auc == pytest.approx(roc_auc_score(labels[mask], scores[mask]))


def test_sources_with_too_few_images_of_a_class_are_listed_but_not_pooled():
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0])
    scores = np.linspace(1, 0, 14)
    sources = np.array(["big"] * 12 + ["tiny"] * 2)
    per_source, stratified = within_source_aucs(labels, scores, sources, ["Val"] * 14)
    assert [row.source for row in per_source] == ["big", "tiny"]
    assert stratified.sources == ["big"] and stratified.auc == 1.0


def test_no_source_with_both_classes_gives_no_within_source_evidence():
    per_source, stratified = within_source_aucs(
        np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1]), ["A", "A", "B", "B"], ["Val"] * 4
    )
    assert per_source == [] and stratified is None


def test_held_out_sources_are_scored_at_the_val_threshold_and_become_the_honest_estimate():
    labels, scores, sources = _hospitals(2)
    splits = np.where(sources == "C", "Holdout", "Val")
    found = assess_generalisation(
        labels=labels,
        probabilities=scores,
        sources=sources,
        splits=splits,
        threshold=0.42,
        held_out_sources=["C"],
        held_out_reason="test",
        shortcut_flags=["source separates the labels (AUC 0.95)"],
    )
    assert found.confounded
    assert found.held_out.threshold == 0.42 and found.held_out.n_images == 40
    assert found.honest.name == "held-out-source AUC (C)"
    assert found.honest.auc == pytest.approx(roc_auc_score(labels[40 + 80 :], scores[120:]))
    assert set(found.evidence()) == {"held-out-source AUC", "within-source AUC"}
    c_row = next(row for row in found.within_source if row.source == "C")
    assert c_row.splits == "Holdout"


def test_the_report_puts_internal_and_honest_estimates_side_by_side():
    from cxr_model.evaluate import evaluate_predictions
    from cxr_model.generalisation import estimates_markdown, honest_line

    labels, scores, sources = _hospitals(3)
    splits = np.where(sources == "C", "Holdout", "Val")
    val = splits == "Val"
    internal = evaluate_predictions(labels[val], scores[val], n_bootstrap=200)
    found = assess_generalisation(
        labels=labels,
        probabilities=scores,
        sources=sources,
        splits=splits,
        threshold=internal.threshold,
        held_out_sources=["C"],
        held_out_reason="automatic: C has both classes",
        shortcut_flags=["source separates the labels (AUC 0.95)"],
        n_bootstrap=200,
    )
    text = estimates_markdown(internal, found)
    assert "**Warning: the shortcut audit flagged the training data" in text
    assert "rely on the held-out-source AUC (C)" in text
    assert "| internal Val |" in text and "| **held-out sources (honest)**: C |" in text
    assert f"{internal.auc:.2f}" in text and f"{found.held_out.auc:.2f}" in text
    line = honest_line(internal, found)
    assert line.startswith(f"internal Val AUC {internal.auc:.2f}")
    assert f"honest estimate: held-out-source AUC (C) {found.held_out.auc:.2f}" in line
