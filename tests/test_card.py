"""The markdown model card: required sections, warnings and numbers; optional parts may be missing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_model.audit import audit_shortcuts
from cxr_model.card import render_model_card
from cxr_model.evaluate import evaluate_predictions
from cxr_model.gate import GateSettings, decide
from cxr_model.inference import InferenceArtifact
from cxr_model.ood import OodCheck
from cxr_model.registry import ModelCard

SECTIONS = [
    "# Model card: cxr-classifier v3",
    "## Intended use",
    "## Data",
    "## Shortcut audit",
    "## Metrics",
    "## Per-source results",
    "## Promotion decision",
    "## Training configuration",
    "## Limitations",
    "## Library and code versions",
]


def _card(**changes) -> ModelCard:
    fields = dict(
        name="cxr-classifier",
        version=3,
        created_at="2026-01-02T03:04:05+00:00",
        model_key="registry/cxr-classifier/versions/000003/model.keras",
        model_sha256="ab" * 32,
        model_bytes=2_500_000,
        threshold=0.42,
        metrics={},
        training={
            "devices": ["CPU"],
            "seconds": 12.34,
            "images_per_second": 50.0,
            "train_accuracy": 0.91,
            "val_accuracy": 0.85,
            "history": {"loss": [0.7, 0.5, 0.4], "accuracy": [0.6, 0.8, 0.91]},
        },
        parameters={
            "sources": ["folder:/data/cxr"],
            "training": {
                "architecture": "seed_cnn",
                "image_size": 64,
                "epochs": 3,
                "batch_size": 16,
                "learning_rate": 0.001,
                "seed": 42,
            },
        },
        dataset_id="ds-1234",
        code_version="git:abc1234",
        library_versions={"python": "3.11.7", "keras": "3.15.1"},
    )
    return ModelCard(**(fields | changes))


def _evaluation():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(30, int), np.zeros(30, int)]
    probs = 1 / (1 + np.exp(-np.r_[rng.normal(1.5, 1, 30), rng.normal(0, 1, 30)]))
    sources = ["hannover"] * 30 + ["nih-cxr8"] * 30
    return evaluate_predictions(labels, probs, sources=sources, n_bootstrap=300)


def _audit():
    """Every covid image from one source, every normal from another: source is a tell."""
    images = pd.DataFrame(
        {
            "label": ["covid"] * 6 + ["normal"] * 6,
            "source": ["hannover"] * 6 + ["nih-cxr8"] * 6,
            "width": [512, 640] * 6,
        }
    )
    return audit_shortcuts(images)


def test_card_has_every_section_the_flagged_feature_and_the_ci():
    evaluation = _evaluation()
    audit = _audit()
    assert audit.flagged == ["source"]
    gate = decide(evaluation, None, GateSettings(min_auc=0.5, min_sensitivity=0.5))
    sources = [
        {"source": "hannover", "label": "covid", "images": 30, "license": "CC BY 4.0"},
        {"source": "nih-cxr8", "label": "normal", "images": 30, "license": float("nan")},
    ]
    text = render_model_card(
        _card(), evaluation=evaluation, gate=gate, sources=sources, audit=audit.model_dump()
    )
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "research and education; not for diagnosis or clinical decisions" in text.lower()
    assert "**Warning: 1 acquisition feature(s) separate the labels on their own" in text
    assert "(AUC ≥ 0.90): source.**" in text
    assert "all covid from hannover, all normal from nih-cxr8" in text
    assert "**Flagged shortcuts in this dataset:** source" in text
    assert "DeGrave" in text
    assert f"{evaluation.auc:.3f} (95% CI {evaluation.auc_ci_low:.3f}–" in text
    assert f"{evaluation.auc_ci_high:.3f})" in text
    assert "youden, chosen on these data" in text
    assert "| hannover | covid | 30 | CC BY 4.0 |" in text
    assert "| nih-cxr8 | normal | 30 | not recorded |" in text
    assert "| hannover | 30 | 30 | 0 |" in text  # per-source results
    assert "First model" in text
    assert "| architecture | seed_cnn |" in text and "| epochs in history | 3 |" in text
    assert "| keras | 3.15.1 |" in text and "`git:abc1234`" in text
    assert "ab" * 32 in text


def test_card_accepts_the_audit_object_and_says_when_nothing_is_flagged():
    images = pd.DataFrame({"label": ["covid", "normal"] * 6, "source": ["a"] * 6 + ["b"] * 6})
    audit = audit_shortcuts(images)
    assert audit.flags == []
    text = render_model_card(_card(), audit=audit)
    assert "No feature above threshold (AUC ≥ 0.90)" in text
    assert "Warning" not in text


def test_card_renders_with_every_optional_part_missing():
    text = render_model_card(
        _card(training={}, parameters={}, library_versions={}),
        evaluation=None,
        gate=None,
        sources=None,
        audit=None,
    )
    for section in SECTIONS:
        assert section in text
    assert "No shortcut audit was recorded" in text
    assert "No validation metrics were recorded" in text
    assert "No promotion decision was recorded" in text
    assert "The image sources were not recorded" in text
    assert "| architecture | — |" in text


def test_card_falls_back_to_the_stored_metrics():
    evaluation = _evaluation()
    text = render_model_card(_card(metrics=evaluation.model_dump()))
    assert f"(95% CI {evaluation.auc_ci_low:.3f}–{evaluation.auc_ci_high:.3f})" in text
    assert "| nih-cxr8 | 30 | 0 | 30 |" in text
    legacy = render_model_card(_card(metrics={"accuracy": 0.9}))
    assert "| accuracy | 0.9 |" in legacy


def test_card_names_a_source_where_one_class_is_always_wrong():
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    probs = np.array([0.9, 0.8, 0.1, 0.2, 0.2, 0.1, 0.8, 0.9])
    sources = ["a"] * 4 + ["b"] * 4
    evaluation = evaluate_predictions(labels, probs, 0.5, sources=sources, n_bootstrap=0)
    text = render_model_card(_card(), evaluation=evaluation)
    assert "**Every image of one class is called wrongly for: b.**" in text


def test_the_card_shows_internal_and_honest_estimates_from_card_json():
    from cxr_model.evaluate import evaluate_predictions
    from cxr_model.generalisation import assess_generalisation

    labels = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0] * 2
    scores = [0.9, 0.8, 0.7, 0.4, 0.6, 0.55, 0.3, 0.5, 0.2, 0.1, 0.65, 0.35] * 2
    splits = ["Val"] * 12 + ["Holdout"] * 12
    sources = ["nih"] * 12 + ["actualmed"] * 12
    internal = evaluate_predictions(labels[:12], scores[:12], n_bootstrap=100)
    found = assess_generalisation(
        labels=labels,
        probabilities=scores,
        sources=sources,
        splits=splits,
        threshold=internal.threshold,
        held_out_sources=["actualmed"],
        held_out_reason="automatic",
        shortcut_flags=["source separates the labels (AUC 1.00)"],
        n_bootstrap=100,
    )
    card = _card(generalisation=found.model_dump(), metrics=internal.model_dump())
    text = render_model_card(card, evaluation=internal)
    assert "## Internal vs honest estimates" in text
    assert text.index("## Internal vs honest estimates") < text.index("## Data")
    assert "held-out sources (honest)**: actualmed" in text
    assert "| image preprocessing | stretch |" in text  # recorded none: the study's
    old = render_model_card(_card(), evaluation=internal)
    assert "registered before cxr measured held-out sources" in old


def test_the_card_says_what_the_ood_check_flags_or_that_there_is_none():
    ood = OodCheck(sha256="ab" * 32, threshold=3.1, flag_rate=0.05, n_train=400, n_val=100)
    ood.flagged = {"Val": 0.05, "Holdout": 0.09}

    checked = render_model_card(_card(ood=ood.model_dump()))
    unchecked = render_model_card(_card())

    assert "## Images it does not know" in checked
    assert "5% of Val, 9% of Holdout" in checked and "400 training images" in checked
    assert "has no out-of-distribution check" in unchecked


def test_the_card_names_the_scoring_file_and_its_sha256_or_that_keras_scores_it():
    onnx = InferenceArtifact(
        sha256="cd" * 32,
        bytes=96_000_000,
        image_size=224,
        outputs=["probability", "features"],
        parity_max_abs_diff=6e-8,
        parity_images=8,
    )

    exported = render_model_card(_card(inference=onnx.model_dump()))
    older = render_model_card(_card())

    assert f"- scoring file sha256: `{'cd' * 32}`" in exported
    assert "`model.onnx` for onnxruntime (96.0 MB, outputs probability, features)" in exported
    assert "within 6.0e-08 of Keras on 8 check images" in exported
    assert "scoring: with Keras (this version has no ONNX export" in older
