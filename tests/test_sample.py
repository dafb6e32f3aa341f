"""cxr_model.sample: the SYNTHETIC offline dataset (layout, bad files, determinism, classes)."""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_model import sample
from cxr_model.images import hamming, inspect_image
from cxr_model.quality import QualitySettings
from cxr_model.sample import SampleSpec, SampleSummary, generate_sample

SMALL = SampleSpec(
    patients_per_class=3, images_per_patient=2, image_size=64, inbox_images=4, seed=7
)


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory) -> tuple[SampleSummary, list[int]]:
    """The default sample, and the grid size of every image's anatomy as it was drawn."""
    out = tmp_path_factory.mktemp("sample") / "demo"
    grids: list[int] = []
    draw = sample._density

    def counted(rng, patient, size, covid):
        grids.append(size)
        return draw(rng, patient, size, covid)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sample, "_density", counted)
        summary = generate_sample(out)
    return summary, grids


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def good_images(summary: SampleSummary) -> list[tuple[str, np.ndarray]]:
    """(label, pixels) for every decodable training image."""
    bad = set(summary.bad_files)
    out = []
    for row in read_csv(summary.train_dir / "manifest.csv"):
        if f"train/{row['file']}" in bad:
            continue
        with Image.open(summary.train_dir / row["file"]) as img:
            out.append((row["label"], np.asarray(img, dtype=np.float64)))
    return out


# --------------------------------------------------------------------- layout


def test_default_layout_and_manifest(default_sample):
    summary, _ = default_sample
    spec = SampleSpec()
    assert summary.train_dir == summary.root / "train"
    assert summary.inbox_dir == summary.root / "inbox"
    assert summary.images == 2 * spec.patients_per_class * spec.images_per_patient == 160
    assert summary.patients == 80

    on_disk = {
        str(p.relative_to(summary.train_dir))
        for p in summary.train_dir.rglob("*")
        if p.is_file() and p.name != "manifest.csv"
    }
    rows = read_csv(summary.train_dir / "manifest.csv")
    assert list(rows[0]) == ["file", "label", "patient_id"]
    assert {r["file"] for r in rows} == on_disk
    assert len(rows) == len(on_disk) == 160 + 3

    for row in rows:
        folder, name = row["file"].split("/")
        assert folder == row["label"] in ("covid", "normal")
        code = {"covid": "c", "normal": "n"}[row["label"]]
        assert re.fullmatch(rf"sp-{code}-\d{{3}}", row["patient_id"])
        if name.endswith(".png"):
            assert name.startswith(row["patient_id"] + "_")

    patients = {r["patient_id"] for r in rows}
    assert len(patients) == 80
    assert "sp-c-007" in patients and "sp-n-012" in patients


def test_bad_files_are_there_and_listed(default_sample):
    summary, _ = default_sample
    assert summary.bad_files == [
        "train/covid/sp-c-000_3.png",
        "train/normal/sp-n-000_3.png",
        "train/normal/notes.txt",
        "inbox/scan-025.png",
    ]
    expected_errors = ["truncated or corrupt: ", "empty file (0 bytes)", "not an image: "]
    expected_errors.append("truncated or corrupt: ")
    for rel, error in zip(summary.bad_files, expected_errors, strict=True):
        facts = inspect_image((summary.root / rel).read_bytes())
        assert not facts.decodable
        assert facts.error.startswith(error), (rel, facts.error)
    assert (summary.root / "train/normal/sp-n-000_3.png").stat().st_size == 0


def test_every_other_file_is_a_square_greyscale_png(default_sample):
    summary, _ = default_sample
    bad = {summary.root / rel for rel in summary.bad_files}
    pngs = [p for p in summary.root.rglob("*.png") if p not in bad]
    assert len(pngs) == 160 + 24
    for path in pngs:
        facts = inspect_image(path.read_bytes())
        assert (facts.format, facts.mode, facts.width, facts.height) == ("PNG", "L", 256, 256)


def test_inbox_mixes_both_classes_from_new_patients(default_sample):
    summary, _ = default_sample
    truth = read_csv(summary.root / "inbox_labels.csv")
    assert sorted(p.name for p in summary.inbox_dir.iterdir()) == [r["file"] for r in truth]
    labels = [r["label"] for r in truth[:24]]
    assert labels.count("covid") == labels.count("normal") == 12
    assert labels != sorted(labels)  # shuffled, not all of one class first
    train_patients = {r["patient_id"] for r in read_csv(summary.train_dir / "manifest.csv")}
    assert not train_patients & {r["patient_id"] for r in truth}
    # file names give nothing away
    assert all(re.fullmatch(r"scan-\d{3}\.png", r["file"]) for r in truth)


def test_readme_says_synthetic(default_sample):
    summary, _ = default_sample
    text = (summary.root / "README.txt").read_text()
    assert "SYNTHETIC" in text and "NOT REAL CHEST X-RAYS" in text
    for rel in summary.bad_files:
        assert rel in text


def test_default_spec_draws_each_image_once_on_the_small_grid(default_sample):
    """What keeps generation fast: each image's anatomy is drawn once, at most ``_GRID`` px wide,
    and upscaled. (``bench/sample_generation.py`` times it; BENCHMARKS.md has the numbers.)"""
    summary, grids = default_sample
    spec = SampleSpec()
    truncated_inbox_scan = 1
    assert len(grids) == summary.images + spec.inbox_images + truncated_inbox_scan
    assert set(grids) == {sample._GRID} and sample._GRID < spec.image_size


