"""Input-pipeline benchmark on real x-rays: cxr's cached tf.data pipeline against the study's.

Both sides use the same real images from ../shared/data/cxr-real (the first N by file name),
sorted into a temporary ``Train/{covid,normal}`` folder as the study had them.

(a) Images per second delivered *with augmentation*:

- study: ``ImageDataGenerator(rescale=1/255, shear_range=0.2, zoom_range=0.2,
  horizontal_flip=True).flow_from_directory(..., target_size=(224, 224), batch_size=32,
  class_mode="binary")``, which decodes and resizes every file in every epoch;
- cxr: the uint8 arrays decoded once (cxr's one conversion; the one-off decode rate is reported
  too) → ``cxr_model.data.training_batches`` (one channel, as x-rays are grey) → float cast, the
  seed augmentation and the repeat to three channels, as the training model runs them.

(b) Training images per second of the study's CNN (augmentation inside the model) fed by
``model.fit`` on cxr's tf.data pipeline, against the same training model fed the same uint8
batches, already in memory as tensors, with a ``train_on_batch`` loop. Neither validates.

Both parts warm up once per side (tracing, file cache), then alternate pass by pass, so other load
on a shared machine hits both alike; ratios are medians over the pairs. Each pass also records this
process's CPU time, which other load barely changes.

    .venv/bin/python bench/input_pipeline.py                      # defaults: ~3-5 min on 2 cores
    .venv/bin/python bench/input_pipeline.py --images 600 --train-images 256 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxr_model.data import POSITIVE_LABEL, SplitArrays, is_grey, training_batches  # noqa: E402
from cxr_model.images import to_model_input  # noqa: E402
from cxr_model.model import (  # noqa: E402
    build_model,
    compile_for_training,
    seed_augmentation,
    with_augmentation,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"
STUDY_AUGMENTATION = dict(rescale=1 / 255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
SEED = 0
LEARNING_RATE = 1e-3


def real_images(count: int) -> pd.DataFrame:
    """The first ``count`` rows of the real manifest by file name (file, label)."""
    manifest = pd.read_csv(REAL / "manifest.csv").sort_values("file")
    return manifest.head(count)[["file", "label"]].reset_index(drop=True)


def study_folder(rows: pd.DataFrame, root: Path) -> Path:
    """Copy the images into ``root/Train/<label>/`` as the study sorted them; return Train."""
    for number, row in rows.iterrows():
        target = root / "Train" / row["label"] / f"{number:05d}{Path(row['file']).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / row["file"], target)
    return root / "Train"


@dataclass(frozen=True)
class Epoch:
    """One timed pass: images, wall-clock seconds and this process's CPU seconds (all threads)."""

    images: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.images / self.wall


def timed(images: int, run: Callable[[], None]) -> Epoch:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return Epoch(images, time.perf_counter() - wall, time.process_time() - cpu)


def study_epoch(train_dir: Path, size: int, batch: int) -> Callable[[], None]:
    """One pass of the study's augmenting generator over the folder (decode, resize, augment)."""
    generator = tf.keras.preprocessing.image.ImageDataGenerator(**STUDY_AUGMENTATION)
    flow = generator.flow_from_directory(
        str(train_dir), target_size=(size, size), batch_size=batch, class_mode="binary", seed=SEED
    )

    def run() -> None:
        for _ in range(len(flow)):
            next(flow)

    return run


def decode(rows: pd.DataFrame, size: int) -> SplitArrays:
    """cxr's one conversion of every file to uint8 model input (what the caches hold)."""
    images = np.stack([to_model_input((REAL / f).read_bytes(), size, name=f) for f in rows["file"]])
    labels = (rows["label"] == POSITIVE_LABEL).to_numpy(np.float32)
    return SplitArrays(images, labels, list(rows["file"]))


def pipeline_epoch(arrays: SplitArrays, batch: int) -> Callable[[], None]:
    """One pass of cached arrays → tf.data → float cast, seed augmentation, three channels."""
    augment = seed_augmentation(SEED)
    grey = is_grey(arrays.images)

    @tf.function(autograph=False)  # plain tensor code: nothing to convert
    def augmented(images: tf.Tensor) -> tf.Tensor:
        out = augment(tf.cast(images, tf.float32), training=True)
        return tf.repeat(out, 3, axis=-1) if grey else out

    batches = training_batches(arrays, batch, SEED, grey)

    def run() -> None:
        for images, _ in batches:
            augmented(images)

    return run


def delivery(train_dir: Path, arrays: SplitArrays, batch: int, rounds: int) -> tuple[list, list]:
    """Alternating passes of the study's generator and of cxr's pipeline, after one of each."""
    size = arrays.images.shape[1]
    study, ours = study_epoch(train_dir, size, batch), pipeline_epoch(arrays, batch)
    study(), ours()  # warm-up: file cache, graph tracing (full and last batch)
    study_epochs, our_epochs = [], []
    for _ in range(rounds):
        study_epochs.append(timed(len(arrays), study))
        our_epochs.append(timed(len(arrays), ours))
    return study_epochs, our_epochs


