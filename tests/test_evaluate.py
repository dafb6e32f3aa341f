"""Validation metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_model.evaluate import evaluate_predictions


def test_metrics_match_hand_computed_values():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])
    result = evaluate_predictions(labels, probs)
    # at 0.5: tp=3 (0.9, 0.8, 0.6), fn=1 (0.3), fp=1 (0.7), tn=5
    assert result.confusion_matrix == {"tp": 3, "fn": 1, "fp": 1, "tn": 5}
    assert result.accuracy == pytest.approx(0.8)
    assert result.sensitivity == pytest.approx(0.75)
    assert result.specificity == pytest.approx(5 / 6)
    # AUC: of 24 (positive, negative) pairs the positive ranks higher in 6 + 6 + 5 + 4 = 21
    assert result.auc == pytest.approx(21 / 24)
    assert (result.n_covid, result.n_normal) == (4, 6)


def test_single_class_has_no_auc_or_specificity():
    result = evaluate_predictions(np.array([1, 1]), np.array([0.9, 0.2]))
    assert result.auc is None and result.specificity is None
    assert result.sensitivity == 0.5
