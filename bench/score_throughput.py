"""Scoring throughput of the study's CNN at 224 px, end to end, against its ceiling (issues #5, #14).

The model is registered as registration does it since issue 14: exported to ONNX
(:func:`cxr_model.inference.export_onnx`), its :class:`~cxr_model.inference.InferenceArtifact` on
the card and ``model.onnx`` attached, so scoring runs ONNX Runtime. Points, in one run on one
machine, so the numbers can be compared with each other:

1. ceiling: :meth:`OnnxModel.run <cxr_model.inference.OnnxModel.run>` on one in-memory float32
   batch of :data:`cxr_model.scoring.ONNX_BATCH`, repeated (warm-up excluded), measured first and
   last (the machine may be shared; the mean counts). For reference, once each: ONNX Runtime on
   batches of 32 (``ceiling_ort_32``) and TensorFlow's ``predict_on_batch`` on batches of 32 (the
   pre-issue-14 ceiling, ``ceiling_tf``);
2. naive: per file, read → :func:`cxr_model.images.to_model_input` → Keras ``model.predict(x[None])``;
   and the library path of step 3 with a model that costs nothing, for what everything but the
   model costs (``library_without_model``);
3. library: ``--medium`` generated images scored through :mod:`cxr_model.scoring` without
   Prefect, with :func:`cxr_model.scoring.onnx_predictor`, as the flow does it (list → chunks of
   ``--chunk-size``, ``--in-flight`` at a time → read, hash, look up, decode, resize, predict,
   store scores → chunk tables → merged table), against a SeaweedFS server started in a
   temporary folder;
4. flow: the same images through the ``score-folder`` flow on a temporary (ephemeral) Prefect
   API, in a **separate worker process** (this script with ``--flow-worker``) that imports only
   ``flows.score`` and never TensorFlow: each flow point reports whether ``tensorflow`` or
   ``keras`` is in that process's ``sys.modules`` afterwards, its peak RSS (``VmHWM``, reset
   before each point through ``/proc/self/clear_refs``) and the peak of the RSS summed over it
   and its children (Prefect's temporary API server), sampled every 0.2 s from this process.
   Steps 3 and 4 run ``--repeats`` times on new image sets, alternating which goes first; the
   fastest of each counts. Orchestration overhead = (flow wall − library wall) / flow wall; the
   flow's fixed cost is also timed on an empty folder;
5. scaling: the flow on ``--small`` and ``--large`` further new image sets, with the per-image
   cost and the worker's peak RSS at each size (the medium point is step 4's);
6. real: the flow on real x-rays from ``../shared/data/cxr-real`` (mostly PNG, median 1024 px
   a side, up to ~2,600; about 0.5 MB each, so decoding costs far more than for the generated
   images).

The model has untrained (random) weights: scoring speed does not depend on them. Generated images
are 256×256 greyscale PNGs of a gradient plus noise, each one different, so that no point reuses
scores stored by another. The export, the worker's start, its model load and the Prefect API's
start happen in an untimed warm-up.

Each point also has the CPU seconds of this process and the processes it started (the S3 server,
the flow worker and its Prefect API). Where other work shares the cores, wall-time ratios mostly
say which measurement got the larger share of the machine (a path with more threads gets more),
so ``cpu_efficiency`` (ceiling CPU per image over the path's) is the number to trust there; the
1-minute load average is printed before and after each point. Prints one JSON document: the
machine, the command, every number and the ratios against the issues' targets (progress and
Prefect's logs go to stderr).

    .venv/bin/python bench/score_throughput.py                       # 100, 1,000, 3,000 images
    .venv/bin/python bench/score_throughput.py --large 10000         # the issue's 10,000 point
    .venv/bin/python bench/score_throughput.py --small 50 --medium 300 --large 600 --real 100
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from cxr_model import embedded_store  # noqa: E402
from cxr_model.images import to_model_input  # noqa: E402
from cxr_model.storage import ObjectStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "cxr-real"
IMAGE_SIZE = 224
ARCHITECTURE = "seed_cnn"
TF_BATCH = 32
GENERATED_SIDE = 256
THRESHOLD = 0.5
BUCKET = "bench"
WARMUP_IMAGES = 40
RSS_SAMPLE_S = 0.2
# The issues' targets.
TARGET_VS_CEILING = 0.85
TARGET_VS_NAIVE = 3.0
TARGET_OVERHEAD = 0.10
TARGET_PEAK_RSS_MB = 700
# "Flat": the per-image cost at every size within this fraction of the medium point's.
FLAT_TOLERANCE = 0.15


def load() -> float:
    """The 1-minute load average (other work on the machine competes for its cores)."""
    return round(os.getloadavg()[0], 2)


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux ``clear_refs``; ignored elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak RSS since :func:`reset_peak_rss` (VmHWM), in MiB."""
    return _status_mb("self", "VmHWM")


