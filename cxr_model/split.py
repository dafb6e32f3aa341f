"""Split accepted images into Train and Val by patient, and lay them out as the study did.

The split is deterministic (seeded), stratified by label and grouped by patient, so no patient
appears in both splits; an image without a patient id is its own group. Images of *held-out
sources* (:func:`choose_held_out_sources`) go to a third split, ``Holdout``, that no model trains
on: its AUC says how a model does on a hospital it has never seen. The dataset is then
materialised in the store in the study's layout, ``datasets/<id>/Train/covid/<sha256>.png``, with a
``split.csv`` beside it. The dataset id hashes the content (images, labels, patients) and the
split parameters, so the same inputs always give the same dataset.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, Field

from cxr_model.manifest import content_id, read_csv, write_csv
from cxr_model.storage import ObjectStore

TRAIN, VAL, HOLDOUT = "Train", "Val", "Holdout"
# A held-out group needs this many images of each class to give an AUC worth reporting.
MIN_HELD_OUT_PER_CLASS = 10
DATASETS_PREFIX = "datasets"
SPLIT_COLUMNS = [
    "split",
    "label",
    "patient_id",
    "sha256",
    "raw_key",
    "dataset_key",
    "key",
    "source",
]


class SplitParams(BaseModel):
    """How to divide images between training and validation."""

    val_fraction: float = Field(
        default=0.2, gt=0.0, lt=0.5, description="Share of patients held out for validation."
    )
    seed: int = Field(default=42, description="Seed of the grouped, stratified shuffle.")
    held_out_sources: list[str] | None = Field(
        default=None,
        description="Sources kept out of training entirely and evaluated like Val (the Holdout "
        "split). None: chosen automatically when the shortcut audit flags the data and each "
        "class has at least two sources; []: none.",
    )


class HoldOut(BaseModel):
    """Which sources a dataset keeps out of training, and why."""

    sources: list[str] = Field(default_factory=list)
    reason: str
    automatic: bool = False


class SplitError(ValueError):
    """The images cannot be split as asked (too few patients of a class, ...)."""


@dataclass(frozen=True)
class Dataset:
    """A materialised split: its id, where it lives, and how many images each split holds."""

    dataset_id: str
    prefix: str
    split_key: str
    counts: dict[str, dict[str, int]]


def _sources_by_size(images: pd.DataFrame) -> pd.DataFrame:
    """Images per source (rows) and label (columns), largest sources first."""
    counts = images.groupby(["source", "label"]).size().unstack(fill_value=0)
    return counts.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]


def _check_requested(counts: pd.DataFrame, requested: list[str]) -> HoldOut:
    unknown = sorted(set(requested) - set(counts.index))
    if unknown:
        raise SplitError(
            f"held-out source(s) {', '.join(unknown)} not in the data; sources: "
            f"{', '.join(map(str, counts.index))}"
        )
    held, kept = counts.loc[sorted(set(requested))].sum(), counts.drop(index=requested).sum()
    for label in counts.columns:
        if held[label] == 0:
            raise SplitError(
                f"held-out sources {', '.join(sorted(set(requested)))} have no {label} images: "
                "an AUC needs both classes; hold out a source with them too"
            )
        if kept[label] == 0:
            raise SplitError(
                f"holding out {', '.join(requested)} leaves no {label} images to train"
            )
    return HoldOut(sources=sorted(set(requested)), reason="chosen in the parameters")


def choose_held_out_sources(
    images: pd.DataFrame, confounded: bool, requested: list[str] | None = None
) -> HoldOut:
    """The sources to keep out of training (``images`` has ``source`` and ``label`` columns).

    ``requested`` (not None) is checked and used as given. Otherwise sources are held out only
    when the data are ``confounded`` (the shortcut audit flagged them), and each class has at
    least two sources; a class's largest source always stays in training. Preferred: the largest
    other source that has both classes (at least :data:`MIN_HELD_OUT_PER_CLASS` each), a hospital
    whose within-hospital AUC measures the disease rather than the source. Else the largest other
    source of each class together, as long as each class has that many images held out.
    """
    counts = _sources_by_size(images.assign(source=images["source"].fillna("(unknown)")))
    if requested is not None:
        if not requested:
            return HoldOut(reason="none: no sources held out (set in the parameters)")
        return _check_requested(counts, requested)
    if not confounded:
        return HoldOut(reason="none: the shortcut audit found no shortcut, so every source trains")
    per_label = (counts > 0).sum()
    if len(counts.columns) < 2 or (per_label < 2).any():
        return HoldOut(
            reason="none: a class comes from a single source, so no source can be held out; only "
            "within-source evaluation can show the model learned the disease"
        )
    largest = {counts[label].idxmax() for label in counts.columns}
    others = counts.drop(index=list(largest))
    both = others[(others >= MIN_HELD_OUT_PER_CLASS).all(axis=1)]
    if len(both):
        source = str(both.index[0])
        return HoldOut(
            sources=[source],
            automatic=True,
            reason=f"automatic: {source} has both classes and is not the largest source of "
            "either, so it is held out whole; its AUC is within one hospital the model never saw",
        )
    chosen = sorted(
        {str(others[label].idxmax()) for label in counts.columns if others[label].max() > 0}
    )
    held = counts.loc[chosen].sum() if chosen else counts.iloc[0] * 0
    if (held < MIN_HELD_OUT_PER_CLASS).any():
        return HoldOut(
            reason=f"none: the sources that could be held out have fewer than "
            f"{MIN_HELD_OUT_PER_CLASS} images of a class"
        )
    return HoldOut(
        sources=chosen,
        automatic=True,
        reason=f"automatic: {', '.join(chosen)} (the largest source of each class after the one "
        "that trains) held out whole, so their AUC is on hospitals the model never saw",
    )


def patient_groups(images: pd.DataFrame) -> pd.Series:
    """Patient id per image; images without one form their own group (keyed by content)."""
    patient = images["patient_id"].astype("string")
    return patient.where(patient.notna() & (patient != ""), "image:" + images["sha256"])


def split_by_patient(images: pd.DataFrame, params: SplitParams) -> pd.Series:
    """Assign each image to Train or Val; one patient's images always land together."""
    groups = patient_groups(images)
    for label, count in groups.groupby(images["label"]).nunique().items():
        if count < 2:
            raise SplitError(
                f"label {label!r} has {count} patient(s); at least 2 are needed to have it in both "
                "Train and Val"
            )
    n_splits = max(2, round(1 / params.val_fraction))
    from sklearn.model_selection import StratifiedGroupKFold  # scoring imports this module

    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=params.seed)
    # sort first so the result does not depend on the order the sources listed the files
    ordered = images.assign(_group=groups).sort_values(["_group", "sha256"])
    _, val_index = next(folds.split(ordered, ordered["label"], ordered["_group"]))
    assignment = pd.Series(TRAIN, index=ordered.index)
    assignment.iloc[val_index] = VAL
    return assignment.loc[images.index]


