"""The promotion gate: does a newly trained model become the champion?

:func:`decide` compares a candidate's :class:`~cxr_model.evaluate.Evaluation` with the current
champion's. The comparison is only fair when both were measured on the **same** validation images:
the caller re-scores the champion on the candidate's validation split and passes that evaluation
here, not the numbers stored on the champion's card (those came from the champion's own, older
split).

Rules, in order:

1. The candidate must meet every minimum (AUC, sensitivity, optionally specificity). A metric that
   is undefined (``None``, e.g. AUC on a single-class split) does not meet its minimum.
2. A champion that exists but cannot be loaded (its card, model file or alias record is missing,
   unreadable or fails its sha256 check) cannot be compared with: the candidate stays a candidate,
   and the reason says what is wrong with the champion. It is never taken for "no champion".
   With no champion, a candidate that meets the minimums becomes the first champion.
3. When the shortcut audit flagged the training data (a hospital, image size or format gives the
   label away), the internal Val numbers may measure the shortcut. The candidate must then show
   evidence from images where the shortcut cannot help (:class:`~cxr_model.generalisation.
   Generalisation`): every held-out-source and within-source AUC available must reach
   ``min_unseen_auc``, and at least one must exist. ``allow_confounded`` skips this, and the
   reason then says so (it is recorded on the card and in the alias history).
4. Otherwise it becomes champion when its comparison metric is at least the champion's minus the
   tolerance (so a tie promotes: the newer model was trained on the newer data), else it stays a
   candidate.

Plain pydantic; no Prefect, no storage.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from cxr_model.evaluate import Evaluation
from cxr_model.generalisation import Generalisation
from cxr_model.markdown import markdown_table
from cxr_model.registry import CANDIDATE, CHAMPION

__all__ = ["GateDecision", "GateSettings", "decide", "gate_markdown", "headline_metrics"]

# Metrics the gate may compare; all are "higher is better".
ComparedMetric = Literal["auc", "average_precision", "f1", "accuracy", "sensitivity", "specificity"]
# What the decision records of each model, in table order.
HEADLINE = (
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "average_precision",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "accuracy",
    "brier",
    "threshold",
    "threshold_rule",
    "n_images",
)
_LABELS = {
    "auc": "AUC",
    "auc_ci_low": "AUC 95% CI low",
    "auc_ci_high": "AUC 95% CI high",
    "average_precision": "average precision",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "brier": "Brier score",
    "threshold_rule": "threshold rule",
    "n_images": "validation images",
}


class GateSettings(BaseModel):
    """What a candidate must reach to be promoted."""

    min_auc: float = Field(
        default=0.8, ge=0, le=1, description="Lowest validation ROC AUC a champion may have."
    )
    min_sensitivity: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Lowest validation sensitivity (covid recall) at the model's threshold.",
    )
    min_specificity: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest validation specificity at the model's threshold; None: no minimum.",
    )
    metric: ComparedMetric = Field(
        default="auc", description="Metric on which candidate and champion are compared."
    )
    tolerance: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="How far below the champion the candidate's metric may be and still promote.",
    )
    min_unseen_auc: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="When the shortcut audit flags the data: lowest AUC on held-out sources and "
        "within sources that a champion may have.",
    )
    allow_confounded: bool = Field(
        default=False,
        description="Promote even when the data are confounded and the held-out-source or "
        "within-source evidence is missing or below min_unseen_auc (recorded on the card).",
    )


class GateDecision(BaseModel):
    """Whether the candidate was promoted, the alias it gets, and why."""

    promote: bool
    alias: Literal["champion", "candidate"]
    reason: str
    metric: str
    candidate_metrics: dict
    champion_version: int | None = None
    champion_metrics: dict | None = None
    champion_problem: str | None = Field(
        default=None, description="Why the champion could not be loaded, when it could not."
    )
    settings: GateSettings = Field(default_factory=GateSettings)
    unseen_evidence: dict[str, float] = Field(
        default_factory=dict, description="Held-out-source and within-source AUCs considered."
    )
    confounded: bool = False
    overridden: bool = Field(default=False, description="allow_confounded let the model pass.")


def headline_metrics(evaluation: Evaluation) -> dict:
    """The numbers of ``evaluation`` that a decision records (see ``HEADLINE``)."""
    return {name: getattr(evaluation, name) for name in HEADLINE}


def _label(metric: str) -> str:
    return _LABELS.get(metric, metric)


def _shortfalls(candidate: Evaluation, settings: GateSettings) -> list[str]:
    """One phrase per minimum the candidate misses, naming its value and the minimum."""
    minimums = {
        "auc": settings.min_auc,
        "sensitivity": settings.min_sensitivity,
        "specificity": settings.min_specificity,
    }
    missed = []
    for metric, minimum in minimums.items():
        if minimum is None:
            continue
        value = getattr(candidate, metric)
        if value is None:
            missed.append(f"{_label(metric)} is undefined on this validation split (single class)")
        elif value < minimum:
            missed.append(f"{_label(metric)} {value:.3f} is below the minimum {minimum:.3f}")
    return missed


def _met(candidate: Evaluation, settings: GateSettings) -> str:
    met = [f"AUC {candidate.auc:.3f} ≥ {settings.min_auc:.3f}"]
    met.append(f"sensitivity {candidate.sensitivity:.3f} ≥ {settings.min_sensitivity:.3f}")
    if settings.min_specificity is not None:
        met.append(f"specificity {candidate.specificity:.3f} ≥ {settings.min_specificity:.3f}")
    return ", ".join(met)


def _unseen_shortfall(generalisation: Generalisation, settings: GateSettings) -> str | None:
    """Why the evidence from unseen sources does not clear the gate (None: it does)."""
    flags = "; ".join(generalisation.shortcut_flags)
    evidence = generalisation.evidence()
    if not evidence:
        return (
            f"the shortcut audit flagged the data ({flags}) and there is no held-out-source or "
            "within-source evidence that the model learned the disease"
        )
    low = [
        f"{name} {value:.2f} < {settings.min_unseen_auc:.2f}"
        for name, value in evidence.items()
        if value < settings.min_unseen_auc
    ]
    if low:
        return f"{'; '.join(low)} (the shortcut audit flagged the data: {flags})"
    return None


def decide(
    candidate: Evaluation,
    champion: Evaluation | None,
    settings: GateSettings | None = None,
    champion_version: int | None = None,
    generalisation: Generalisation | None = None,
    champion_problem: str | None = None,
) -> GateDecision:
    """Promote ``candidate`` or not, given the ``champion`` re-evaluated on the same validation
    data (None when there is no champion yet) and the ``generalisation`` evidence (held-out and
    within-source AUCs; None: not measured). ``champion_problem`` says why a champion that exists
    could not be loaded; the candidate then stays a candidate."""
    settings = settings or GateSettings()
    metric = settings.metric
    confounded = generalisation is not None and generalisation.confounded
    shortfall = _unseen_shortfall(generalisation, settings) if confounded else None
    overridden = shortfall is not None and settings.allow_confounded

    def verdict(promote: bool, reason: str) -> GateDecision:
        if overridden and promote:
            reason += f" Allowed by gate.allow_confounded although {shortfall}."
        elif confounded and promote:
            evidence = ", ".join(f"{k} {v:.2f}" for k, v in generalisation.evidence().items())
            reason += f" On unseen sources: {evidence} (≥ {settings.min_unseen_auc:.2f})."
        return GateDecision(
            promote=promote,
            alias=CHAMPION if promote else CANDIDATE,
            reason=reason,
            metric=metric,
            candidate_metrics=headline_metrics(candidate),
            champion_version=champion_version,
            champion_metrics=None if champion is None else headline_metrics(champion),
            champion_problem=champion_problem,
            settings=settings,
            unseen_evidence=generalisation.evidence() if generalisation else {},
            confounded=confounded,
            overridden=overridden and promote,
        )

    missed = _shortfalls(candidate, settings)
    if champion_problem is not None:
        which = (
            "the champion" if champion_version is None else f"the champion (v{champion_version})"
        )
        reason = (
            f"Not promoted: {which} cannot be loaded: {champion_problem}. A new model replaces "
            "the champion only after a comparison on the same data, so it stays candidate until "
            "the champion is repaired or a version is promoted by hand."
        )
        if missed:
            reason += f" It also misses the minimums: {'; '.join(missed)}."
        return verdict(False, reason)
    if missed:
        return verdict(False, f"Not promoted: {'; '.join(missed)}.")
    if shortfall is not None and not settings.allow_confounded:
        return verdict(False, f"Not promoted: {shortfall}.")
    if champion is None:
        return verdict(True, f"First model: {_met(candidate, settings)}; promoted to champion.")
    ours, theirs = getattr(candidate, metric), getattr(champion, metric)
    who = "the champion" if champion_version is None else f"champion v{champion_version}"
    name = _label(metric)
    if ours is None:
        return verdict(False, f"Not promoted: the candidate's {name} is undefined.")
    if theirs is None:
        return verdict(
            True, f"Promoted: {name} {ours:.3f}; {who}'s {name} is undefined on the same data."
        )
    floor = theirs - settings.tolerance
    # compare with a little slack so that a difference of exactly the tolerance still promotes
    if ours >= floor or math.isclose(ours, floor, abs_tol=1e-12):
        return verdict(
            True,
            f"Promoted: {name} {ours:.3f} vs {theirs:.3f} for {who} on the same validation data "
            f"(within tolerance {settings.tolerance:.3f} or better); {_met(candidate, settings)}.",
        )
    return verdict(
        False,
        f"Not promoted: {name} {ours:.3f} is more than {settings.tolerance:.3f} below "
        f"{theirs:.3f} for {who} on the same validation data.",
    )


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _minimum(metric: str, settings: GateSettings) -> str:
    minimum = {
        "auc": settings.min_auc,
        "sensitivity": settings.min_sensitivity,
        "specificity": settings.min_specificity,
    }.get(metric)
    return "" if minimum is None else f"≥ {minimum:.3f}"


def gate_markdown(decision: GateDecision, heading: str | None = "###") -> str:
    """The decision, its reason and the candidate's and champion's metrics side by side, under a
    ``heading``-level title (None: no title, for embedding under the caller's own)."""
    verdict = "promoted to champion" if decision.promote else "kept as candidate"
    lines = [f"{heading} Promotion decision: {verdict}", ""] if heading else []
    lines += [f"**{verdict.capitalize()}.** {decision.reason}", ""]
    champion = (
        None
        if decision.champion_metrics is None
        else (
            "champion"
            if decision.champion_version is None
            else f"champion v{decision.champion_version}"
        )
    )
    header = ["metric", "candidate", *([f"{champion} (same data)"] if champion else []), "gate"]
    rows = []
    for metric, value in decision.candidate_metrics.items():
        row = [_label(metric), _cell(value)]
        if champion:
            row.append(_cell((decision.champion_metrics or {}).get(metric)))
        rule = _minimum(metric, decision.settings)
        if metric == decision.metric and champion:
            rule = " ".join(
                filter(None, [rule, f"compared (tolerance {decision.settings.tolerance:.3f})"])
            )
        rows.append([*row, rule])
    lines += markdown_table(header, rows, align="lrr" if champion else "lr")
    if decision.confounded or decision.unseen_evidence:
        needed = f"≥ {decision.settings.min_unseen_auc:.3f}" if decision.confounded else "reported"
        evidence = [
            (name, f"{value:.3f}", needed) for name, value in decision.unseen_evidence.items()
        ] or [("(none measured)", "n/a", "required: the data are confounded")]
        header = ["evidence from unseen sources", "candidate", "gate"]
        lines += ["", *markdown_table(header, evidence, align="lr")]
    if decision.champion_problem is not None:
        which = (
            "champion"
            if decision.champion_version is None
            else (f"champion v{decision.champion_version}")
        )
        lines += ["", f"**The {which} could not be loaded: {decision.champion_problem}**"]
    if decision.overridden:
        lines += [
            "",
            "**Promoted under `gate.allow_confounded`: the unseen-source minimum was waived.**",
        ]
    return "\n".join(lines) + "\n"
