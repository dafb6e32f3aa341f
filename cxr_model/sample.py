"""SYNTHETIC chest-x-ray-like sample data for the offline demo and the tests.

Nothing here is a real radiograph, and nothing a model learns from it means anything
medically. The images are drawn with numpy so that the whole pipeline (quality manifest,
patient-wise split, training, registration, batch scoring) can run end to end without
downloading anything:

- a dark background, a bright torso silhouette with neck and shoulders, a bright spine and
  mediastinum, a heart shadow, two darker lung fields ending at domed hemidiaphragms,
  clavicles, curved rib-like periodic bands, soft "vessel" texture and noise;
- every patient gets their own body size, position, lung shape, rib spacing and exposure, and
  an uneven soft-tissue thickness of their own (outside the lungs), so no two patients'
  images are perceptual near-duplicates; every image of that patient gets a little jitter on
  top (position, exposure, noise);
- the ``covid`` class adds diffuse patchy opacities: soft, blurred, textured patches in the
  lower and peripheral lung fields, mostly on both sides, where the dark (aerated) lung is
  filled in towards soft-tissue brightness (ground glass to consolidation). ``normal`` lungs
  stay clear.

There is deliberately no trivial tell: both classes have the same size, format and mode,
and every image is rescaled to a target mean brightness that ignores the class (covid
patient k and normal patient k even share it, plus per-image jitter), so "brighter overall"
does not give the class away; a model has to look at the lungs. The signal is clear to the
eye at 64-256 px (a logistic regression on 32 px thumbnails separates the default sample
almost perfectly), but the study's CNN trained from scratch needs on the order of 50-150
optimiser steps to pick it up, so use small batches and/or more patients or epochs.

The anatomy is drawn on a grid of at most 128 px and upscaled bicubically, noise is added at
full resolution (its time: BENCHMARKS.md, sample generation).

Layout written by :func:`generate_sample` into ``out_dir``::

    README.txt                  says the data is SYNTHETIC, and how it was made
    train/covid/<pid>_<n>.png   labelled by folder (the study's flat self-sorted layout)
    train/normal/<pid>_<n>.png
    train/manifest.csv          file (relative to train/), label, patient_id
    inbox/scan-<nnn>.png        new unlabelled x-rays to score, both classes mixed
    inbox_labels.csv            the hidden truth for inbox/ (file, label, patient_id), for
                                checking a demo; scoring must not read it

Patient ids look like ``sp-c-007`` (covid) and ``sp-n-012`` (normal); inbox images come from
new patients (numbered after the training ones). With ``include_bad_files`` the sample also
holds files a real drop would: ``train/covid/sp-c-000_<k>.png`` is a truncated PNG,
``train/normal/sp-n-000_<k>.png`` is empty (0 bytes), ``train/normal/notes.txt`` is text, and
one inbox PNG is truncated. They are in ``train/manifest.csv`` (with a label and a patient id),
and all four are in :attr:`SampleSummary.bad_files`.

Deterministic: the same spec (seed included) gives byte-identical files. Each image has its own
``numpy.random.Generator`` seeded from ``(seed, class, patient, image)``, so changing counts
does not change the images that stay. No timestamps are written. (Identical bytes across
machines additionally assume the same numpy/zlib builds.)
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

__all__ = ["SAMPLE_TRAINING", "SampleSpec", "SampleSummary", "generate_sample"]

CLASSES: tuple[str, ...] = ("covid", "normal")
_CLASS_CODE = {"covid": "c", "normal": "n"}
_README = "README.txt"
_README_MARKER = "cxr SYNTHETIC sample"
_INBOX_TRUTH = "inbox_labels.csv"
_GRID = 128  # the anatomy is drawn at most this many px wide, then upscaled
HABITUS_CELLS = 6
HABITUS_AMPLITUDE = 0.15
HABITUS_BACKGROUND = 0.02

# How to train on the default sample: overrides of cxr_model.train.TrainParams (a plain mapping,
# so this module needs no TensorFlow), used by the demo and by the stack's nightly retraining.
# The study's settings (224 px, batch 32, learning rate 1e-3, 6 epochs) take 24 optimiser steps
# here and collapse (train accuracy about 0.5), and 224 px trains at a few images/s on 2 CPU
# cores. Measured on the default sample: these reach validation AUC 1.0 and accuracy 0.88-1.0
# over the last epochs, in about 30 s.
SAMPLE_TRAINING = MappingProxyType(
    {"image_size": 64, "batch_size": 16, "learning_rate": 3e-4, "epochs": 15}
)


@dataclass(frozen=True)
class SampleSpec:
    """What to generate. Images are ``image_size`` square greyscale PNGs."""

    patients_per_class: int = 40
    images_per_patient: int = 2
    image_size: int = 256
    inbox_images: int = 24
    seed: int = 0
    include_bad_files: bool = True

    def __post_init__(self) -> None:
        if self.patients_per_class < 1:
            raise ValueError("patients_per_class must be >= 1")
        if self.images_per_patient < 1:
            raise ValueError("images_per_patient must be >= 1")
        if not 32 <= self.image_size <= 4096:
            raise ValueError("image_size must be between 32 and 4096")
        if self.inbox_images < 0:
            raise ValueError("inbox_images must be >= 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


@dataclass(frozen=True)
class SampleSummary:
    """What was written. ``images``/``patients`` count the good *training* images and their
    patients (bad files and the inbox not included); ``bad_files`` are relative to ``root``."""

    root: Path
    train_dir: Path
    inbox_dir: Path
    images: int
    patients: int
    bad_files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _Patient:
    """Per-patient anatomy. x runs -1..1 (image left..right), v runs 0..1 (top..bottom)."""

    cx: float  # body midline
    body_w: float  # half-width of the rib cage at its widest
    neck_w: float
    shoulder_v: float  # where the shoulders reach full width
    lung_dx: float  # lung centre distance from the midline
    lung_top: float  # apex height
    lung_w: float  # lung half-width
    dome_v: float  # top of the right hemidiaphragm (image left)
    heart_w: float
    rib_freq: float  # rib bands per unit height
    rib_curve: float
    tissue: float  # soft-tissue density
    exposure: float  # target mean brightness, 0..255
    contrast: float
    habitus_seed: int  # this patient's own uneven soft-tissue thickness (a smooth field)


def _patient(seed: int, cls: str, index: int) -> _Patient:
    """Patient ``index`` of class ``cls``. The exposure comes from a stream that ignores the
    class, so covid patient k and normal patient k share it: no class is brighter on average."""
    rng = np.random.default_rng([seed, CLASSES.index(cls), index, 1_000_000])
    exposure = np.random.default_rng([seed, index, 3_000_000]).uniform(88.0, 112.0)
    u = rng.uniform
    return _Patient(
        cx=u(-0.05, 0.05),
        body_w=u(0.70, 0.82),
        neck_w=u(0.15, 0.2),
        shoulder_v=u(0.1, 0.16),
        lung_dx=u(0.33, 0.39),
        lung_top=u(0.12, 0.18),
        lung_w=u(0.22, 0.27),
        dome_v=u(0.70, 0.78),
        heart_w=u(0.27, 0.34),
        rib_freq=u(8.5, 10.5),
        rib_curve=u(0.9, 1.4),
        tissue=u(0.5, 0.6),
        exposure=float(exposure),
        contrast=u(0.85, 1.15),
        habitus_seed=int(rng.integers(2**31)),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about -1..1: a ``cells``² random grid, bicubically upscaled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / np.float32(1.5)


def _opacities(
    rng: np.random.Generator, x: np.ndarray, vv: np.ndarray, p: _Patient, size: int
) -> np.ndarray:
    """Diffuse patchy opacities in the lower/peripheral lung fields: the fraction (0..0.9) of
    the lung's air that is replaced by something as dense as soft tissue."""
    field = np.zeros_like(x)
    n = int(rng.integers(6, 11))
    first = float(rng.choice([-1.0, 1.0]))
    for i in range(n):
        # Mostly bilateral: alternate sides, now and then two on the same side.
        side = first * (-1.0) ** i if rng.random() < 0.8 else first
        # Peripheral (outer half of the lung) and lower (middle to base).
        bu = side * (p.lung_dx + p.lung_w * rng.uniform(0.0, 0.8))
        bv = rng.uniform(p.lung_top + 0.3 * (p.dome_v - p.lung_top), p.dome_v - 0.02)
        sigma = rng.uniform(0.07, 0.12)
        amp = rng.uniform(0.55, 1.0)
        field += amp * np.exp(-((x - bu) ** 2 + (vv - bv) ** 2) / (2.0 * sigma**2))
    patchy = np.clip(0.6 + 0.5 * _smooth_noise(rng, size, 12), 0.2, 1.0)
    return 0.95 * (1.0 - np.exp(-2.5 * field * patchy))


