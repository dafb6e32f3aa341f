"""Shortcut audit: can a model tell the classes apart by *how* an image was taken?

When all covid images come from one hospital and all normal ones from another, a classifier can
reach a high score by learning the hospital (its image size, format, file size, ...) instead of the
disease. :func:`audit_shortcuts` measures, for each acquisition feature on its own, how well it
separates the labels, as a ROC AUC:

- **numeric** features (width, height, aspect ratio ``width / height``, file size in bytes) are used
  as the score directly; the AUC is ``max(auc, 1 - auc)``, since either direction is a tell.
- **categorical** features (source, mode, format, view) are scored by the *out-of-fold* covid rate of
  their category (target encoding with ``StratifiedKFold(5)``; a category not seen in the other
  folds gets their overall rate). A feature with a different value on every row therefore scores
  about 0.5, not 1.

Rows without a value for a feature are left out for that feature; a feature with fewer than two
values, or with only one class among the rows that have it, is skipped (with the reason).
Features with AUC ≥ ``threshold`` are *flagged* with a one-line warning. The audit warns; it
never fails a run. Plain pandas and scikit-learn; no Great Expectations, no Prefect.
"""

from __future__ import annotations

import html
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from cxr_model.markdown import markdown_table
from cxr_model.safe_text import markdown_text

__all__ = [
    "CATEGORICAL_FEATURES",
    "FEATURES",
    "NUMERIC_FEATURES",
    "FeatureScore",
    "LabelMix",
    "ShortcutAudit",
    "ShortcutFlag",
    "audit_shortcuts",
]

FEATURES = ("source", "width", "height", "aspect_ratio", "mode", "format", "bytes", "view")
NUMERIC_FEATURES = ("width", "height", "aspect_ratio", "bytes")
CATEGORICAL_FEATURES = ("source", "mode", "format", "view")
_WHAT = {
    "source": "source",
    "width": "image width",
    "height": "image height",
    "aspect_ratio": "aspect ratio",
    "mode": "image mode",
    "format": "file format",
    "bytes": "file size",
    "view": "view",
}
_UNKNOWN_SOURCE = "(unknown)"


class FeatureScore(BaseModel):
    """How well one feature alone separates the labels."""

    feature: str
    kind: Literal["numeric", "categorical"]
    auc: float
    rows: int  # rows that have a value for the feature
    distinct: int
    detail: str  # what differs, e.g. "covid median 640 (640–640), normal median 512 (512–512)"


class LabelMix(BaseModel):
    """Images per label from one source."""

    source: str
    images: int
    counts: dict[str, int]
    positive_share: float


class ShortcutFlag(BaseModel):
    """A feature that separates the labels on its own (AUC ≥ threshold)."""

    feature: str
    auc: float
    warning: str