# --------------------------------------------------------------------- the two classes


def lower_lung_ratio(pixels: np.ndarray) -> float:
    """Mean of the lower lateral lung fields over the whole image's mean."""
    n = pixels.shape[0]
    rows = slice(int(0.45 * n), int(0.72 * n))
    left, right = slice(int(0.08 * n), int(0.3 * n)), slice(int(0.7 * n), int(0.92 * n))
    region = np.concatenate([pixels[rows, left].ravel(), pixels[rows, right].ravel()])
    return float(region.mean() / pixels.mean())


def test_covid_lungs_are_hazier_in_a_simple_statistic(default_sample):
    summary, _ = default_sample
    images = good_images(summary)
    covid = np.array([lower_lung_ratio(px) for label, px in images if label == "covid"])
    normal = np.array([lower_lung_ratio(px) for label, px in images if label == "normal"])
    assert len(covid) == len(normal) == 80
    # opacities fill in the dark lower lungs: the ratio is higher for covid
    assert np.median(covid) > np.median(normal) + 0.05
    # how often a covid image beats a normal one (the AUC of this one number)
    auc = (covid[:, None] > normal[None, :]).mean()
    assert auc > 0.9
    # ... but the classes overlap: some covid images look clearer than some normal ones
    assert covid.min() < normal.max()


def test_different_patients_are_never_near_duplicates(default_sample):
    """Each synthetic patient has their own build, so the split check's perceptual-hash warning
    (near-duplicates across splits) stays quiet on the demo data."""
    summary, _ = default_sample
    hashes = {
        path.name: inspect_image(path.read_bytes()).dhash
        for path in sorted(summary.train_dir.rglob("sp-*.png"))
    }
    hashes = {name: value for name, value in hashes.items() if value}
    patient = {name: name.split("_")[0] for name in hashes}
    across = [
        hamming(hashes[a], hashes[b])
        for a, b in itertools.combinations(hashes, 2)
        if patient[a] != patient[b]
    ]
    assert len(across) > 10_000
    assert min(across) > QualitySettings().near_duplicate_distance


def test_no_brightness_or_size_tell(default_sample):
    summary, _ = default_sample
    images = good_images(summary)
    means = {
        label: [px.mean() for lab, px in images if lab == label] for label in ("covid", "normal")
    }
    assert abs(np.mean(means["covid"]) - np.mean(means["normal"])) < 2.0
    # per image the brightness varies far more than between the classes
    assert np.std(means["covid"] + means["normal"]) > 4.0
    assert {px.shape for _, px in images} == {(256, 256)}


# --------------------------------------------------------------------- determinism and options


def test_same_spec_gives_identical_bytes(tmp_path):
    first = generate_sample(tmp_path / "a", SMALL)
    second = generate_sample(tmp_path / "b", SMALL)
    assert first.images == second.images == 12
    assert digests(first.root) == digests(second.root)
    other_seed = generate_sample(tmp_path / "c", SampleSpec(**{**SMALL.__dict__, "seed": 8}))
    a, c = digests(first.root), digests(other_seed.root)
    assert a.keys() == c.keys()
    assert a["train/covid/sp-c-001_1.png"] != c["train/covid/sp-c-001_1.png"]


def test_without_bad_files_everything_decodes(tmp_path):
    spec = SampleSpec(**{**SMALL.__dict__, "include_bad_files": False})
    summary = generate_sample(tmp_path / "clean", spec)
    assert summary.bad_files == []
    files = [p for p in summary.root.rglob("*.png")]
    assert len(files) == 12 + 4
    assert all(inspect_image(p.read_bytes()).decodable for p in files)
    assert not (summary.train_dir / "normal" / "notes.txt").exists()
    assert len(read_csv(summary.train_dir / "manifest.csv")) == 12


def test_regenerating_replaces_an_earlier_sample_but_nothing_else(tmp_path):
    out = tmp_path / "demo"
    generate_sample(out, SMALL)
    smaller = SampleSpec(**{**SMALL.__dict__, "patients_per_class": 1})
    summary = generate_sample(out, smaller)
    assert summary.images == 4
    assert len(list(summary.train_dir.rglob("*.png"))) == 4 + 2  # no stale images left

    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "thesis.docx").write_bytes(b"important")
    with pytest.raises(FileExistsError):
        generate_sample(foreign, SMALL)
    assert (foreign / "thesis.docx").read_bytes() == b"important"


def test_spec_is_validated():
    with pytest.raises(ValueError, match="patients_per_class"):
        SampleSpec(patients_per_class=0)
    with pytest.raises(ValueError, match="image_size"):
        SampleSpec(image_size=8)


@pytest.mark.slow
def test_the_sample_has_one_set_of_training_settings_that_the_demo_uses():
    from cxr_model.sample import SAMPLE_TRAINING
    from cxr_model.train import TrainParams
    from flows.demo import DemoParams

    settings = TrainParams(**SAMPLE_TRAINING)  # valid training settings, not the study's
    assert settings != TrainParams()
    assert (settings.image_size, settings.batch_size, settings.epochs) == (64, 16, 15)
    assert DemoParams().training == settings
    with pytest.raises(TypeError):
        SAMPLE_TRAINING["epochs"] = 1  # read-only: change it here, not in a caller