def _density(rng: np.random.Generator, p: _Patient, size: int, covid: bool) -> np.ndarray:
    """The noiseless image (roughly 0..1, bright = dense) on a ``size`` square grid."""
    # Per-image jitter of position and scale (the same patient, positioned a bit differently).
    du, dv = rng.normal(0.0, 0.02, 2)
    zoom = 1.0 + rng.normal(0.0, 0.02)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    u_axis = ((coords * 2.0 - 1.0) - du) / zoom
    v_axis = (coords - dv) / zoom
    uu, vv = np.meshgrid(u_axis, v_axis)
    soft = max(3.0 / size, 0.01)

    x = uu - p.cx
    ax = np.abs(x)
    # Torso: neck widening into shoulders, the rib cage bulging a little, arms at the sides.
    t = np.clip((vv - 0.0) / p.shoulder_v, 0.0, 1.0)
    width = p.neck_w + (p.body_w + 0.06 - p.neck_w) * (t * t * (3.0 - 2.0 * t))
    width = width - 0.05 * np.clip(vv - 0.5, 0.0, None) + 0.02 * np.sin(np.pi * vv)
    body = _sigmoid((width - ax) / soft)
    arms = _sigmoid((ax - width - 0.03) / soft) * _sigmoid((width + 0.17 - ax) / (2 * soft))
    arms *= _sigmoid((0.85 - vv) / 0.08) * _sigmoid((vv - p.shoulder_v) / 0.03)

    # Lungs: rounded apex, full width below, cut off by domed hemidiaphragms that slope down
    # to the lateral costophrenic angles.
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        a = side * x - p.lung_dx  # >0 lateral, <0 medial, 0 at the lung's middle
        grow = np.sqrt(np.clip((vv - p.lung_top) / 0.3, 0.0, 1.0))
        half = p.lung_w * (0.15 + 0.85 * grow)
        centre = -0.04 * (1.0 - grow)  # apex sits slightly medial
        dome = p.dome_v + (0.025 if side > 0 else 0.0) + 0.9 * np.clip(a + 0.06, 0.0, None) ** 2
        dome = dome + 0.4 * np.clip(-a - 0.06, 0.0, None) ** 2
        lung = _sigmoid((half - np.abs(a - centre)) / (2 * soft))
        lung *= _sigmoid((dome - vv) / soft) * _sigmoid((vv - p.lung_top) / soft)
        lungs = np.maximum(lungs, lung)
    # Mediastinum and heart: a bright central column, the heart bulging to the image right.
    medi = _sigmoid((0.11 + 0.03 * vv - ax) / (2 * soft)) * _sigmoid((vv - 0.05) / soft)
    hx = (x - 0.09) / p.heart_w
    hv = (vv - (p.dome_v - 0.04)) / (p.heart_w * 0.7)
    heart = _sigmoid((1.0 - hx**2 - hv**2) / 0.3) * _sigmoid((p.dome_v + 0.04 - vv) / (3 * soft))
    spine = np.exp(-((x / 0.06) ** 4)) * _sigmoid((vv - 0.03) / soft)
    mediastinum = np.maximum(medi, heart)
    lungs_visible = lungs * (1.0 - mediastinum)

    # Ribs: curved bands, higher medially and sweeping down laterally, fading at the sides.
    phase = p.rib_freq * (vv - 0.06 + p.rib_curve * 0.35 * ax**2 - 0.12 * ax)
    ribs = (0.5 + 0.5 * np.cos(2.0 * np.pi * phase)) ** 3
    ribs *= _sigmoid((ax - 0.06) / 0.02) * body * _sigmoid((p.dome_v + 0.05 - vv) / 0.03)
    # Clavicles: two bright bars from the top of the sternum out to the shoulders.
    clav_v = p.shoulder_v + 0.06 - 0.1 * (ax - 0.1) + 0.25 * (ax - 0.35) ** 2
    clavicles = np.exp(-(((vv - clav_v) / 0.02) ** 2)) * _sigmoid((0.7 - ax) / 0.03)
    clavicles *= _sigmoid((ax - 0.05) / 0.02)

    # Vessel-like texture fanning out from the hila, fading to the periphery (both classes).
    hilum = np.exp(-(((ax - 0.17) / 0.2) ** 2) - ((vv - 0.45) / 0.25) ** 2)
    vessels = np.clip(_smooth_noise(rng, size, 24), -0.5, 1.5) * hilum
    # Lungs are less dark towards the bases (more tissue in front and behind).
    base = np.clip((vv - p.lung_top) / (p.dome_v - p.lung_top), 0.0, 1.0)

    # covid: patches of lung filled in (ground glass to consolidation); normal: clear lungs.
    aerated = lungs_visible
    if covid:
        aerated = lungs_visible * (1.0 - _opacities(rng, x, vv, p, size))

    # Every body is uneven in its own way: a smooth, patient-specific thickness field, the same
    # in all of the patient's images, so two patients never look like copies of each other.
    habitus = _smooth_noise(np.random.default_rng(p.habitus_seed), size, HABITUS_CELLS)
    # It is kept out of the lung fields, where the classes differ.
    habitus *= 1.0 - lungs
    density = 0.05 + p.tissue * body * (1.0 + HABITUS_AMPLITUDE * habitus) + 0.42 * arms
    density += HABITUS_BACKGROUND * habitus
    density += 0.15 * mediastinum * body + 0.08 * spine * body
    density -= (0.36 - 0.1 * base) * aerated
    density += p.contrast * (0.08 * ribs * (0.4 + 0.6 * lungs) + 0.09 * clavicles)
    density += 0.07 * vessels * lungs_visible
    return density.astype(np.float32)


