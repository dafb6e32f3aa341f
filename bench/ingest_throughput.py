"""Ingest + inspect throughput on the shared real x-rays, against the machine's decode ceiling.

Starts a SeaweedFS server in a temporary folder (as the tests do), then:

1. ceiling: a single-thread full Pillow decode of every file, times the number of cores;
2. first run: ingest of all files through ``manifest.ingest``: read, hash, full decode (inspect)
   and store content-addressed, then ``manifest.describe_images``;
3. second run of the unchanged source: what the ingest index lets it skip;
4. peak RSS after each, to see whether memory grows with the number of images.

    .venv/bin/python bench/ingest_throughput.py [--images N]   # N: the first N files (default all)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from cxr_model import embedded_store, manifest
from cxr_model.sources import ManifestSource
from cxr_model.storage import ObjectStore

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_ceiling(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    return len(files) / (time.perf_counter() - started) * (os.cpu_count() or 1)


def timed_ingest(store: ObjectStore, source: ManifestSource) -> tuple[float, int, int]:
    started = time.perf_counter()
    frame = manifest.to_frame(manifest.ingest(store, source.records()))
    manifest.describe_images(frame)
    return time.perf_counter() - started, len(frame), int(frame["stored_now"].sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=None, help="only the first N files")
    args = parser.parse_args()
    source = ManifestSource(REAL / "manifest.csv")
    if args.images:
        rows = pd.read_csv(REAL / "manifest.csv", dtype=str).head(args.images)
        rows["file"] = [str(REAL / f) for f in rows["file"]]
        subset = Path(tempfile.mkdtemp()) / "manifest.csv"
        os.environ["CXR_MANIFEST_ROOTS"] = json.dumps([str(REAL)])  # the rows name REAL's files
        rows.to_csv(subset, index=False)
        source = ManifestSource(subset)
    files = [source.csv_path.parent / r.original_path for r in source.records()]
    ceiling = decode_ceiling(files)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        creds = embedded_store.load_or_create_credentials(root)
        process, server = embedded_store.start_server(
            root / "data", creds, log_path=root / "log", detach=False
        )
        try:
            store = ObjectStore(embedded_store.s3_client(server.endpoint_url, creds), "bench")
            store.ensure_bucket()
            first, count, stored = timed_ingest(store, source)
            rss_first = peak_rss_mb()
            second, _, stored_again = timed_ingest(store, source)
            rss_second = peak_rss_mb()
        finally:
            process.terminate()
            process.wait(timeout=20)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "images": count,
                "decode_ceiling_images_per_s": round(ceiling, 1),
                "first_run_s": round(first, 2),
                "first_run_images_per_s": round(count / first, 1),
                "first_vs_ceiling": round(count / first / ceiling, 3),
                "stored_first": stored,
                "second_run_s": round(second, 2),
                "second_vs_first": round(second / first, 3),
                "stored_second": stored_again,
                "peak_rss_mb_after_first": round(rss_first),
                "peak_rss_mb_after_second": round(rss_second),
            }
        )
    )


if __name__ == "__main__":
    main()