class ShortcutAudit(BaseModel):
    """What :func:`audit_shortcuts` found; ``flags`` are the features to worry about."""

    positive_label: str
    threshold: float
    images: int
    label_counts: dict[str, int]
    features: list[FeatureScore]
    skipped: dict[str, str]  # feature -> why it was not scored
    label_mix: list[LabelMix]
    flags: list[ShortcutFlag]
    note: str | None = None  # set when nothing could be scored (e.g. only one class)

    @property
    def flagged(self) -> list[str]:
        """Names of the flagged features."""
        return [f.feature for f in self.flags]

    def summary_markdown(self, heading: str = "##") -> str:
        """Warnings (bold) first, then the AUC of every feature and the label mix per source."""
        lines = [f"{heading} Shortcut audit", ""]
        lines += [f"**Warning: {markdown_text(flag.warning)}**  " for flag in self.flags]
        if self.flags:
            lines.append("")
        elif self.note:
            lines += [self.note, ""]
        else:
            lines += [
                f"No single acquisition feature separates the labels "
                f"(every AUC < {self.threshold:.2f}).",
                "",
            ]
        counts = ", ".join(f"{label} {n}" for label, n in self.label_counts.items())
        lines += [
            f"{self.images} images ({counts}). AUC of each feature alone as a score for "
            f"{self.positive_label} (0.5: no signal, 1.0: a perfect tell); categorical features are "
            f"scored by their out-of-fold {self.positive_label} rate. Flagged at AUC ≥ "
            f"{self.threshold:.2f}.",
        ]
        if self.features:
            rows = [
                (
                    f"**{f.feature}**" if f.feature in self.flagged else f.feature,
                    f"{f.auc:.2f}",
                    f.kind,
                    f.rows,
                    f.distinct,
                    f.detail,
                )
                for f in self.features
            ]
            header = ["feature", "AUC", "kind", "rows", "distinct", "detail"]
            lines += ["", *markdown_table(header, rows, align="lrlrr")]
        if self.skipped:
            skipped = "; ".join(f"{name} ({why})" for name, why in self.skipped.items())
            lines += ["", f"Not scored: {skipped}."]
        if self.label_mix:
            labels = list(self.label_counts)
            lines += [
                "",
                f"{heading}# Label mix per source",
                "",
            ]
            header = ["source", "images", *labels, f"{self.positive_label} share"]
            rows = [
                (
                    m.source,
                    m.images,
                    *(m.counts.get(label, 0) for label in labels),
                    f"{m.positive_share:.0%}",
                )
                for m in self.label_mix
            ]
            lines += markdown_table(header, rows, align="l" + "r" * (len(header) - 1))
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A standalone HTML page with the same content as :meth:`summary_markdown`."""
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8"><title>Shortcut audit</title>',
            "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
            "padding:.3em .6em;text-align:left}.num{text-align:right}"
            ".flag{background:#fde2e1;border:1px solid #c0392b;padding:.6em;margin:.4em 0;"
            "font-weight:bold}</style></head><body>",
            '<p><a href="index.html">&larr; Data Docs</a></p>',
            "<h1>Shortcut audit</h1>",
        ]
        parts += [f'<div class="flag">Warning: {e(flag.warning)}</div>' for flag in self.flags]
        if not self.flags:
            parts.append(
                f"<p>{e(self.note)}</p>"
                if self.note
                else "<p>No single acquisition feature separates the labels "
                f"(every AUC &lt; {self.threshold:.2f}).</p>"
            )
        counts = ", ".join(f"{label} {n}" for label, n in self.label_counts.items())
        parts.append(
            f"<p>{self.images} images ({e(counts)}). AUC of each feature alone as a score for "
            f"{e(self.positive_label)} (0.5: no signal, 1.0: a perfect tell); categorical "
            f"features are scored by their out-of-fold {e(self.positive_label)} rate. Flagged at "
            f"AUC &ge; {self.threshold:.2f}.</p>"
        )
        if self.features:
            parts.append(
                "<table><tr><th>feature</th><th>AUC</th><th>kind</th><th>rows</th>"
                "<th>distinct</th><th>detail</th></tr>"
            )
            for f in self.features:
                name = f"<b>{e(f.feature)}</b>" if f.feature in self.flagged else e(f.feature)
                parts.append(
                    f'<tr><td>{name}</td><td class="num">{f.auc:.2f}</td><td>{f.kind}</td>'
                    f'<td class="num">{f.rows}</td><td class="num">{f.distinct}</td>'
                    f"<td>{e(f.detail)}</td></tr>"
                )
            parts.append("</table>")
        if self.skipped:
            skipped = "; ".join(f"{name} ({why})" for name, why in self.skipped.items())
            parts.append(f"<p>Not scored: {e(skipped)}.</p>")
        if self.label_mix:
            labels = list(self.label_counts)
            head = "".join(f"<th>{e(label)}</th>" for label in labels)
            parts += [
                "<h2>Label mix per source</h2>",
                f"<table><tr><th>source</th><th>images</th>{head}"
                f"<th>{e(self.positive_label)} share</th></tr>",
            ]
            for m in self.label_mix:
                cells = "".join(
                    f'<td class="num">{m.counts.get(label, 0)}</td>' for label in labels
                )
                parts.append(
                    f'<tr><td>{e(m.source)}</td><td class="num">{m.images}</td>{cells}'
                    f'<td class="num">{m.positive_share:.0%}</td></tr>'
                )
            parts.append("</table>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def audit_shortcuts(
    images: pd.DataFrame,
    threshold: float = 0.9,
    *,
    positive_label: str = "covid",
    folds: int = 5,
    seed: int = 0,
) -> ShortcutAudit:
    """Score each acquisition feature of ``images`` (image-manifest rows) as a label tell.

    ``images`` needs a ``label`` column; feature columns (``source``, ``width``, ``height``,
    ``mode``, ``format``, ``bytes``, ``view``) that are absent are skipped. Rows without a label
    are ignored. Deterministic for a given ``seed``.
    """
    if "label" not in images.columns:
        raise ValueError("images lack a label column")
    frame = images[images["label"].notna()].reset_index(drop=True)
    labels = frame["label"].astype(str)
    label_counts = {str(k): int(v) for k, v in labels.value_counts().sort_index().items()}
    if positive_label in label_counts:  # positive class first
        label_counts = {positive_label: label_counts.pop(positive_label), **label_counts}
    y = (labels == positive_label).to_numpy()
    others = [label for label in label_counts if label != positive_label]
    negative = others[0] if len(others) == 1 else f"non-{positive_label}"
    mix = _label_mix(frame, labels, list(label_counts), positive_label)

    features: list[FeatureScore] = []
    skipped: dict[str, str] = {}
    note = None
    if y.all() or not y.any():
        note = (
            f"Only one class ({', '.join(label_counts) or 'no labelled images'}): "
            "nothing to separate, no feature scored."
        )
    else:
        for name in FEATURES:
            values = _feature(frame, name)
            if values is None:
                skipped[name] = "no such column"
                continue
            score = _score(name, values, y, positive_label, negative, folds, seed)
            if isinstance(score, str):
                skipped[name] = score
            else:
                features.append(score)
    flags = [
        ShortcutFlag(
            feature=f.feature,
            auc=f.auc,
            warning=_warning(f, frame, labels, y, positive_label, negative),
        )
        for f in sorted(features, key=lambda f: -f.auc)
        if f.auc >= threshold
    ]
    return ShortcutAudit(
        positive_label=positive_label,
        threshold=threshold,
        images=len(frame),
        label_counts=label_counts,
        features=features,
        skipped=skipped,
        label_mix=mix,
        flags=flags,
        note=note,
    )


# --- scoring -----------------------------------------------------------------------------------


def _feature(frame: pd.DataFrame, name: str) -> pd.Series | None:
    """The feature's values (numeric as float, categorical as str, missing as NaN/None)."""
    if name == "aspect_ratio":
        if not {"width", "height"} <= set(frame.columns):
            return None
        width = _numeric(frame["width"])
        height = _numeric(frame["height"]).where(lambda h: h > 0)
        return (width / height).round(4)
    if name not in frame.columns:
        return None
    if name in NUMERIC_FEATURES:
        return _numeric(frame[name])
    values = frame[name].astype("string").str.strip()
    values = values.where(values.notna() & (values != ""))
    if name == "view":  # "pa" and "PA" are the same view
        values = values.str.upper()
    return values.astype(object).where(values.notna(), None)