def _render_xray(rng: np.random.Generator, p: _Patient, size: int, covid: bool) -> np.ndarray:
    """One synthetic frontal chest radiograph as a ``(size, size)`` uint8 array.

    The anatomy is smooth, so it is drawn on a grid of at most :data:`_GRID` px and upscaled
    bicubically; the noise is added at full resolution. That keeps generation fast.
    """
    n = min(size, _GRID)
    density = _density(rng, p, n, covid)
    if n != size:
        density = _upscale(density, size)
    # Film-like response plus quantum noise.
    img = 255.0 * np.clip(density, 0.0, 1.2) ** 1.15
    img += 4.0 * rng.standard_normal((size, size), dtype=np.float32)
    img += 3.0 * _smooth_noise(rng, size, 48)
    # Exposure: rescale to a target mean drawn the same way for both classes (no brightness tell).
    target = p.exposure + rng.normal(0.0, 3.0)
    img *= np.float32(target / max(float(img.mean(dtype=np.float64)), 1.0))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _upscale(arr: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _image_rng(seed: int, cls: str, patient: int, image: int) -> np.random.Generator:
    return np.random.default_rng([seed, CLASSES.index(cls), patient, image])


def _pid(cls: str, index: int) -> str:
    return f"sp-{_CLASS_CODE[cls]}-{index:03d}"


# --------------------------------------------------------------------------- writing


def _prepare(out_dir: Path) -> None:
    """Create ``out_dir``; clear an earlier sample there; refuse to touch anything else."""
    out_dir.mkdir(parents=True, exist_ok=True)
    readme = out_dir / _README
    ours = readme.is_file() and _README_MARKER in readme.read_text(errors="replace")
    if ours:
        for name in ("train", "inbox"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in (_INBOX_TRUTH, _README):
            (out_dir / name).unlink(missing_ok=True)
    elif any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} is not empty and holds no earlier sample ({_README}); refusing to write"
        )


