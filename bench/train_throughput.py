"""Training throughput of cxr's architectures as ``train_model`` runs them, on real x-rays.

Decodes N real x-rays from ../shared/data/cxr-real with cxr's one conversion (the first N by file
name, 80% to train, 20% to validate), then trains each architecture with
``cxr_model.train.train_model``: cxr's tf.data input, augmentation in the model, balanced class
weights, validation every epoch, on every GPU in mixed precision or on the CPU. The first epoch
(graph tracing) is not timed; the median of the others is reported.

    .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_throughput.py --architectures seed_cnn,densenet121 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxr_model.data import POSITIVE_LABEL, SplitArrays  # noqa: E402
from cxr_model.images import to_model_input  # noqa: E402
from cxr_model.train import TrainParams, train_model  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"
VAL_SHARE = 0.2


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each training epoch, its validation included."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def load(count: int, size: int) -> tuple[SplitArrays, SplitArrays]:
    """The first ``count`` real x-rays by file name as Train and Val arrays (every fifth to Val)."""
    rows = pd.read_csv(REAL / "manifest.csv").sort_values("file").head(count)
    images = np.stack([to_model_input((REAL / f).read_bytes(), size, name=f) for f in rows["file"]])
    labels = (rows["label"] == POSITIVE_LABEL).to_numpy(np.float32)
    keys = list(rows["file"])
    val = np.arange(len(rows)) % round(1 / VAL_SHARE) == 0

    def part(mask: np.ndarray) -> SplitArrays:
        return SplitArrays(images[mask], labels[mask], list(np.asarray(keys)[mask]))

    return part(~val), part(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default="seed_cnn,compact_cnn")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3, help="the first is not timed")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    train, val = load(args.images, args.image_size)

    rows = []
    for architecture in args.architectures.split(","):
        params = TrainParams(
            architecture=architecture,
            image_size=args.image_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
        )
        timer = EpochTimer()
        with tempfile.TemporaryDirectory() as work:
            result = train_model(train, val, params, Path(work), callbacks=[timer])
            model_bytes = result.model_path.stat().st_size
        timed = timer.seconds[1:] or timer.seconds
        rows.append(
            (
                architecture,
                len(train) / statistics.median(timed),
                result.val_accuracy,
                model_bytes / 1e6,
                ", ".join(result.devices),
                "mixed float16" if result.mixed_precision else "float32",
            )
        )

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
        f"keras {keras.__version__}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{len(train)} train / {len(val)} val real x-rays, {args.image_size}px, "
        f"batch {args.batch_size}, {args.epochs} epochs (median of epochs 2..{args.epochs})"
    )
    print(
        "| architecture | train images/s (with validation) | val accuracy | model MB | "
        "devices | precision |"
    )
    print("|---|---|---|---|---|---|")
    for name, rate, accuracy, megabytes, devices, precision in rows:
        print(
            f"| {name} | {rate:.2f} | {accuracy:.3f} | {megabytes:.1f} | {devices} | {precision} |"
        )


if __name__ == "__main__":
    main()
