"""What the out-of-distribution check flags, and what it costs (issue 12).

A network of the default architecture is trained on the real x-rays with actualmed held out and
lateral views left out (patients split 80/20 into Train and Val), the OOD detector is fitted on
Train's penultimate features and calibrated on Val (5% flagged by construction), and then:

- the share flagged of Val, of the held-out actualmed images, of every real x-ray, of the lateral
  views, of 40 random-noise images (grey, and colour JPEG) and of smooth gradients;
- the cost: the same images predicted by `keras_predictor(model)` and by
  `keras_predictor(model, detector)` (features in the same pass plus the distance), side by side,
  best of ``--repeats``, as the ratio of the two times.

    .venv/bin/python bench/ood_check.py [--size 128] [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from cxr_model.images import Preprocessing, to_model_input  # noqa: E402
from cxr_model.model import build_model  # noqa: E402
from cxr_model.ood import OodDetector, feature_extractor, thumbnails  # noqa: E402
from cxr_model.scoring import keras_predictor  # noqa: E402
from cxr_model.train import TrainParams  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"
PRE = Preprocessing(resize="pad", equalize=True)


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def synthetic(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    grey = [_encoded(rng.integers(0, 255, (300, 360), dtype=np.uint8), "PNG") for _ in range(20)]
    colour = [
        _encoded(rng.integers(0, 255, (300, 360, 3), dtype=np.uint8), "JPEG") for _ in range(20)
    ]
    ramp = np.tile(np.linspace(0, 255, 360).astype(np.uint8), (300, 1))
    gradients = [_encoded(np.roll(ramp, n * 30, axis=1), "PNG") for n in range(10)]
    return {
        name: np.stack([to_model_input(d, size, preprocessing=PRE) for d in data])
        for name, data in [("noise", grey + colour), ("gradients", gradients)]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    frame = pd.read_csv(REAL / "manifest.csv", dtype=str)
    lateral = frame["view"].fillna("").str.upper().eq("L")
    held = frame["source"].eq("actualmed")
    pool = frame[~lateral & ~held]
    val_patients = pool["patient_id"].drop_duplicates().sample(frac=0.2, random_state=0)
    in_val = pool["patient_id"].isin(val_patients)

    def pixels(rows: pd.DataFrame) -> np.ndarray:
        return np.stack(
            [
                to_model_input((REAL / f).read_bytes(), args.size, preprocessing=PRE)
                for f in rows["file"]
            ]
        )

    every = pixels(frame)
    position = {f: n for n, f in enumerate(frame["file"])}
    take = lambda rows: every[[position[f] for f in rows["file"]]]  # noqa: E731
    x_train, y_train = take(pool[~in_val]), pool[~in_val]["label"].eq("covid").to_numpy("float32")
    architecture = TrainParams().architecture
    model = build_model(architecture, args.size)
    model.compile("adam", "binary_crossentropy")
    started = time.perf_counter()
    model.fit(x_train.astype("float32"), y_train, epochs=args.epochs, batch_size=32, verbose=0)
    fit_s = time.perf_counter() - started

    features = feature_extractor(model)
    feats = lambda x: features.predict(x.astype("float32"), verbose=0)  # noqa: E731
    views = lambda x: (feats(x), thumbnails(x))  # noqa: E731
    detector = OodDetector.fit(views(x_train), views(take(pool[in_val])))
    groups = {
        "Val": take(pool[in_val]),
        "held-out actualmed": take(frame[held & ~lateral]),
        "all real x-rays": every,
        "lateral views": take(frame[lateral]),
        **synthetic(args.size),
    }
    flagged = {
        name: {
            "images": len(x),
            "flagged": round(float(np.mean(detector.scores(feats(x), x) > 1)), 3),
        }
        for name, x in groups.items()
    }

    plain, checked = keras_predictor(model), keras_predictor(model, detector)
    batch = every[:256].astype("float32")
    plain(batch), checked(batch)  # warm up both
    times = {"without OOD check": [], "with OOD check": []}
    for _ in range(args.repeats):
        for name, predict in (("without OOD check", plain), ("with OOD check", checked)):
            started = time.perf_counter()
            predict(batch)
            times[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "architecture": architecture,
                "image_size": args.size,
                "epochs": args.epochs,
                "train_images": len(x_train),
                "fit_seconds": round(fit_s, 1),
                "flagged": flagged,
                "predict_256_images_s": {k: round(v, 3) for k, v in best.items()},
                "ood_cost_ratio": round(best["with OOD check"] / best["without OOD check"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
