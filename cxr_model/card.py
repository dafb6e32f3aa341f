"""A markdown model card for a registered version: what it is, what it was trained on, how well it
did, and what it must not be used for.

:func:`render_model_card` takes the registry's :class:`~cxr_model.registry.ModelCard` and, when
available, the validation :class:`~cxr_model.evaluate.Evaluation`, the promotion
:class:`~cxr_model.gate.GateDecision`, the image sources and the shortcut audit. Every optional part
may be None; the card then says what is missing instead of failing.

This module only formats text; it imports neither Keras nor Prefect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from cxr_model.audit import ShortcutAudit
from cxr_model.evaluate import (
    Evaluation,
    chosen_on_data,
    metrics_table_markdown,
    per_source_markdown,
)
from cxr_model.gate import GateDecision, gate_markdown
from cxr_model.generalisation import Generalisation, estimates_markdown
from cxr_model.images import Preprocessing
from cxr_model.markdown import markdown_table
from cxr_model.safe_text import markdown_cell

if TYPE_CHECKING:
    from cxr_model.registry import ModelCard

__all__ = ["INTENDED_USE", "LIMITATIONS", "render_model_card"]

INTENDED_USE = (
    "Research and education; not for diagnosis or clinical decisions. The model sorts chest "
    "x-rays into covid and normal for studying how such classifiers behave, including how they "
    "fail. It has not been validated prospectively or on external data, is not a medical device, "
    "and its outputs must not guide the care of any patient."
)
LIMITATIONS = [
    "**Dataset bias.** Public COVID-19 chest x-ray collections mix images from different "
    "hospitals, devices and eras per class. Classifiers trained on them have been shown to rely "
    "on such shortcuts (text markers, patient position, image borders) rather than on lung "
    "findings, and to lose much of their accuracy on data from new hospitals (DeGrave, Janizek & "
    "Lee, *AI for radiographic COVID-19 detection selects shortcuts over signal*, Nature Machine "
    "Intelligence 3, 610–619, 2021).",
    "**Source confounding.** When a source contributes mostly one label, a high validation score "
    "can come from recognising the source. Validation images come from the same sources as the "
    "training images, so such a score does not show that the model recognises disease; see the "
    "per-source results and the shortcut audit.",
    "**Small data.** The training and validation sets are small; the AUC interval shows how much "
    "the headline numbers could move on another sample of the same sources, not on other sources.",
    "**Threshold and prevalence.** A threshold chosen on the validation data flatters the "
    "sensitivity, specificity, PPV and NPV reported here; PPV and NPV also depend on the covid "
    "share of the validation data, which differs from any clinical population.",
    "**Two classes only.** Every image is called covid or normal; other findings (pneumonia of "
    "other causes, effusions, devices) are outside what the model was trained to separate.",
]
_MISSING = "—"
_TRAINING_FIELDS = {  # parameters["training"] key → label
    "architecture": "architecture",
    "image_size": "image size (px)",
    "epochs": "epochs",
    "batch_size": "batch size",
    "learning_rate": "learning rate",
    "seed": "seed",
}


def _text(value: object) -> str:
    """A table cell's text for ``value`` (escaped by the table); None and NaN become a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    return str(value)


def _header(card: ModelCard) -> list[str]:
    return [
        f"# Model card: {card.name} v{card.version}",
        "",
        f"- created: {card.created_at}",
        f"- model file: `{card.model_key}` ({card.model_bytes / 1e6:.1f} MB)",
        f"- sha256: `{card.model_sha256}`",
        *_scoring_file(card),
        f"- dataset: `{card.dataset_id}`",
        f"- decision threshold: {card.threshold:.3f} (covid when the probability is at least this)",
        f"- code version: `{card.code_version}`",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
    ]


def _data(card: ModelCard, sources: list[dict] | None) -> list[str]:
    lines = ["## Data", "", f"Dataset `{card.dataset_id}`.", ""]
    if not sources:
        return [*lines, "The image sources were not recorded with this card.", ""]
    rows = []
    for row in sources:
        license_ = _text(row.get("license"))
        rows.append(
            (
                _text(row.get("source")),
                _text(row.get("label")),
                _text(row.get("images")),
                "not recorded" if license_ == _MISSING else license_,
            )
        )
    lines += markdown_table(["source", "label", "images", "license"], rows, align="llr")
    return [*lines, ""]


def _audit_dict(audit: Mapping | ShortcutAudit | None) -> Mapping | None:
    return audit.model_dump() if isinstance(audit, ShortcutAudit) else audit


def _flagged(audit: Mapping | None) -> list[str]:
    """Names of the flagged features: from ``flags`` (audit dump) or a plain ``flagged`` list."""
    if not audit:
        return []
    if audit.get("flags"):
        return [str(flag["feature"]) for flag in audit["flags"]]
    return [str(name) for name in audit.get("flagged") or []]


