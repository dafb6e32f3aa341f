"""Splitting by patient: deterministic, stratified, and never one patient on both sides."""

from __future__ import annotations

import pandas as pd
import pytest

from cxr_model.split import (
    HOLDOUT,
    TRAIN,
    VAL,
    SplitError,
    SplitParams,
    assign_splits,
    choose_held_out_sources,
    materialise,
    patient_folds,
    split_by_patient,
)


def images_of(patients: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """One row per image: {patient: (label, number of images)}."""
    rows = [
        {"sha256": f"{patient}-{n:02d}", "label": label, "patient_id": patient}
        for patient, (label, count) in patients.items()
        for n in range(count)
    ]
    return pd.DataFrame(rows)


def test_no_patient_is_in_both_splits_on_the_real_manifest(real_data):
    manifest = pd.read_csv(real_data / "manifest.csv", dtype=str)
    images = manifest.rename(columns={"orig_sha256": "sha256"})[["sha256", "label", "patient_id"]]
    assignment = split_by_patient(images, SplitParams(val_fraction=0.2, seed=1))
    sides = images.assign(split=assignment).groupby("patient_id")["split"].nunique()
    assert (sides == 1).all()
    # stratified: both labels on both sides, and roughly the asked share in Val
    assert set(images[assignment == VAL]["label"]) == {"covid", "normal"}
    assert set(images[assignment == TRAIN]["label"]) == {"covid", "normal"}
    assert 0.12 < (assignment == VAL).mean() < 0.28


def test_split_is_deterministic_and_independent_of_row_order():
    images = images_of({f"p{i}": ("covid" if i % 2 else "normal", 1 + i % 3) for i in range(40)})
    first = split_by_patient(images, SplitParams(seed=7))
    shuffled = images.sample(frac=1.0, random_state=3)
    second = split_by_patient(shuffled, SplitParams(seed=7))
    assert first.equals(second.loc[first.index])
    assert not first.equals(split_by_patient(images, SplitParams(seed=8)))


def test_images_without_patient_id_are_their_own_group():
    images = images_of({f"p{i}": ("covid" if i < 10 else "normal", 1) for i in range(20)})
    images["patient_id"] = None
    assignment = split_by_patient(images, SplitParams(val_fraction=0.25, seed=0))
    assert (assignment == VAL).sum() == 5


def test_a_class_with_one_patient_cannot_be_split():
    images = images_of({"p0": ("covid", 5), "p1": ("normal", 2), "p2": ("normal", 2)})
    with pytest.raises(SplitError, match="'covid' has 1 patient"):
        split_by_patient(images, SplitParams())


def test_materialise_lays_out_the_study_folders(store):
    images = images_of({f"p{i}": ("covid" if i % 2 else "normal", 2) for i in range(10)})
    images["raw_key"] = "raw/" + images["sha256"]
    images["key"] = "folder:/x/" + images["sha256"]
    images["source"] = "folder:/x"
    images["format"] = "PNG"
    for key in images["raw_key"]:
        store.put_bytes(key, key.encode())
    dataset = materialise(store, images, SplitParams(seed=3))
    again = materialise(store, images.iloc[::-1], SplitParams(seed=3))
    assert dataset.dataset_id == again.dataset_id
    assert materialise(store, images, SplitParams(seed=4)).dataset_id != dataset.dataset_id
    keys = sorted(store.list_keys(dataset.prefix + "/"))
    assert f"{dataset.prefix}/split.csv" in keys
    image_keys = [k for k in keys if not k.endswith("split.csv")]
    assert len(image_keys) == 20
    assert all(
        k.split("/")[2] in (TRAIN, VAL) and k.split("/")[3] in ("covid", "normal")
        for k in image_keys
    )
    assert sum(sum(c.values()) for c in dataset.counts.values()) == 20
    one = next(k for k in image_keys if k.endswith("p3-01.png"))
    assert store.get_bytes(one) == b"raw/p3-01"


def test_cross_validation_folds_never_share_a_patient(real_data):
    manifest = pd.read_csv(real_data / "manifest.csv", dtype=str)
    images = manifest.rename(columns={"orig_sha256": "sha256"})[["sha256", "label", "patient_id"]]
    folds = patient_folds(images, 5, seed=3)
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    assert (images.assign(fold=folds).groupby("patient_id")["fold"].nunique() == 1).all()
    # stratified: every fold holds both labels, and the folds are of similar size
    assert (images.assign(fold=folds).groupby("fold")["label"].nunique() == 2).all()
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() < 0.1 * len(images)
    assert (
        patient_folds(images.sample(frac=1.0, random_state=1), 5, seed=3)
        .loc[images.index]
        .equals(folds)
    )


def test_cross_validation_needs_a_patient_per_fold_and_label():
    images = images_of(
        {"a": ("covid", 3), "b": ("covid", 1), "c": ("normal", 2), "d": ("normal", 1)}
    )
    with pytest.raises(SplitError, match="'covid' has 2 patient"):
        patient_folds(images, 3, seed=0)


def _real_sources(real_data) -> pd.DataFrame:
    manifest = pd.read_csv(real_data / "manifest.csv", dtype=str)
    return manifest.rename(columns={"orig_sha256": "sha256"})


def test_confounded_real_data_hold_out_the_hospital_with_both_classes(real_data):
    held = choose_held_out_sources(_real_sources(real_data), confounded=True)
    assert held.sources == ["actualmed"] and held.automatic
    assert "both classes" in held.reason


def test_unconfounded_data_hold_nothing_out(real_data):
    held = choose_held_out_sources(_real_sources(real_data), confounded=False)
    assert held.sources == [] and "no shortcut" in held.reason


def test_without_a_two_class_source_one_source_per_class_is_held_out(real_data):
    images = _real_sources(real_data)
    images = images[images["source"] != "actualmed"]
    held = choose_held_out_sources(images, confounded=True)
    assert held.sources == ["ieee8023", "kaggle-pediatric"]


def test_one_source_per_class_cannot_hold_any_out(real_data):
    images = _real_sources(real_data)
    images = images[images["source"].isin(["hannover", "nih-cxr8"])]
    held = choose_held_out_sources(images, confounded=True)
    assert held.sources == [] and "single source" in held.reason


def test_requested_sources_are_checked(real_data):
    images = _real_sources(real_data)
    assert choose_held_out_sources(images, False, ["actualmed"]).sources == ["actualmed"]
    assert choose_held_out_sources(images, True, []).sources == []
    with pytest.raises(SplitError, match="mayo not in the data"):
        choose_held_out_sources(images, True, ["mayo"])
    with pytest.raises(SplitError, match="have no normal images"):
        choose_held_out_sources(images, True, ["ieee8023"])
    with pytest.raises(SplitError, match="leaves no covid images"):
        choose_held_out_sources(images, True, ["hannover", "ieee8023", "actualmed"])


def test_held_out_sources_form_their_own_split_and_never_train(real_data):
    images = _real_sources(real_data)
    split = assign_splits(images, SplitParams(seed=3), ["actualmed"])
    assert set(split[images["source"] == "actualmed"]) == {HOLDOUT}
    assert HOLDOUT not in set(split[images["source"] != "actualmed"])
    assert {TRAIN, VAL} <= set(split)
