"""Split accepted images into Train and Val by patient, and lay them out as the study did.

The split is deterministic (seeded), stratified by label and grouped by patient, so no patient
appears in both splits; an image without a patient id is its own group. The dataset is then
materialised in the store in the study's layout, ``datasets/<id>/Train/covid/<sha256>.png``, with a
``split.csv`` beside it. The dataset id hashes the content (images, labels, patients) and the
split parameters, so the same inputs always give the same dataset.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, Field
from sklearn.model_selection import StratifiedGroupKFold

from cxr_model.manifest import content_id, read_csv, write_csv
from cxr_model.storage import ObjectStore

TRAIN, VAL = "Train", "Val"
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


class SplitError(ValueError):
    """The images cannot be split as asked (too few patients of a class, ...)."""


@dataclass(frozen=True)
class Dataset:
    """A materialised split: its id, where it lives, and how many images each split holds."""

    dataset_id: str
    prefix: str
    split_key: str
    counts: dict[str, dict[str, int]]


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


def materialise(store: ObjectStore, images: pd.DataFrame, params: SplitParams) -> Dataset:
    """Split ``images`` (accepted rows of the image manifest) and copy them into the study layout."""
    unique = images.drop_duplicates("sha256")
    dataset_id = content_id(
        unique,
        ["sha256", "label", "patient_id"],
        f"val_fraction={params.val_fraction}",
        f"seed={params.seed}",
    )
    prefix = f"{DATASETS_PREFIX}/{dataset_id}"
    frame = unique.assign(split=split_by_patient(unique, params))
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
        counts={s: {lbl: int(n) for lbl, n in counts[s].items()} for s in (TRAIN, VAL)},
    )


def load_split(store: ObjectStore, split_key: str) -> pd.DataFrame:
    """The split manifest of a materialised dataset."""
    return read_csv(store, split_key)