def _audit(audit: Mapping | None) -> list[str]:
    lines = ["## Shortcut audit", ""]
    if audit is None:
        return [*lines, "No shortcut audit was recorded for this model.", ""]
    threshold = audit.get("threshold")
    at = "" if threshold is None else f" (AUC ≥ {threshold:.2f})"
    flags = audit.get("flags") or []
    flagged = _flagged(audit)
    if flagged:
        lines += [
            f"> **Warning: {len(flagged)} acquisition feature(s) separate the labels on their own"
            f"{at}: {', '.join(flagged)}.** The model may have learnt these instead of the "
            "disease; its validation numbers are then not evidence that it recognises covid.",
            ">",
        ]
        lines += [f"> - {markdown_cell(flag['warning'])}" for flag in flags if flag.get("warning")]
        lines.append("")
    elif audit.get("note"):
        lines += [str(audit["note"]), ""]
    else:
        lines += [
            f"No feature above threshold{at}: no single acquisition feature gives the labels away.",
            "",
        ]
    features = audit.get("features") or []
    if features:
        rows = [
            (
                f"**{f['feature']}**" if f["feature"] in flagged else f["feature"],
                f"{f['auc']:.2f}",
                _text(f.get("detail")),
            )
            for f in features
        ]
        lines += [*markdown_table(["feature", "AUC alone", "detail"], rows, align="lr"), ""]
    return lines


def _evaluation(card: ModelCard, evaluation: Evaluation | None) -> Evaluation | None:
    """The evaluation given, else the one stored in the card's metrics when they parse as one."""
    if evaluation is not None:
        return evaluation
    try:
        return Evaluation.model_validate(card.metrics)
    except ValidationError:
        return None


def _metrics(card: ModelCard, evaluation: Evaluation | None) -> list[str]:
    lines = ["## Metrics", ""]
    if evaluation is None:
        if not card.metrics:
            return [*lines, "No validation metrics were recorded.", ""]
        rows = [(_text(k), _text(v)) for k, v in card.metrics.items()]
        return [*lines, *markdown_table(["metric", "value"], rows), ""]
    lines += [
        "On the validation split; covid is the positive class. The AUC interval is a 95% "
        f"percentile bootstrap ({evaluation.n_bootstrap} resamples within each class).",
        "",
        *metrics_table_markdown(evaluation),
        "",
    ]
    if chosen_on_data(evaluation):
        lines += [
            f"The threshold was chosen on the validation data by the {evaluation.threshold_rule} "
            "rule, so the threshold-dependent numbers are optimistic.",
            "",
        ]
    return lines


def _per_source(evaluation: Evaluation | None) -> list[str]:
    lines = ["## Per-source results", ""]
    if evaluation is None or not evaluation.per_source:
        return [*lines, "Not available (one source in the validation data, or not recorded).", ""]
    lines += [f"At the threshold {evaluation.threshold:.3f}.", "", *per_source_markdown(evaluation)]
    failing = [s.source for s in evaluation.per_source if s.sensitivity == 0 or s.specificity == 0]
    if failing:
        lines += [
            "",
            f"**Every image of one class is called wrongly for: {', '.join(failing)}.** "
            "Performance depends on where an image comes from.",
        ]
    return [*lines, ""]


def _estimates(evaluation: Evaluation | None, found: Generalisation | None) -> list[str]:
    if evaluation is None or found is None:
        return [
            "## Internal vs honest estimates",
            "",
            "Not recorded: this version was registered before cxr measured held-out sources.",
            "",
        ]
    return [estimates_markdown(evaluation, found)]


def _gate(gate: GateDecision | None) -> list[str]:
    if gate is None:
        return ["## Promotion decision", "", "No promotion decision was recorded.", ""]
    return ["## Promotion decision", "", gate_markdown(gate, heading=None)]


def _scoring_file(card: ModelCard) -> list[str]:
    """The ONNX export scoring runs (verified against this sha256 like the model file)."""
    if not card.inference:
        return ["- scoring: with Keras (this version has no ONNX export; registered before them)"]
    onnx = card.inference
    return [
        f"- scoring file: `{onnx['file']}` for {onnx['runtime']} ({onnx['bytes'] / 1e6:.1f} MB, "
        f"outputs {', '.join(onnx['outputs'])}), probabilities within "
        f"{onnx['parity_max_abs_diff']:.1e} of Keras on {onnx['parity_images']} check images",
        f"- scoring file sha256: `{onnx['sha256']}`",
    ]


