"""The promotion gate: minimums first, then the candidate against the champion on the same data."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr_model.evaluate import Evaluation
from cxr_model.gate import GateSettings, decide, gate_markdown


def _evaluation(
    auc: float | None = 0.9, sensitivity: float | None = 0.85, specificity: float | None = 0.8
) -> Evaluation:
    return Evaluation(
        n_images=100,
        n_covid=40,
        n_normal=60,
        threshold=0.5,
        accuracy=0.82,
        auc=auc,
        sensitivity=sensitivity,
        specificity=specificity,
        confusion_matrix={"tp": 34, "fn": 6, "fp": 12, "tn": 48},
        threshold_rule="youden",
    )


def test_first_model_meeting_the_minimums_becomes_champion():
    decision = decide(_evaluation(), None, GateSettings())
    assert decision.promote and decision.alias == "champion"
    assert decision.reason.startswith("First model")
    assert "AUC 0.900 ≥ 0.800" in decision.reason
    assert decision.champion_metrics is None and decision.champion_version is None
    assert decision.candidate_metrics["auc"] == 0.9


@pytest.mark.parametrize(
    ("candidate", "settings", "named"),
    [
        (_evaluation(auc=0.7), GateSettings(), "AUC 0.700 is below the minimum 0.800"),
        (
            _evaluation(sensitivity=0.6),
            GateSettings(),
            "sensitivity 0.600 is below the minimum 0.800",
        ),
        (
            _evaluation(specificity=0.5),
            GateSettings(min_specificity=0.7),
            "specificity 0.500 is below the minimum 0.700",
        ),
    ],
)
def test_first_model_below_a_minimum_stays_candidate(candidate, settings, named):
    decision = decide(candidate, None, settings)
    assert not decision.promote and decision.alias == "candidate"
    assert named in decision.reason


def test_a_champion_that_cannot_be_loaded_keeps_the_model_candidate():
    problem = "s3://cxr/registry/m/versions/000003/card.json is missing"
    decision = decide(_evaluation(), None, GateSettings(), 3, champion_problem=problem)
    assert not decision.promote and decision.alias == "candidate"
    assert decision.reason.startswith(
        f"Not promoted: the champion (v3) cannot be loaded: {problem}"
    )
    assert "First model" not in decision.reason and decision.champion_problem == problem
    assert f"champion v3 could not be loaded: {problem}" in gate_markdown(decision)
    missed = decide(_evaluation(auc=0.7), None, GateSettings(), None, champion_problem=problem)
    assert (
        "the champion cannot be loaded" in missed.reason and "AUC 0.700 is below" in missed.reason
    )


def test_specificity_has_no_minimum_by_default():
    assert decide(_evaluation(specificity=0.1), None).promote


def test_undefined_metric_cannot_pass_a_minimum():
    decision = decide(_evaluation(auc=None), None, GateSettings(min_auc=0.0))
    assert not decision.promote
    assert "AUC is undefined" in decision.reason


def test_better_candidate_replaces_the_champion():
    decision = decide(_evaluation(auc=0.93), _evaluation(auc=0.88), GateSettings(), 4)
    assert decision.promote and decision.alias == "champion"
    assert "0.930 vs 0.880 for champion v4" in decision.reason
    assert decision.champion_version == 4 and decision.champion_metrics["auc"] == 0.88


def test_worse_beyond_tolerance_stays_candidate():
    decision = decide(_evaluation(auc=0.85), _evaluation(auc=0.90), GateSettings(), 4)
    assert not decision.promote and decision.alias == "candidate"
    assert "AUC 0.850 is more than 0.010 below 0.900 for champion v4" in decision.reason


@pytest.mark.parametrize("candidate_auc", [0.90, 0.895, 0.89])
def test_tie_within_tolerance_promotes(candidate_auc):
    decision = decide(_evaluation(auc=candidate_auc), _evaluation(auc=0.90), GateSettings())
    assert decision.promote


def test_exactly_the_tolerance_below_promotes_despite_floating_point():
    assert 0.8 - 0.1 > 0.7  # in floating point
    settings = GateSettings(min_auc=0.0, tolerance=0.1)
    assert decide(_evaluation(auc=0.7), _evaluation(auc=0.8), settings).promote


def test_compared_metric_is_configurable():
    settings = GateSettings(metric="sensitivity", tolerance=0.0)
    candidate = _evaluation(auc=0.95, sensitivity=0.84)
    champion = _evaluation(auc=0.85, sensitivity=0.90)
    decision = decide(candidate, champion, settings)
    assert not decision.promote
    assert "sensitivity 0.840 is more than 0.000 below 0.900" in decision.reason


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        GateSettings(tolerance=-0.1)
    with pytest.raises(ValidationError):
        GateSettings(metric="brier")


def test_markdown_puts_both_models_side_by_side():
    decision = decide(_evaluation(auc=0.85), _evaluation(auc=0.90), GateSettings(), 4)
    text = gate_markdown(decision)
    assert text.startswith("### Promotion decision: kept as candidate")
    assert "| metric | candidate | champion v4 (same data) | gate |" in text
    assert "| AUC | 0.850 | 0.900 | ≥ 0.800 compared (tolerance 0.010) |" in text
    assert "| sensitivity | 0.850 | 0.850 | ≥ 0.800 |" in text
    first = gate_markdown(decide(_evaluation(), None), heading=None)
    assert "Promotion decision" not in first and "champion v" not in first
    assert "| AUC | 0.900 | ≥ 0.800 |" in first


def _unseen(
    held_out_auc: float | None = None, within_auc: float | None = None, flagged: bool = True
):
    from cxr_model.generalisation import Generalisation, StratifiedAUC

    return Generalisation(
        confounded=flagged,
        shortcut_flags=["source separates the labels (AUC 1.00)"] if flagged else [],
        held_out_sources=["actualmed"] if held_out_auc is not None else [],
        held_out=None if held_out_auc is None else _evaluation(auc=held_out_auc),
        stratified=None
        if within_auc is None
        else StratifiedAUC(
            auc=within_auc, auc_ci_low=0.5, auc_ci_high=0.9, sources=["actualmed"], n_images=44
        ),
    )


def test_confounded_data_without_unseen_evidence_keeps_the_model_candidate():
    decision = decide(_evaluation(auc=0.95), None, GateSettings(), generalisation=_unseen())
    assert not decision.promote and decision.alias == "candidate"
    assert "no held-out-source or within-source evidence" in decision.reason
    assert "source separates the labels" in decision.reason
    assert decision.confounded and not decision.overridden


def test_confounded_data_with_a_low_held_out_auc_names_it():
    decision = decide(
        _evaluation(auc=0.95), None, GateSettings(), generalisation=_unseen(held_out_auc=0.71)
    )
    assert not decision.promote
    assert "held-out-source AUC 0.71 < 0.80" in decision.reason
    assert decision.unseen_evidence == {"held-out-source AUC": 0.71}
    assert "| held-out-source AUC | 0.710 | ≥ 0.800 |" in gate_markdown(decision)


def test_every_unseen_auc_must_reach_the_minimum():
    decision = decide(
        _evaluation(),
        None,
        GateSettings(),
        generalisation=_unseen(held_out_auc=0.9, within_auc=0.6),
    )
    assert not decision.promote
    assert "within-source AUC 0.60 < 0.80" in decision.reason
    assert "held-out-source AUC" not in decision.reason.split("(")[0]


def test_confounded_data_with_good_unseen_evidence_promotes():
    decision = decide(
        _evaluation(),
        None,
        GateSettings(),
        generalisation=_unseen(held_out_auc=0.85, within_auc=0.82),
    )
    assert decision.promote and decision.reason.startswith("First model")
    assert decision.unseen_evidence == {"held-out-source AUC": 0.85, "within-source AUC": 0.82}
    assert "On unseen sources: held-out-source AUC 0.85, within-source AUC 0.82 (≥ 0.80)." in (
        decision.reason
    )


def test_allow_confounded_promotes_and_says_so():
    settings = GateSettings(allow_confounded=True)
    decision = decide(_evaluation(), None, settings, generalisation=_unseen(held_out_auc=0.6))
    assert decision.promote and decision.overridden
    assert "Allowed by gate.allow_confounded although held-out-source AUC 0.60 < 0.80" in (
        decision.reason
    )
    assert "allow_confounded" in gate_markdown(decision)


def test_unconfounded_data_ignore_the_unseen_minimum():
    weak = _unseen(held_out_auc=0.55, flagged=False)
    decision = decide(_evaluation(), None, GateSettings(), generalisation=weak)
    assert decision.promote and not decision.confounded
    assert "| held-out-source AUC | 0.550 | reported |" in gate_markdown(decision)
