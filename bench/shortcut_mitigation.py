"""Does a training variant learn the disease or the hospital? Leave-source-out AUC on real x-rays.

Each variant (an image preprocessing and training options) is trained with
``cxr_model.train.train_model`` once per fold, with the fold's sources kept out of training
entirely, and scored on them:

- ``actualmed``: the one hospital with both classes is held out, so its AUC is a within-hospital
  AUC on a hospital the model never saw (disease, not source);
- ``ieee8023+kaggle-pediatric``: one unseen covid source and one unseen normal source (what a
  model meets when it is used elsewhere).

The rest is split by patient (80/20) into Train and an internal Val, on which the threshold is
chosen (Youden) and the internal AUC measured. AUCs carry a 95% bootstrap CI. Results are
appended as JSON lines to ``--out`` so that a long run keeps what it measured.

    .venv/bin/python bench/shortcut_mitigation.py --size 128 --epochs 6 --out /tmp/mitigation.jsonl
    .venv/bin/python bench/shortcut_mitigation.py --variants baseline,crop-eq
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold  # noqa: E402

from cxr_model.data import POSITIVE_LABEL, SplitArrays  # noqa: E402
from cxr_model.evaluate import evaluate_predictions  # noqa: E402
from cxr_model.images import Preprocessing, to_model_input  # noqa: E402
from cxr_model.train import TrainParams, train_model  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"
FOLDS = {
    "actualmed": ["actualmed"],
    "ieee8023+kaggle-pediatric": ["ieee8023", "kaggle-pediatric"],
}
# name → (preprocessing, extra TrainParams fields)
VARIANTS: dict[str, tuple[Preprocessing, dict]] = {
    "baseline": (Preprocessing(), {}),
    "equalize": (Preprocessing(equalize=True), {}),
    "crop": (Preprocessing(resize="crop"), {}),
    "pad": (Preprocessing(resize="pad"), {}),
    "border": (Preprocessing(border=0.08), {}),
    "crop-eq": (Preprocessing(resize="crop", equalize=True), {}),
    "crop-eq-border": (Preprocessing(resize="crop", equalize=True, border=0.08), {}),
    "balance": (Preprocessing(), {"source_balance": True}),
    "adversary": (Preprocessing(), {"source_adversary": 0.3}),
    "pad-balance": (Preprocessing(resize="pad"), {"source_balance": True}),
    "pad-adversary": (Preprocessing(resize="pad"), {"source_adversary": 0.3}),
    "pad-balance-adversary": (
        Preprocessing(resize="pad"),
        {"source_balance": True, "source_adversary": 0.3},
    ),
    "pad-eq": (Preprocessing(resize="pad", equalize=True), {}),
    "pad-eq-balance": (Preprocessing(resize="pad", equalize=True), {"source_balance": True}),
}


def decode(rows: pd.DataFrame, size: int, preprocessing: Preprocessing) -> np.ndarray:
    return np.stack(
        [
            to_model_input((REAL / f).read_bytes(), size, name=f, preprocessing=preprocessing)
            for f in rows["file"]
        ]
    )


def arrays(images: np.ndarray, rows: pd.DataFrame, mask: np.ndarray) -> SplitArrays:
    labels = (rows["label"] == POSITIVE_LABEL).to_numpy(np.float32)
    return SplitArrays(images[mask], labels[mask], list(rows["file"][mask]))


def internal_val(rows: pd.DataFrame, training: np.ndarray, seed: int) -> np.ndarray:
    """One fifth of the training sources' patients, stratified by label, as the internal Val."""
    idx = np.flatnonzero(training)
    groups = rows["patient_id"].fillna(rows["file"]).to_numpy()[idx]
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    _, val = next(folds.split(idx, rows["label"].to_numpy()[idx], groups))
    mask = np.zeros(len(rows), bool)
    mask[idx[val]] = True
    return mask


def auc_row(evaluation) -> dict:
    return {
        "auc": evaluation.auc,
        "ci": [evaluation.auc_ci_low, evaluation.auc_ci_high],
        "sensitivity": evaluation.sensitivity,
        "specificity": evaluation.specificity,
        "n": [evaluation.n_covid, evaluation.n_normal],
    }


def run_fold(
    name: str, images: np.ndarray, rows: pd.DataFrame, held: list[str], params: TrainParams
) -> dict:
    held_mask = rows["source"].isin(held).to_numpy()
    val_mask = internal_val(rows, ~held_mask, params.seed)
    train_mask = ~held_mask & ~val_mask
    train, val, test = (arrays(images, rows, m) for m in (train_mask, val_mask, held_mask))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        sources = list(rows["source"][train_mask]) if params.needs_sources else None
        result = train_model(train, val, params, Path(work), sources=sources)
        model = keras.saving.load_model(result.model_path, compile=False)
    seconds = time.perf_counter() - started
    p_val = model.predict(val.images.astype("float32"), batch_size=64, verbose=0).reshape(-1)
    p_test = model.predict(test.images.astype("float32"), batch_size=64, verbose=0).reshape(-1)
    internal = evaluate_predictions(val.labels, p_val)
    held_out = evaluate_predictions(test.labels, p_test, threshold=internal.threshold)
    return {
        "variant": name,
        "fold": "+".join(held),
        "internal": auc_row(internal),
        "held_out": auc_row(held_out),
        "train_accuracy": result.train_accuracy,
        "train_images": len(train),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--folds", default=",".join(FOLDS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--architecture", default="seed_cnn")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("mitigation.jsonl"))
    args = parser.parse_args(argv)
    rows = pd.read_csv(REAL / "manifest.csv").sort_values("file").reset_index(drop=True)
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}; "
        f"{len(rows)} images, {args.architecture} {args.size}px {args.epochs} epochs",
        flush=True,
    )
    for name in args.variants.split(","):
        preprocessing, extra = VARIANTS[name]
        fields = TrainParams.model_fields
        if any(key not in fields for key in extra):
            print(f"{name}: skipped, TrainParams has no {sorted(extra)}", flush=True)
            continue
        images = decode(rows, args.size, preprocessing)
        params = TrainParams(
            architecture=args.architecture,
            image_size=args.size,
            epochs=args.epochs,
            seed=args.seed,
            **extra,
        )
        for fold in args.folds.split(","):
            result = run_fold(name, images, rows, FOLDS[fold], params)
            result |= {"preprocessing": preprocessing.name, "size": args.size}
            result |= {"epochs": args.epochs, "architecture": args.architecture, "seed": args.seed}
            with args.out.open("a") as out:
                out.write(json.dumps(result) + "\n")
            h, i = result["held_out"], result["internal"]
            print(
                f"{name:20s} {fold:28s} held-out AUC {h['auc']:.3f} "
                f"({h['ci'][0]:.3f}–{h['ci'][1]:.3f}) internal {i['auc']:.3f} "
                f"train acc {result['train_accuracy']:.3f} {result['seconds']:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
