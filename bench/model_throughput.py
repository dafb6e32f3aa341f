"""Training and prediction images/s of our architectures on in-memory tensors, any Keras backend.

Imports no TensorFlow (only keras and cxr_model.model), so it also runs where Keras runs on JAX,
e.g. a GPU machine without TensorFlow:

    KERAS_BACKEND=jax python bench/model_throughput.py --image-size 224 --batch-size 32
    KERAS_BACKEND=jax python bench/model_throughput.py --architecture resnet50 --policy mixed_float16
    .venv/bin/python bench/model_throughput.py --image-size 224 --steps 10      # TensorFlow, CPU

Weights are random (weights=None): throughput does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cxr_model.model import build_model, compile_for_training, with_augmentation  # noqa: E402


def devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices()]
    return [backend]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--architecture", default="seed_cnn")
    parser.add_argument("--policy", default="float32", help="float32 or mixed_float16")
    args = parser.parse_args()
    keras.mixed_precision.set_global_policy(args.policy)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8).astype(
        "float32"
    )
    y = rng.integers(0, 2, n).astype("float32")
    trainer = compile_for_training(
        with_augmentation(build_model(args.architecture, args.image_size), seed=0), 1e-3
    )
    trainer.fit(
        x[: args.batch_size * 2],
        y[: args.batch_size * 2],
        batch_size=args.batch_size,
        epochs=1,
        verbose=0,
    )
    started = time.perf_counter()
    trainer.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    classifier = trainer.layers[-1]
    classifier.predict(x[: args.batch_size], verbose=0)
    started = time.perf_counter()
    classifier.predict(x, batch_size=args.batch_size, verbose=0)
    predict_seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "devices": devices(),
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "architecture": args.architecture,
                "policy": args.policy,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "timed_images": n,
                "train_images_per_s": round(n / seconds, 1),
                "predict_images_per_s": round(n / predict_seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