def _readme(spec: SampleSpec, bad_files: list[str]) -> str:
    bad = "\n".join(f"  {b}" for b in bad_files) or "  (none: include_bad_files=False)"
    return f"""{_README_MARKER}

THESE ARE SYNTHETIC IMAGES, NOT REAL CHEST X-RAYS. They were drawn by cxr_model.sample
(numpy) to exercise the pipeline offline. A model trained on them says nothing about
COVID-19 or about any patient. Never use them, or anything trained on them, for diagnosis.

How they were made: a torso silhouette with spine, heart shadow, two darker lung fields,
ribs, clavicles, vessel-like texture and noise, varied per patient and per image. The
"covid" class adds diffuse patchy opacities in the lower/peripheral lung fields; "normal"
has none. Each image is rescaled to a mean brightness drawn the same way for both classes.

Spec: patients_per_class={spec.patients_per_class} images_per_patient={spec.images_per_patient}
image_size={spec.image_size} inbox_images={spec.inbox_images} seed={spec.seed}
include_bad_files={spec.include_bad_files}

Layout:
  train/covid/<patient>_<n>.png, train/normal/<patient>_<n>.png  labelled by folder
  train/manifest.csv   file (relative to train/), label, patient_id
  inbox/scan-<nnn>.png new unlabelled images to score (both classes mixed)
  {_INBOX_TRUTH}  the true labels of inbox/ images, for checking only

Deliberately bad files (a real data drop has them too):
{bad}
"""