def _numeric(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").astype("float64")


def _score(
    name: str,
    values: pd.Series,
    y: np.ndarray,
    positive: str,
    negative: str,
    folds: int,
    seed: int,
) -> FeatureScore | str:
    """The feature's AUC, or why it cannot be scored."""
    from sklearn.metrics import roc_auc_score  # scoring imports this module: not then

    present = values.notna().to_numpy()
    if not present.any():
        return "no values"
    kept = values[present].reset_index(drop=True)
    target = y[present]
    distinct = int(kept.nunique())
    if distinct < 2:
        return f"one value: {_show(kept.iloc[0])}"
    if target.all() or not target.any():
        return "only one class among the rows with a value"
    if name in NUMERIC_FEATURES:
        auc = float(roc_auc_score(target, kept.to_numpy(dtype=float)))
        return FeatureScore(
            feature=name,
            kind="numeric",
            auc=max(auc, 1.0 - auc),
            rows=len(kept),
            distinct=distinct,
            detail=_numeric_detail(kept, target, positive, negative),
        )
    minority = int(min(target.sum(), (~target).sum()))
    n_splits = min(folds, minority)
    if n_splits < 2:
        return "too few images of a class for cross-validation"
    encoded = _out_of_fold_rate(kept.astype(str), target, n_splits, seed)
    return FeatureScore(
        feature=name,
        kind="categorical",
        auc=float(roc_auc_score(target, encoded)),
        rows=len(kept),
        distinct=distinct,
        detail=_categorical_detail(kept.astype(str), target, positive),
    )


def _out_of_fold_rate(values: pd.Series, y: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Each row's category's positive rate, learnt on the other folds (their overall rate for a
    category they do not contain)."""
    from sklearn.model_selection import StratifiedKFold  # scoring imports this module: not then

    encoded = np.zeros(len(values), dtype=float)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    target = pd.Series(y.astype(float), index=values.index)
    for train, test in folds.split(np.zeros(len(values)), y):
        rates = target.iloc[train].groupby(values.iloc[train]).mean()
        prior = float(target.iloc[train].mean())
        encoded[test] = values.iloc[test].map(rates).fillna(prior).to_numpy(dtype=float)
    return encoded


def _numeric_detail(values: pd.Series, y: np.ndarray, positive: str, negative: str) -> str:
    pos, neg = values[y], values[~y]
    text = (
        f"{positive} median {_show(pos.median())} ({_show(pos.min())}–{_show(pos.max())}), "
        f"{negative} median {_show(neg.median())} ({_show(neg.min())}–{_show(neg.max())})"
    )
    if pos.min() > neg.max() or neg.min() > pos.max():
        text += ": no overlap"
    return text


def _categorical_detail(values: pd.Series, y: np.ndarray, positive: str, limit: int = 6) -> str:
    table = pd.DataFrame({"value": values, "y": y}).groupby("value")["y"].agg(["sum", "count"])
    table = table.sort_values("count", ascending=False)
    shown = [
        f"{value} {int(r['sum'])}/{int(r['count'])} {positive}"
        for value, r in table.head(limit).iterrows()
    ]
    if len(table) > limit:
        shown.append(f"... {len(table) - limit} more")
    return ", ".join(shown)


def _warning(
    score: FeatureScore,
    frame: pd.DataFrame,
    labels: pd.Series,
    y: np.ndarray,
    positive: str,
    negative: str,
) -> str:
    """One line naming the feature, what gives the labels away, and why that matters."""
    values = _feature(frame, score.feature)
    assert values is not None
    present = values.notna().to_numpy()
    if score.kind == "numeric":
        how = _numeric_detail(
            values[present].reset_index(drop=True), y[present], positive, negative
        )
    else:
        how = _categorical_story(
            score.feature,
            values[present].astype(str).reset_index(drop=True),
            labels[present].reset_index(drop=True),
            positive,
        )
    return (
        f"{score.feature} separates the labels (AUC {score.auc:.2f}): {how} — a model can learn "
        f"the {_WHAT.get(score.feature, score.feature)} instead of the disease"
    )


def _categorical_story(feature: str, values: pd.Series, labels: pd.Series, positive: str) -> str:
    """``all covid from hannover, all normal from nih-cxr8`` when every value holds one label;
    otherwise which values hold only one label and which hold several."""
    link = "from" if feature == "source" else f"with {feature}"
    table = pd.crosstab(values, labels)
    order = [positive] + sorted(c for c in table.columns if c != positive)
    size = table.sum(axis=1)
    pure = {label: [] for label in order}  # values holding only this label, biggest first
    for value in size.sort_values(ascending=False).index:
        held = [label for label in order if table.at[value, label] > 0]
        if len(held) == 1:
            pure[held[0]].append(value)
    mixed = [v for v in size.sort_values(ascending=False).index if (table.loc[v] > 0).sum() > 1]
    word = "all" if not mixed else "only"
    parts = [f"{word} {label} {link} {_names(pure[label])}" for label in order if pure[label]]
    if mixed:
        parts.append(f"several labels {link} {_names(mixed)}")
    return ", ".join(parts) if not mixed else "; ".join(parts)


def _names(values: list, limit: int = 3) -> str:
    shown = [str(v) for v in values[:limit]]
    if len(values) > limit:
        shown.append(f"{len(values) - limit} more")
    return ", ".join(shown)


def _label_mix(
    frame: pd.DataFrame, labels: pd.Series, order: list[str], positive: str
) -> list[LabelMix]:
    if "source" in frame.columns:
        sources = frame["source"].astype("string").fillna(_UNKNOWN_SOURCE)
    else:
        sources = pd.Series(_UNKNOWN_SOURCE, index=frame.index)
    table = pd.crosstab(sources, labels)
    mix = []
    for source, row in table.iterrows():
        counts = {label: int(row.get(label, 0)) for label in order}
        images = sum(counts.values())
        mix.append(
            LabelMix(
                source=str(source),
                images=images,
                counts=counts,
                positive_share=counts.get(positive, 0) / images if images else 0.0,
            )
        )
    return sorted(mix, key=lambda m: (-m.images, m.source))


def _show(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)