def _ood(card: ModelCard) -> list[str]:
    lines = ["## Images it does not know", ""]
    if not card.ood:
        return lines + [
            "**This version has no out-of-distribution check**: scoring gives a probability for "
            "any image, noise included. Retrain (a single model, not an ensemble) to add one.",
            "",
        ]
    ood = card.ood
    shares = ", ".join(f"{share:.0%} of {split}" for split, share in ood["flagged"].items())
    return lines + [
        f"Scoring marks an image `out_of_distribution` (probability given, no label) when it is "
        f"farther from the {ood['n_train']} training images than all but "
        f"{ood['flag_rate']:.0%} of the {ood['n_val']} validation images ({ood['method']}). "
        f"At registration it flagged {shares}. Images that fail the image suite's per-image "
        "checks (too small, wrong shape or format) are `rejected` and get no probability.",
        "",
    ]


def _training(card: ModelCard) -> list[str]:
    nested = card.parameters.get("training")  # a retrain run stores RetrainParams
    parameters = nested if isinstance(nested, Mapping) else card.parameters
    training = card.training
    history = training.get("history") or {}
    epochs_run = max((len(values) for values in history.values()), default=None)
    rows = [(label, parameters.get(key)) for key, label in _TRAINING_FIELDS.items()]
    rows += [
        ("image preprocessing", Preprocessing.of_model(parameters).name),
        ("devices", ", ".join(training["devices"]) if training.get("devices") else None),
        ("epochs in history", epochs_run),
        ("training seconds", _rounded(training.get("seconds"))),
        ("images per second", _rounded(training.get("images_per_second"))),
        ("final train accuracy", _rounded(training.get("train_accuracy"), 3)),
        ("final validation accuracy", _rounded(training.get("val_accuracy"), 3)),
    ]
    lines = [
        "## Training configuration",
        "",
        *markdown_table(["setting", "value"], [(label, _text(value)) for label, value in rows]),
    ]
    if card.parameters.get("sources"):
        lines += ["", f"Sources: {', '.join(f'`{s}`' for s in card.parameters['sources'])}."]
    if card.parameters.get("split"):
        lines += ["", f"Split settings: `{json.dumps(card.parameters['split'], sort_keys=True)}`."]
    return [*lines, ""]


def _rounded(value: object, digits: int = 1) -> object:
    return round(value, digits) if isinstance(value, float) else value


def _limitations(flagged: list[str]) -> list[str]:
    lines = ["## Limitations", "", *[f"- {text}" for text in LIMITATIONS]]
    if flagged:
        lines.append(
            f"- **Flagged shortcuts in this dataset:** {', '.join(flagged)} (each separates the "
            "labels on its own; see the shortcut audit)."
        )
    return [*lines, ""]


def _versions(card: ModelCard) -> list[str]:
    lines = ["## Library and code versions", "", f"Code version: `{card.code_version}`.", ""]
    if not card.library_versions:
        return [*lines, "Library versions were not recorded.", ""]
    rows = [(_text(k), _text(v)) for k, v in sorted(card.library_versions.items())]
    return [*lines, *markdown_table(["library", "version"], rows), ""]


def _notes(card: ModelCard) -> list[str]:
    if not card.notes:
        return []
    return ["## Notes", "", *[f"- {markdown_cell(note)}" for note in card.notes], ""]


def render_model_card(
    card: ModelCard,
    *,
    evaluation: Evaluation | None = None,
    gate: GateDecision | None = None,
    sources: list[dict] | None = None,
    audit: Mapping | ShortcutAudit | None = None,
    generalisation: Generalisation | None = None,
) -> str:
    """The model card of ``card`` as markdown.

    - ``evaluation``: the validation evaluation; None → the card's stored metrics.
    - ``gate``: the promotion decision taken when the version was registered.
    - ``sources``: rows ``{"source", "label", "images", "license"}`` (missing values allowed).
    - ``generalisation``: held-out-source and within-source evidence; None → the card's stored
      ``generalisation`` (if any).
    - ``audit``: a :class:`~cxr_model.audit.ShortcutAudit` or its ``model_dump()``: ``threshold``,
      ``features`` (``feature``, ``auc``, ``detail``), ``flags`` (``feature``, ``auc``,
      ``warning``) and ``note``; a plain ``{"flagged": [names]}`` is accepted too.
    """
    audit_summary = _audit_dict(audit)
    evaluated = _evaluation(card, evaluation)
    if generalisation is None and card.generalisation:
        generalisation = Generalisation.model_validate(card.generalisation)
    sections = [
        _header(card),
        _estimates(evaluated, generalisation),
        _data(card, sources),
        _audit(audit_summary),
        _metrics(card, evaluated),
        _per_source(evaluated),
        _gate(gate),
        _ood(card),
        _training(card),
        _limitations(_flagged(audit_summary)),
        _versions(card),
        _notes(card),
    ]
    return "\n".join(line for section in sections for line in section).rstrip("\n") + "\n"