def generate_sample(out_dir: Path, spec: SampleSpec = SampleSpec()) -> SampleSummary:
    """Write a SYNTHETIC sample (see the module docstring) into ``out_dir`` and describe it.

    ``out_dir`` may be missing, empty, or hold an earlier sample (which is replaced);
    anything else raises :class:`FileExistsError`.
    """
    out_dir = Path(out_dir)
    _prepare(out_dir)
    train_dir = out_dir / "train"
    inbox_dir = out_dir / "inbox"
    for cls in CLASSES:
        (train_dir / cls).mkdir(parents=True, exist_ok=True)
    inbox_dir.mkdir(parents=True, exist_ok=True)

    size = spec.image_size
    rows: list[tuple[str, str, str]] = []
    first_png: dict[str, bytes] = {}
    for cls in CLASSES:
        for pi in range(spec.patients_per_class):
            patient = _patient(spec.seed, cls, pi)
            pid = _pid(cls, pi)
            for n in range(1, spec.images_per_patient + 1):
                rng = _image_rng(spec.seed, cls, pi, n)
                data = _png_bytes(_render_xray(rng, patient, size, covid=cls == "covid"))
                first_png.setdefault(cls, data)
                rel = f"{cls}/{pid}_{n}.png"
                (train_dir / rel).write_bytes(data)
                rows.append((rel, cls, pid))

    bad_files: list[str] = []
    if spec.include_bad_files:
        k = spec.images_per_patient + 1
        truncated = f"covid/{_pid('covid', 0)}_{k}.png"
        empty = f"normal/{_pid('normal', 0)}_{k}.png"
        notes = "normal/notes.txt"
        (train_dir / truncated).write_bytes(first_png["covid"][: len(first_png["covid"]) // 2])
        (train_dir / empty).write_bytes(b"")
        (train_dir / notes).write_text(
            "Notes from the export, not an image.\n"
            "Two normal studies were re-sent; the first export of sp-n-000 came out empty.\n"
        )
        rows += [
            (truncated, "covid", _pid("covid", 0)),
            (empty, "normal", _pid("normal", 0)),
            (notes, "normal", _pid("normal", 1)),
        ]
        bad_files += [f"train/{truncated}", f"train/{empty}", f"train/{notes}"]

    rows.sort()
    with open(train_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "label", "patient_id"])
        writer.writerows(rows)

    # Inbox: new patients (numbered after the training ones), classes shuffled together.
    order_rng = np.random.default_rng([spec.seed, 2_000_000])
    labels = [CLASSES[i % 2] for i in range(spec.inbox_images)]
    labels = [labels[i] for i in order_rng.permutation(len(labels))]
    truth: list[tuple[str, str, str]] = []
    counters = dict.fromkeys(CLASSES, spec.patients_per_class)
    for i, cls in enumerate(labels, start=1):
        pi = counters[cls]
        counters[cls] += 1
        patient = _patient(spec.seed, cls, pi)
        rng = _image_rng(spec.seed, cls, pi, 1)
        name = f"scan-{i:03d}.png"
        data = _png_bytes(_render_xray(rng, patient, size, covid=cls == "covid"))
        (inbox_dir / name).write_bytes(data)
        truth.append((name, cls, _pid(cls, pi)))
    if spec.include_bad_files:
        name = f"scan-{spec.inbox_images + 1:03d}.png"
        pi = counters["normal"]
        patient = _patient(spec.seed, "normal", pi)
        data = _png_bytes(
            _render_xray(_image_rng(spec.seed, "normal", pi, 1), patient, size, False)
        )
        (inbox_dir / name).write_bytes(data[: len(data) * 2 // 3])
        truth.append((name, "normal", _pid("normal", pi)))
        bad_files.append(f"inbox/{name}")
    with open(out_dir / _INBOX_TRUTH, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "label", "patient_id"])
        writer.writerows(truth)

    (out_dir / _README).write_text(_readme(spec, bad_files))
    return SampleSummary(
        root=out_dir,
        train_dir=train_dir,
        inbox_dir=inbox_dir,
        images=len(CLASSES) * spec.patients_per_class * spec.images_per_patient,
        patients=len(CLASSES) * spec.patients_per_class,
        bad_files=bad_files,
    )
