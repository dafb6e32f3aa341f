"""Did a model learn the disease or the hospital? Evidence from sources and patients it never saw.

A validation split drawn from the training sources rewards a model that recognises the hospital
when each class comes from a different one. Two measurements do not:

- **held-out sources**: the images of sources kept out of training entirely (the ``Holdout``
  split), scored at the threshold chosen on Val;
- **within-source AUC**: for every source with both classes, the AUC among its images the model
  did not train on (Val and Holdout), where the source cannot tell the classes apart; pooled as
  one **source-stratified AUC** that compares covid and normal images of the same source only
  (the pair-weighted mean of the within-source AUCs).

Each AUC carries a 95% bootstrap interval, resampled within each source and class.
:attr:`Generalisation.honest` names the number to rely on. Plain pydantic and numpy; no Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import roc_auc_score

from cxr_model.evaluate import (
    CI_LEVEL,
    DEFAULT_BOOTSTRAP,
    Evaluation,
    bootstrap_aucs,
    evaluate_predictions,
)
from cxr_model.markdown import markdown_table
from cxr_model.safe_text import markdown_cell

__all__ = [
    "MIN_PER_CLASS",
    "Generalisation",
    "HonestEstimate",
    "SourceAUC",
    "StratifiedAUC",
    "assess_generalisation",
    "estimates_markdown",
    "honest_line",
    "within_source_aucs",
]

# A source counts as within-source evidence with at least this many unseen images of each class.
MIN_PER_CLASS = 5


class SourceAUC(BaseModel):
    """AUC among one source's unseen images (both classes)."""

    source: str
    splits: str  # where the images come from: "Val", "Holdout" or "Val+Holdout"
    n_covid: int
    n_normal: int
    auc: float
    auc_ci_low: float
    auc_ci_high: float

    @property
    def enough(self) -> bool:
        return min(self.n_covid, self.n_normal) >= MIN_PER_CLASS


class StratifiedAUC(BaseModel):
    """AUC over covid–normal pairs from the same source, pooled over sources."""

    auc: float
    auc_ci_low: float
    auc_ci_high: float
    sources: list[str]
    n_images: int


class HonestEstimate(BaseModel):
    """The number to rely on, what it is, and its interval."""

    kind: Literal["held_out", "within_source"]
    name: str
    auc: float
    auc_ci_low: float | None
    auc_ci_high: float | None


class Generalisation(BaseModel):
    """Evidence beyond the internal Val split: held-out sources and within-source AUCs."""

    confounded: bool = Field(description="The shortcut audit flagged the training data.")
    shortcut_flags: list[str] = Field(default_factory=list)
    held_out_sources: list[str] = Field(default_factory=list)
    held_out_reason: str = ""
    held_out: Evaluation | None = None  # at the threshold chosen on Val
    within_source: list[SourceAUC] = Field(default_factory=list)
    stratified: StratifiedAUC | None = None

    @property
    def honest(self) -> HonestEstimate | None:
        """Held-out-source AUC when sources were held out, else the source-stratified AUC."""
        if self.held_out is not None and self.held_out.auc is not None:
            return HonestEstimate(
                kind="held_out",
                name=f"held-out-source AUC ({', '.join(self.held_out_sources)})",
                auc=self.held_out.auc,
                auc_ci_low=self.held_out.auc_ci_low,
                auc_ci_high=self.held_out.auc_ci_high,
            )
        if self.stratified is not None:
            return HonestEstimate(
                kind="within_source",
                name=f"within-source AUC ({', '.join(self.stratified.sources)})",
                auc=self.stratified.auc,
                auc_ci_low=self.stratified.auc_ci_low,
                auc_ci_high=self.stratified.auc_ci_high,
            )
        return None

    def evidence(self) -> dict[str, float]:
        """Each honest AUC the gate checks, by name: held-out sources, pooled within-source."""
        found = {}
        if self.held_out is not None and self.held_out.auc is not None:
            found["held-out-source AUC"] = self.held_out.auc
        if self.stratified is not None:
            found["within-source AUC"] = self.stratified.auc
        return found