def patient_folds(images: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    """Cross-validation fold (0..folds-1) per image: stratified by label, grouped by patient, so
    no patient's images are in two folds. Raises SplitError when a label has too few patients."""
    groups = patient_groups(images)
    for label, count in groups.groupby(images["label"]).nunique().items():
        if count < folds:
            raise SplitError(
                f"label {label!r} has {count} patient(s); {folds}-fold cross-validation needs at "
                f"least {folds}"
            )
    from sklearn.model_selection import StratifiedGroupKFold  # scoring imports this module

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    ordered = images.assign(_group=groups).sort_values(["_group", "sha256"])
    fold = pd.Series(-1, index=ordered.index)
    for number, (_, held_out) in enumerate(
        splitter.split(ordered, ordered["label"], ordered["_group"])
    ):
        fold.iloc[held_out] = number
    return fold.loc[images.index]


def _suffix(fmt: str | None) -> str:
    return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}.get(
        fmt or "", ""
    )


def assign_splits(images: pd.DataFrame, params: SplitParams, held_out: list[str]) -> pd.Series:
    """Holdout for the ``held_out`` sources' images; Train or Val by patient for the others."""
    held = images["source"].isin(held_out)
    split = pd.Series(HOLDOUT, index=images.index)
    split[~held] = split_by_patient(images[~held], params)
    return split


def materialise(
    store: ObjectStore, images: pd.DataFrame, params: SplitParams, held_out: list[str] = ()
) -> Dataset:
    """Split ``images`` (accepted rows of the image manifest) and copy them into the study layout;
    the ``held_out`` sources' images form the Holdout split."""
    unique = images.drop_duplicates("sha256")
    held_out = sorted(held_out)
    dataset_id = content_id(
        unique,
        ["sha256", "label", "patient_id"],
        f"val_fraction={params.val_fraction}",
        f"seed={params.seed}",
        *([f"held_out={','.join(held_out)}"] if held_out else []),
    )
    prefix = f"{DATASETS_PREFIX}/{dataset_id}"
    frame = unique.assign(split=assign_splits(unique, params, held_out))
    frame["dataset_key"] = [
        f"{prefix}/{split}/{label}/{sha}{_suffix(fmt)}"
        for split, label, sha, fmt in zip(
            frame["split"], frame["label"], frame["sha256"], frame["format"], strict=True
        )
    ]
    split_key = f"{prefix}/split.csv"
    if not store.exists(split_key):
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(store.copy, frame["raw_key"], frame["dataset_key"]))
        # written last: its presence means the dataset is complete
        write_csv(store, split_key, frame[SPLIT_COLUMNS])
    counts = frame.groupby(["split", "label"]).size()
    return Dataset(
        dataset_id=dataset_id,
        prefix=prefix,
        split_key=split_key,
        counts={
            s: {lbl: int(n) for lbl, n in counts[s].items()}
            for s in (TRAIN, VAL, HOLDOUT)
            if s in counts.index.get_level_values(0)
        },
    )


def load_split(store: ObjectStore, split_key: str) -> pd.DataFrame:
    """The split manifest of a materialised dataset."""
    return read_csv(store, split_key)
