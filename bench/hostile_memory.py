"""Peak memory of scoring and ingesting hostile folders, next to ordinary x-rays (issue 11, item 2).

Each case runs in a fresh subprocess, which reports its own peak RSS (``ru_maxrss``), so that no
case inherits another's high-water mark:

- ``ordinary``: ``--images`` real x-rays copied from ``../shared/data/cxr-real``;
- ``sparse``: ``--sparse`` files of 200 MB each, named ``.png``, that take no disk (``truncate``);
- ``sixteen-bit``: ``--sixteen`` 16-bit 7000 × 7000 PNGs, each a different smooth gradient (about
  100 KB on disk, 98 MB of pixels).

Scoring is :mod:`cxr_model.scoring` as the ``score-folder`` flow drives it (list → chunks of 256,
4 in flight on threads → read, hash, look up, decode, predict, store scores), by default with a
model that costs nothing (the mean pixel), so the numbers are what the files cost, not TensorFlow;
``--model compact_cnn`` (or any architecture) predicts with that Keras network instead (random
weights: memory, not accuracy), which is what `cxr score` holds. Ingest is
``manifest.ingest`` over the same folder laid out as ``covid/``. Both talk to a SeaweedFS server
started in a temporary folder (its memory is not counted). Prints one JSON document: machine,
command, peak RSS per case and each hostile case's ratio to the ordinary one.

    .venv/bin/python bench/hostile_memory.py [--images 100] [--sparse 24] [--sixteen 8]
        [--model none|compact_cnn|seed_cnn]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"
SPARSE_BYTES = 200 * 1024**2
SIDE = 7000
CHUNK_SIZE, IN_FLIGHT = 256, 4  # the score-folder flow's defaults


def ordinary(folder: Path, count: int) -> None:
    with (REAL / "manifest.csv").open(newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    for n, name in enumerate(files[:: max(1, len(files) // count)][:count]):  # every source
        shutil.copyfile(REAL / name, folder / f"{n:04d}-{Path(name).name}")


def sparse(folder: Path, count: int) -> None:
    for n in range(count):
        with (folder / f"sparse-{n}.png").open("wb") as handle:
            handle.truncate(SPARSE_BYTES)


def sixteen_bit(folder: Path, count: int) -> None:
    ramp = np.linspace(0, 4095, SIDE, dtype=np.float32)
    for n in range(count):
        pixels = (ramp[None, :] * ((n + 1) / count) + ramp[:, None] / 16).astype(np.uint16)
        Image.fromarray(pixels).save(folder / f"sixteen-{n}.png", compress_level=1)


CASES = {"ordinary": ordinary, "sparse": sparse, "sixteen-bit": sixteen_bit}


def _predictor(model: str):
    """The mean pixel (``none``), or a Keras network of that architecture as `cxr score` runs it."""
    if model == "none":
        return lambda pixels: pixels.mean(axis=(1, 2, 3)) / 255.0
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from cxr_model.model import build_model
    from cxr_model.scoring import keras_predictor

    return keras_predictor(build_model(model, 224))


def child(kind: str, folder: Path, endpoint: str, creds: dict, model: str) -> None:
    """Score or ingest ``folder`` in this (fresh) process and print its peak RSS."""
    from cxr_model import embedded_store, manifest, scoring
    from cxr_model.sources import FolderSource
    from cxr_model.storage import ObjectStore

    client = embedded_store.s3_client(endpoint, embedded_store.Credentials(**creds))
    store = ObjectStore(client, "bench")
    started = time.monotonic()
    if kind == "score":
        scores = scoring.ScoreStore(store, "bench", int(time.time() * 1000))
        predict = _predictor(model)

        def chunk(paths: list[str]) -> scoring.ScoreSummary:
            return scoring.score_chunk(
                paths, store, scores, predict, image_size=224, threshold=0.5, run="bench"
            ).summary

        chunks = scoring.chunked(scoring.list_inputs(str(folder), store), CHUNK_SIZE)
        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            summary = sum(pool.map(chunk, chunks), scoring.ScoreSummary())
        outcome = {"files": summary.files, "errors": summary.errors_by_reason}
    else:
        images = manifest.ingest(store, FolderSource(folder.parent).records())
        errors = [i.read_error or i.facts.get("error") for i in images]
        outcome = {"files": len(images), "errors": sum(e is not None for e in errors)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"peak_rss_mb": round(peak), "seconds": round(time.monotonic() - started, 1), **outcome}
        )
    )


def measure(kind: str, folder: Path, endpoint: str, creds: dict, model: str) -> dict:
    command = [
        *(sys.executable, __file__, "--child", kind, str(folder), endpoint, json.dumps(creds)),
        model,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--sparse", type=int, default=24)
    parser.add_argument("--sixteen", type=int, default=8)
    parser.add_argument("--model", default="none", help="none, or a Keras architecture")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, endpoint, creds, model = args.child
        child(kind, Path(folder), endpoint, json.loads(creds), model)
        return

    from cxr_model import embedded_store
    from cxr_model.storage import ObjectStore

    counts = {"ordinary": args.images, "sparse": args.sparse, "sixteen-bit": args.sixteen}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-hostile-") as temp:
        root = Path(temp)
        creds = embedded_store.load_or_create_credentials(root / "store")
        process, server = embedded_store.start_server(
            root / "store" / "data", creds, log_path=root / "store.log", detach=False
        )
        try:
            ObjectStore(
                embedded_store.s3_client(server.endpoint_url, creds), "bench"
            ).ensure_bucket()
            for name, make in CASES.items():
                folder = root / name / "covid"
                folder.mkdir(parents=True)
                make(folder, counts[name])
                for kind in ("score", "ingest"):
                    results[f"{kind} {name}"] = measure(
                        kind, folder, server.endpoint_url, dataclasses.asdict(creds), args.model
                    )
                    print(name, kind, results[f"{kind} {name}"], file=sys.stderr)
        finally:
            process.terminate()
            process.wait(timeout=20)
    ratios = {
        f"{kind} {name} / {kind} ordinary": round(
            results[f"{kind} {name}"]["peak_rss_mb"] / results[f"{kind} ordinary"]["peak_rss_mb"], 2
        )
        for kind in ("score", "ingest")
        for name in ("sparse", "sixteen-bit")
    }
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "model": args.model,
                "counts": counts,
                "results": results,
                "ratio_to_ordinary": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