def fresh_trainer(size: int, grey: bool) -> keras.Model:
    """The training model ``train_model`` builds: seed augmentation in front of the seed CNN."""
    keras.utils.set_random_seed(SEED)
    classifier = build_model("seed_cnn", size)
    return compile_for_training(with_augmentation(classifier, SEED, grey), LEARNING_RATE)


class AlternateEpochs(keras.callbacks.Callback):
    """Times each ``fit`` epoch, then runs and times one in-memory epoch right after it."""

    def __init__(self, images: int, in_memory_epoch: Callable[[], None]):
        super().__init__()
        self.images = images
        self.in_memory_epoch = in_memory_epoch
        self.fit_epochs: list[Epoch] = []
        self.in_memory_epochs: list[Epoch] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.fit_epochs.append(Epoch(self.images, wall, cpu))
        self.in_memory_epochs.append(timed(self.images, self.in_memory_epoch))


def training(arrays: SplitArrays, batch: int, rounds: int) -> tuple[list, list]:
    """Per-epoch timings: fit on the tf.data pipeline, and train_on_batch on in-memory tensors.

    One ``fit`` call runs all timed epochs, as training does (its per-call setup is not counted,
    its per-epoch work is: the iterator, the shuffle, metrics); each of its epochs is followed by
    one in-memory epoch, so both see the same load on the machine.
    """
    size, grey = arrays.images.shape[1], is_grey(arrays.images)
    through_fit, in_memory = fresh_trainer(size, grey), fresh_trainer(size, grey)
    batches = training_batches(arrays, batch, SEED, grey)
    images = arrays.images[..., :1] if grey else arrays.images  # what the pipeline feeds
    tensors = [
        (tf.constant(images[i : i + batch]), tf.constant(arrays.labels[i : i + batch]))
        for i in range(0, len(arrays), batch)
    ]

    def in_memory_epoch() -> None:
        for x, y in tensors:
            in_memory.train_on_batch(x, y)

    through_fit.fit(batches, epochs=1, verbose=0)  # warm-up: graph tracing
    in_memory_epoch()
    alternate = AlternateEpochs(len(arrays), in_memory_epoch)
    through_fit.fit(batches, epochs=rounds, callbacks=[alternate], verbose=0)
    return alternate.fit_epochs, alternate.in_memory_epochs


def comparison(
    names: tuple[str, str], ours: list[Epoch], theirs: list[Epoch], digits: int
) -> list[str]:
    """Table rows (``names``: theirs, ours): median rate, each pass's, CPU seconds per image.

    The ratios are medians over alternating pairs: of images/s (wall clock), and of CPU time
    per image, which other load on the machine barely changes.
    """

    def row(label: str, epochs: list[Epoch]) -> str:
        rates = ", ".join(f"{e.rate:.{digits}f}" for e in epochs)
        rate = statistics.median(e.rate for e in epochs)
        cpu = statistics.median(e.cpu / e.images for e in epochs)
        return f"| {label} | {rate:.{digits}f} | {rates} | {cpu:.3f} |"

    pairs = statistics.median(o.rate / t.rate for o, t in zip(ours, theirs, strict=True))
    cpu = statistics.median(t.cpu / o.cpu for o, t in zip(ours, theirs, strict=True))
    return [
        "| feed | images/s (median) | each pass | CPU s per image (median) |",
        "|---|---|---|---|",
        row(names[0], theirs),
        row(names[1], ours),
        f"| ratio, median of pairs | {pairs:.2f} | (images/s) | {cpu:.2f} (CPU time) |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images for part (a)")
    parser.add_argument("--train-images", type=int, default=96, help="images for part (b)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=3, help="alternating passes in part (a)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating epochs in part (b)")
    args = parser.parse_args()
    size, batch = args.image_size, args.batch_size

    rows = real_images(args.images)
    with tempfile.TemporaryDirectory() as work:
        train_dir = study_folder(rows, Path(work))
        started = time.perf_counter()
        arrays = decode(rows, size)
        decode_rate = len(arrays) / (time.perf_counter() - started)
        study, ours = delivery(train_dir, arrays, batch, args.passes)
    count = args.train_images
    train = SplitArrays(arrays.images[:count], arrays.labels[:count], arrays.keys[:count])
    fit_epochs, loop_epochs = training(train, batch, args.rounds)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), TensorFlow {tf.__version__}, keras "
        f"{keras.__version__}; GPUs: {len(tf.config.list_physical_devices('GPU'))}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    print(
        f"(a) delivery with augmentation: {len(rows)} real x-rays, {size}px, batch {batch}, "
        f"{args.passes} alternating passes; target ratio >= 10"
    )
    names = (
        "study: ImageDataGenerator.flow_from_directory",
        "cxr: cached → tf.data → augmentation",
    )
    print("\n".join(comparison(names, ours, study, 1)))
    print(f"cxr's one-off decode into the cache: {decode_rate:.1f} images/s")
    print()
    print(
        f"(b) training the seed CNN: {len(train)} images, {size}px, batch {batch}, "
        f"{args.rounds} alternating epochs; target ratio >= 0.90"
    )
    names = ("in-memory: train_on_batch on tensors", "cxr: model.fit on tf.data")
    print("\n".join(comparison(names, fit_epochs, loop_epochs, 2)))


if __name__ == "__main__":
    main()