def _interval(aucs: np.ndarray) -> tuple[float, float]:
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def within_source_aucs(
    labels: np.ndarray,
    probabilities: np.ndarray,
    sources: Sequence[str],
    splits: Sequence[str],
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[list[SourceAUC], StratifiedAUC | None]:
    """AUC per source with both classes, and the stratified AUC over the sources with at least
    :data:`MIN_PER_CLASS` images of each class (None when there is none)."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    names, parts = np.asarray(sources, dtype=object), np.asarray(splits, dtype=object)
    per_source, boots, pairs = [], [], []
    for number, source in enumerate(sorted(set(names.tolist()))):
        mask = names == source
        ys, ps = y[mask], p[mask]
        if ys.min() == ys.max():
            continue
        aucs = bootstrap_aucs(ys, ps, n_bootstrap, seed + number)
        low, high = _interval(aucs)
        row = SourceAUC(
            source=str(source),
            splits="+".join(sorted(set(parts[mask].tolist()), reverse=True)),
            n_covid=int(ys.sum()),
            n_normal=int(len(ys) - ys.sum()),
            auc=float(roc_auc_score(ys, ps)),
            auc_ci_low=low,
            auc_ci_high=high,
        )
        per_source.append(row)
        if row.enough:
            boots.append(aucs)
            pairs.append(row.n_covid * row.n_normal)
    counted = [row for row in per_source if row.enough]
    if not counted:
        return per_source, None
    weights = np.asarray(pairs, dtype=float) / sum(pairs)
    low, high = _interval(weights @ np.vstack(boots))
    stratified = StratifiedAUC(
        auc=float(sum(w * row.auc for w, row in zip(weights, counted, strict=True))),
        auc_ci_low=low,
        auc_ci_high=high,
        sources=[row.source for row in counted],
        n_images=sum(row.n_covid + row.n_normal for row in counted),
    )
    return per_source, stratified


def assess_generalisation(
    *,
    labels: np.ndarray,
    probabilities: np.ndarray,
    sources: Sequence[str],
    splits: Sequence[str],
    threshold: float,
    held_out_sources: list[str],
    held_out_reason: str,
    shortcut_flags: list[str],
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
) -> Generalisation:
    """The evidence from unseen images: ``labels``/``probabilities``/``sources``/``splits`` cover
    the Val and Holdout images; ``threshold`` is the one chosen on Val."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    held = np.asarray(splits, dtype=object) == "Holdout"
    held_out = None
    if held.any():
        held_out = evaluate_predictions(
            y[held],
            p[held],
            threshold=threshold,
            sources=[s for s, h in zip(sources, held, strict=True) if h],
            n_bootstrap=n_bootstrap,
        )
    per_source, stratified = within_source_aucs(y, p, sources, splits, n_bootstrap)
    return Generalisation(
        confounded=bool(shortcut_flags),
        shortcut_flags=shortcut_flags,
        held_out_sources=held_out_sources,
        held_out_reason=held_out_reason,
        held_out=held_out,
        within_source=per_source,
        stratified=stratified,
    )


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f" ({low:.2f}–{high:.2f})"


def _at(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def estimates_markdown(internal: Evaluation, found: Generalisation, heading: str = "##") -> str:
    """Internal and honest estimates side by side, the within-source AUCs, and a warning in bold
    when the data are confounded."""
    lines = [f"{heading} Internal vs honest estimates", ""]
    honest = found.honest
    if found.confounded:
        lines += [
            "**Warning: the shortcut audit flagged the training data "
            f"({markdown_cell('; '.join(found.shortcut_flags))}). "
            "The internal Val numbers can measure the shortcut, not the disease"
            + (f"; rely on the {honest.name}.**" if honest else "; no honest estimate exists.**"),
            "",
        ]
    lines += [
        f"Thresholded numbers are at threshold {internal.threshold:.3f}, chosen on Val "
        f"({internal.threshold_rule}).",
        "",
    ]
    rows = [
        (
            "internal Val",
            f"{internal.n_covid} / {internal.n_normal}",
            f"{_at(internal.auc)}{_ci(internal.auc_ci_low, internal.auc_ci_high)}",
            _at(internal.sensitivity),
            _at(internal.specificity),
            "new patients from the training sources",
        )
    ]
    held = found.held_out
    if held is not None:
        label = (
            "**held-out sources (honest)**"
            if honest and honest.kind == "held_out"
            else "held-out sources"
        )
        rows.append(
            (
                f"{label}: {', '.join(found.held_out_sources)}",
                f"{held.n_covid} / {held.n_normal}",
                f"{_at(held.auc)}{_ci(held.auc_ci_low, held.auc_ci_high)}",
                _at(held.sensitivity),
                _at(held.specificity),
                "hospitals never seen in training",
            )
        )
    if found.stratified is not None:
        s = found.stratified
        label = "within-source, pooled" + (
            " (honest)" if honest and honest.kind == "within_source" else ""
        )
        rows.append(
            (
                f"{label}: {', '.join(s.sources)}",
                f"{s.n_images} images",
                f"{s.auc:.2f}{_ci(s.auc_ci_low, s.auc_ci_high)}",
                "",
                "",
                "covid vs normal within one hospital: the source cannot help",
            )
        )
    header = [
        "estimate",
        "covid / normal",
        "AUC (95% CI)",
        "sensitivity",
        "specificity",
        "what it measures",
    ]
    lines += markdown_table(header, rows, align="lrlrr")
    lines += ["", f"Held-out sources: {markdown_cell(found.held_out_reason or 'none')}.", ""]
    if found.within_source:
        lines += [
            f"{heading}# Within-source AUC (unseen images; pooled when ≥ {MIN_PER_CLASS} per class)",
            "",
            *markdown_table(
                ["source", "split", "covid", "normal", "AUC (95% CI)"],
                [
                    (
                        row.source,
                        row.splits,
                        row.n_covid,
                        row.n_normal,
                        f"{row.auc:.2f}{_ci(row.auc_ci_low, row.auc_ci_high)}",
                    )
                    for row in found.within_source
                ],
                align="llrr",
            ),
        ]
    else:
        lines.append("No source has both classes among the unseen images: no within-source AUC.")
    return "\n".join(lines) + "\n"


def honest_line(internal: Evaluation, found: Generalisation) -> str:
    """One console line: the internal AUC next to the honest one."""
    text = f"internal Val AUC {_at(internal.auc)}{_ci(internal.auc_ci_low, internal.auc_ci_high)}"
    honest = found.honest
    if honest is None:
        return text + "; honest estimate: none (no held-out sources, no source with both classes)"
    return (
        text + f"; honest estimate: {honest.name} {honest.auc:.2f}"
        f"{_ci(honest.auc_ci_low, honest.auc_ci_high)}"
    )