def _process_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, user + system ticks) of every process, from Linux ``/proc``."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _tree(root: int, table: dict[int, tuple[int, int]]) -> set[int]:
    ours = {root}
    while grown := {pid for pid, (parent, _) in table.items() if parent in ours} - ours:
        ours |= grown
    return ours


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and the processes it started (the S3 server,
    the flow worker and its Prefect API): a cost that other load on the machine changes far less
    than wall time."""
    table = _process_table()
    ours = _tree(os.getpid(), table)
    return sum(table[pid][1] for pid in ours if pid in table) / os.sysconf("SC_CLK_TCK")


def tree_rss_mb(root: int) -> float:
    """RSS summed over ``root`` and its descendants now, in MiB (shared pages counted in each)."""
    total = 0.0
    for pid in _tree(root, _process_table()):
        try:
            total += _status_mb(pid, "VmRSS")
        except (OSError, ValueError):
            continue
    return total


@dataclass(frozen=True)
class Point:
    """One timed measurement."""

    name: str
    images: int
    seconds: float
    cpu_seconds: float
    load_before: float
    load_after: float
    peak_rss_mb: float | None = None  # the scoring process's own (the flow worker's for flows)
    peak_tree_rss_mb: float | None = None  # the flow worker and its Prefect API server together
    rss_after_import_mb: float | None = None  # the flow worker's once it imported flows.score
    rss_after_mb: float | None = None  # the flow worker's when the flow had finished
    predicted: int | None = None
    errors: int | None = None
    tensorflow_imported: bool | None = None  # in the flow worker, after the flow ran
    keras_imported: bool | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def report(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None} | {
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.images_per_s, 1),
            "ms_per_image": round(1000 * self.seconds / self.images, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "cpu_ms_per_image": round(1000 * self.cpu_seconds / self.images, 2),
        }


def timed(name: str, images: int, work: Callable[[], dict | None], rss: bool = False) -> Point:
    """Run ``work`` once and time it; ``work`` may return counts (and, for the flow worker, its
    own peak RSS) to keep with the point."""
    if rss:
        reset_peak_rss()
    before = load()
    cpu = tree_cpu_seconds()
    started = time.perf_counter()
    counts = work() or {}
    seconds = time.perf_counter() - started
    cpu = tree_cpu_seconds() - cpu
    if rss and "peak_rss_mb" not in counts:
        counts["peak_rss_mb"] = peak_rss_mb()
    point = Point(name, images, seconds, cpu, before, load(), **counts)
    print(f"[bench] {name}: {json.dumps(point.report())}", file=sys.stderr, flush=True)
    return point


# ----------------------------------------------------------------------------- inputs


def generated_png(seed: int) -> bytes:
    """A 256×256 greyscale PNG: a gradient in a seed-dependent direction plus noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:GENERATED_SIDE, 0:GENERATED_SIDE] / GENERATED_SIDE
    angle = rng.uniform(0, 2 * np.pi)
    ramp = 40 + 160 * (np.cos(angle) * xs + np.sin(angle) * ys + 1) / 2
    pixels = np.clip(ramp + rng.normal(0, 18, ramp.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_images(folder: Path, count: int, first_seed: int) -> Path:
    """``count`` distinct generated PNGs in ``folder`` (100 per subfolder, like day folders)."""

    def write(n: int) -> None:
        path = folder / f"{n // 100:04d}" / f"img-{n:06d}.png"
        path.write_bytes(generated_png(first_seed + n))

    for sub in range((count + 99) // 100):
        (folder / f"{sub:04d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(write, range(count)))
    return folder


def copy_real(folder: Path, count: int | None) -> tuple[Path, int]:
    """The first ``count`` real x-rays of the shared manifest (all when None), copied."""
    files = pd.read_csv(REAL / "manifest.csv", dtype=str)["file"]
    files = files if count is None else files.head(count)
    for name in files:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / name, target)
    return folder, len(files)


# ----------------------------------------------------------------------------- measurements


def ceiling(name: str, run: Callable[[np.ndarray], object], batch: int, images: int) -> Point:
    """``run`` on one in-memory float32 batch of ``batch`` images, about ``images`` images in
    all, after two untimed calls."""
    x = np.random.default_rng(0).integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3))
    x = x.astype(np.float32)
    run(x)
    run(x)
    batches = max(1, round(images / batch))

    def repeat() -> None:
        for _ in range(batches):
            run(x)

    return timed(name, batches * batch, repeat)


def naive(model, files: list[Path]) -> Point:
    """Per file: read, convert, Keras ``model.predict`` on a batch of one (first call untimed)."""
    model.predict(to_model_input(files[0].read_bytes(), IMAGE_SIZE)[None], verbose=0)

    def run() -> None:
        for path in files:
            model.predict(to_model_input(path.read_bytes(), IMAGE_SIZE)[None], verbose=0)

    return timed("naive", len(files), run)


def no_model(pixels: np.ndarray) -> np.ndarray:
    """A predict function that costs nothing: what the path costs besides the model."""
    return np.zeros(len(pixels), np.float32)


def in_order(futures: Iterator[Future], window: int) -> Iterator:
    """Results of lazily submitted futures in order, at most ``window`` unfinished (as the flow)."""
    pending: list[Future] = []
    for future in futures:
        pending.append(future)
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def library_run(
    folder: Path, store: ObjectStore, scores, predict, prefix: str, args: argparse.Namespace
) -> dict:
    """The flow's work without Prefect: chunks in flight, chunk tables, one merged table."""
    from cxr_model import scoring

    def one_chunk(number: int, paths: list[str]) -> tuple[str, scoring.ScoreSummary]:
        scored = scoring.score_chunk(
            paths,
            store,
            scores,
            predict,
            image_size=IMAGE_SIZE,
            threshold=THRESHOLD,
            run=prefix,
        )
        key = f"{prefix}/chunks/{number:05d}.csv"
        table = scoring.frame_to_csv_bytes(scoring.predictions_frame(scored.predictions))
        store.put_bytes(key, table, content_type="text/csv")
        return key, scored.summary

    chunks = scoring.chunked(scoring.list_inputs(str(folder), store), args.chunk_size)
    with ThreadPoolExecutor(max_workers=args.in_flight) as pool:
        submitted = (pool.submit(one_chunk, n, paths) for n, paths in enumerate(chunks))
        results = list(in_order(submitted, args.in_flight))
    scoring.merge_tables(
        store,
        [key for key, _ in results],
        f"{prefix}/predictions.csv",
        f"{prefix}/predictions.parquet",
        20,
    )
    summary = sum((s for _, s in results), scoring.ScoreSummary())
    return {"predicted": summary.predicted, "errors": summary.errors}


# ----------------------------------------------------------------------------- the flow worker


def flow_worker() -> None:
    """``--flow-worker``: run the ``score-folder`` flow for each JSON request on stdin, one JSON
    result per line on stdout. Imports ``flows.score`` only (no TensorFlow); everything else the
    flow prints goes to stderr."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the flow's own output must not mix with the results
    from flows.score import ScoreParams, score_folder

    imported = _status_mb("self", "VmRSS")  # before any model or Prefect API
    results.write(json.dumps({"ready": imported}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        reset_peak_rss()
        result = score_folder(
            ScoreParams(
                input=request["folder"],
                model=str(request["version"]),
                chunk_size=request["chunk_size"],
                max_chunks_in_flight=request["in_flight"],
            )
        )
        answer = {
            "predicted": result.summary["predicted"],
            "errors": result.summary["errors"],
            "peak_rss_mb": peak_rss_mb(),
            "rss_after_import_mb": imported,
            "rss_after_mb": _status_mb("self", "VmRSS"),
            "tensorflow_imported": "tensorflow" in sys.modules,
            "keras_imported": "keras" in sys.modules,
        }
        results.write(json.dumps(answer) + "\n")


class FlowWorker:
    """A child process running :func:`flow_worker`; :meth:`run` scores a folder there."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        print("[bench] starting the flow worker", file=sys.stderr, flush=True)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--flow-worker"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        # its imports must not compete with the points measured meanwhile
        assert self.process.stdout is not None
        if not self.process.stdout.readline():
            raise RuntimeError(f"the flow worker died (exit {self.process.wait()}); see stderr")

    def run(self, folder: Path, version: int) -> dict:
        """Score ``folder`` with ``version`` in the worker; its answer and the peak RSS of the
        worker with its children, sampled while it ran."""
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {
            "folder": str(folder),
            "version": version,
            "chunk_size": self.args.chunk_size,
            "in_flight": self.args.in_flight,
        }
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(RSS_SAMPLE_S):
                peak[0] = max(peak[0], tree_rss_mb(self.process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            line = self.process.stdout.readline()
        finally:
            done.set()
            sampler.join()
        if not line:
            raise RuntimeError(f"the flow worker died (exit {self.process.wait()}); see stderr")
        return json.loads(line) | {"peak_tree_rss_mb": round(peak[0], 1)}

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ----------------------------------------------------------------------------- the run


def start_store(root: Path):
    """A SeaweedFS server in ``root`` and the CXR_*/AWS_* environment pointing at its bucket."""
    creds = embedded_store.load_or_create_credentials(root)
    process, server = embedded_store.start_server(
        root / "s3", creds, log_path=root / "s3.log", detach=False
    )
    os.environ.update(
        {
            "CXR_S3_ENDPOINT_URL": server.endpoint_url,
            "CXR_BUCKET": BUCKET,
            "CXR_STATE_DIR": str(root / "state"),
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        }
    )
    store = ObjectStore(embedded_store.s3_client(server.endpoint_url, creds), BUCKET)
    store.ensure_bucket()
    return process, store


def register(model, store: ObjectStore, root: Path):
    """Register ``model`` as registration does (its ONNX export on the card and attached);
    return its version and the export."""
    from cxr_model.configured import open_registry
    from cxr_model.inference import export_onnx

    path = root / "model.keras"
    model.save(path)
    export = export_onnx(model, IMAGE_SIZE)
    models = open_registry(store=store)
    card = models.register(
        path,
        threshold=THRESHOLD,
        metrics={},
        training={},
        parameters={"training": {"image_size": IMAGE_SIZE, "architecture": ARCHITECTURE}},
        dataset_id="bench-untrained",
        export=export,
    )
    return card.version, export


def ratio(value: float, target: float, higher_is_better: bool = True) -> dict:
    met = value >= target if higher_is_better else value <= target
    return {"value": round(value, 3), "target": target, "met": bool(met)}


def best(points: list[Point]) -> Point:
    """The fastest of repeated measurements (the one least slowed by other work)."""
    return min(points, key=lambda point: point.seconds / point.images)


def flat(per_image: dict[int, float], reference: int) -> dict:
    """Per-image costs by size over the ``reference`` size's, and whether all are near 1."""
    relative = {str(n): round(cost / per_image[reference], 3) for n, cost in per_image.items()}
    largest, smallest = per_image[max(per_image)], per_image[min(per_image)]
    return {
        "value": relative,
        "largest_over_smallest": round(largest / smallest, 3),
        "met": all(abs(v - 1) <= FLAT_TOLERANCE for v in relative.values()),
    }


def by_size(points: dict[str, list[Point]], cost: Callable[[Point], float]) -> dict[int, float]:
    """``cost`` per image of the flow at each size (the medium size: the mean of its repeats)."""
    sizes = [points["flow_small"], points["flow"], points["flow_large"]]
    return {runs[0].images: sum(cost(p) / p.images for p in runs) / len(runs) for runs in sizes}


def targets(points: dict[str, list[Point]]) -> dict:
    """The issues' targets, each with the measured value, from the best of each repeat."""
    ceilings = points["ceiling"]
    top = sum(point.images_per_s for point in ceilings) / len(ceilings)
    ceiling_cpu = sum(p.cpu_seconds for p in ceilings) / sum(p.images for p in ceilings)
    flow, library = best(points["flow"]), best(points["library"])
    fixed = min(point.seconds for point in points["flow_empty"])
    without = points["library_without_model"][0]
    gross = by_size(points, lambda p: p.seconds)
    net = by_size(points, lambda p: p.seconds - fixed)
    cpu = by_size(points, lambda p: p.cpu_seconds)
    large = points["flow_large"][0]
    flows = [p for name, runs in points.items() if name.startswith(("flow", "real")) for p in runs]
    return {
        "ceiling_images_per_s_mean": round(top, 1),
        "reference_ceilings_vs_ceiling": {
            name: round(points[name][0].images_per_s / top, 3)
            for name in ("ceiling_ort_32", "ceiling_tf")
            if name in points
        },
        "flow_vs_ceiling": ratio(flow.images_per_s / top, TARGET_VS_CEILING),
        "library_vs_ceiling": ratio(library.images_per_s / top, TARGET_VS_CEILING),
        "flow_vs_naive": ratio(
            flow.images_per_s / best(points["naive"]).images_per_s, TARGET_VS_NAIVE
        ),
        "orchestration_overhead": ratio(
            (flow.seconds - library.seconds) / flow.seconds, TARGET_OVERHEAD, False
        ),
        # the same in CPU seconds (this process and its servers), less sensitive to other load
        "orchestration_overhead_cpu": round(
            (flow.cpu_seconds - library.cpu_seconds) / flow.cpu_seconds, 3
        ),
        "flow_fixed_seconds": round(fixed, 2),
        # the library path with a model that costs nothing, over the ceiling, in CPU per image
        "cost_besides_model_vs_ceiling_cpu": round(
            (without.cpu_seconds / without.images) / ceiling_cpu, 3
        ),
        # CPU per image of the ceiling over that of each path, this process and the servers it
        # started together (1.0: nothing but the model); far less sensitive to other load.
        "cpu_efficiency": {
            point.name: round(ceiling_cpu / (point.cpu_seconds / point.images), 3)
            for point in (library, flow)
        },
        "per_image_cost_vs_medium": {
            "target": f"within ±{FLAT_TOLERANCE:.0%} of the {flow.images}-image point's (the mean "
            "of its repeats)",
            "wall": flat(gross, flow.images),
            "wall_less_fixed_cost": flat(net, flow.images),  # less the empty-folder run's wall
            "cpu": flat(cpu, flow.images),
        },
        "peak_rss_mb_by_size": {
            str(runs[0].images): max(p.peak_rss_mb or 0 for p in runs)
            for runs in (points["flow_small"], points["flow"], points["flow_large"])
        },
        "peak_rss_largest": ratio(large.peak_rss_mb or float("nan"), TARGET_PEAK_RSS_MB, False),
        "peak_rss_largest_with_prefect_api": large.peak_tree_rss_mb,
        "tensorflow_in_flow_process": any(p.tensorflow_imported for p in flows),
        "keras_in_flow_process": any(p.keras_imported for p in flows),
    }


def versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import prefect
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnxruntime": onnxruntime.__version__,
        "prefect": prefect.__version__,
    }


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **versions(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100, help="images at the small point")
    parser.add_argument(
        "--medium", type=int, default=1000, help="images for library vs flow (and scaling)"
    )
    parser.add_argument("--large", type=int, default=3000, help="images at the large point")
    parser.add_argument(
        "--repeats", type=int, default=2, help="library and flow runs on new medium sets"
    )
    parser.add_argument("--naive", type=int, default=200, help="images for the naive loop")
    parser.add_argument(
        "--ceiling-images", type=int, default=640, help="images per ceiling measurement"
    )
    parser.add_argument(
        "--real", type=int, default=None, help="real x-rays to score (default all; 0: none)"
    )
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=4, help="chunks scored at once")
    parser.add_argument("--flow-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def measure(args: argparse.Namespace, root: Path, store: ObjectStore) -> dict[str, list[Point]]:
    """Every point, in an order that spreads the machine's changing load over the comparisons."""
    from cxr_model.inference import OnnxModel
    from cxr_model.model import build_model
    from cxr_model.scoring import ONNX_BATCH, Predict, ScoreStore, onnx_predictor

    print(f"[bench] writing images under {root}", file=sys.stderr, flush=True)
    seeds = iter(range(0, 10**9, 10**6))
    warmup = write_images(root / "warmup", WARMUP_IMAGES, next(seeds))
    mediums = [
        write_images(root / f"medium-{n}", args.medium, next(seeds)) for n in range(args.repeats)
    ]
    small = write_images(root / "small", args.small, next(seeds))
    large = write_images(root / "large", args.large, next(seeds))
    (root / "empty").mkdir()
    real = copy_real(root / "real", args.real) if args.real != 0 else None

    model = build_model(ARCHITECTURE, IMAGE_SIZE)
    version, export = register(model, store, root)
    runtime = OnnxModel(export.data)
    predict = onnx_predictor(runtime)
    worker = FlowWorker(args)
    points: dict[str, list[Point]] = {}

    def add(point: Point) -> None:
        points.setdefault(point.name, []).append(point)

    def library(folder: Path, name: str, model_predict: Predict = predict) -> Callable[[], dict]:
        scores = ScoreStore(store, f"bench-{name}", 1)  # its own scores: the flow predicts too
        return lambda: library_run(folder, store, scores, model_predict, f"bench/{name}", args)

    def flow(folder: Path) -> Callable[[], dict]:
        return lambda: worker.run(folder, version)

    try:
        add(ceiling("ceiling", runtime.run, ONNX_BATCH, args.ceiling_images))
        add(ceiling("ceiling_tf", model.predict_on_batch, TF_BATCH, args.ceiling_images))
        add(naive(model, sorted(mediums[0].rglob("*.png"))[: args.naive]))
        library(warmup, "warmup")()
        add(timed("library_without_model", args.medium, library(mediums[0], "no-model", no_model)))
        add(timed("flow_warmup", WARMUP_IMAGES, flow(warmup)))
        for n, medium in enumerate(mediums):
            pair = [
                ("library", library(medium, f"library-{n}"), False),
                ("flow", flow(medium), False),
            ]
            for name, work, rss in pair if n % 2 == 0 else pair[::-1]:
                add(timed(name, args.medium, work, rss=rss))
        for _ in range(2):
            add(timed("flow_empty", 1, flow(root / "empty")))
        add(timed("flow_small", args.small, flow(small)))
        add(timed("flow_large", args.large, flow(large)))
        if real is not None:
            folder, count = real
            add(timed("real", count, flow(folder)))
        add(ceiling("ceiling_ort_32", runtime.run, TF_BATCH, args.ceiling_images))
        add(ceiling("ceiling", runtime.run, ONNX_BATCH, args.ceiling_images))
    finally:
        worker.close()
    return points


def main() -> None:
    args = parse_args()
    if args.flow_worker:
        flow_worker()
        return
    root = Path(tempfile.mkdtemp(prefix="cxr-score-bench-"))
    # Prefect keeps its database and profile here; its API is a temporary local server.
    os.environ.update(
        {
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    process, store = start_store(root)
    try:
        points = measure(args, root, store)
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "machine": machine(),
                "command": " ".join([".venv/bin/python", *sys.argv]),
                "model": f"{ARCHITECTURE} at {IMAGE_SIZE} px, untrained (random) weights, "
                "scored with its ONNX export in ONNX Runtime",
                "settings": {"chunk_size": args.chunk_size, "in_flight": args.in_flight},
                "points": {name: [p.report() for p in runs] for name, runs in points.items()},
                "targets": targets(points),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
