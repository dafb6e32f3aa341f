"""Training throughput of the study's CNN through cxr's input pipeline, on real x-rays.

Decodes N images from ../shared/data/cxr-real with cxr's one conversion, then trains the seed CNN
(with its augmentation) through ``cxr_model.data.training_batches`` and, for comparison, on the same
in-memory arrays with ``train_on_batch``. The first epoch (graph tracing) is excluded.

    .venv/bin/python bench/train_throughput.py --image-size 224 --images 256 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxr_model.data import SplitArrays, training_batches  # noqa: E402
from cxr_model.images import to_model_input  # noqa: E402
from cxr_model.model import build_model, compile_for_training, with_augmentation  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"


def load(n: int, size: int) -> SplitArrays:
    manifest = pd.read_csv(REAL / "manifest.csv").sample(n=n, random_state=0)
    started = time.perf_counter()
    images = np.stack(
        [to_model_input((REAL / f).read_bytes(), size, name=f) for f in manifest["file"]]
    )
    print(f"decode+convert: {n / (time.perf_counter() - started):.1f} images/s")
    labels = (manifest["label"] == "covid").to_numpy(np.float32)
    return SplitArrays(images, labels, list(manifest["file"]))


def fresh_trainer(size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return compile_for_training(with_augmentation(build_model("seed_cnn", size), seed=0), 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    arrays = load(args.images, args.image_size)

    trainer = fresh_trainer(args.image_size)
    batches = training_batches(arrays, args.batch_size, seed=0)
    trainer.fit(batches, epochs=1, verbose=0)  # warm-up: tracing
    started = time.perf_counter()
    trainer.fit(batches, epochs=args.epochs, verbose=0)
    pipeline = len(arrays) * args.epochs / (time.perf_counter() - started)

    trainer = fresh_trainer(args.image_size)
    x, y = arrays.images.astype(np.float32), arrays.labels
    steps = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size])
        for i in range(0, len(x), args.batch_size)
    ]
    for xb, yb in steps:
        trainer.train_on_batch(xb, yb)
    started = time.perf_counter()
    for _ in range(args.epochs):
        for xb, yb in steps:
            trainer.train_on_batch(xb, yb)
    in_memory = len(arrays) * args.epochs / (time.perf_counter() - started)

    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "image_size": args.image_size,
                "images": len(arrays),
                "epochs_timed": args.epochs,
                "pipeline_images_per_s": round(pipeline, 2),
                "train_on_batch_images_per_s": round(in_memory, 2),
                "pipeline_vs_in_memory": round(pipeline / in_memory, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
