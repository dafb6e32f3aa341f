"""Scoring runtimes side by side: TensorFlow, ONNX Runtime and OpenVINO on the study CNN (issue 14).

One process, one JSON document on stdout (progress on stderr):

1. images/s of the study CNN (``seed_cnn``) at 224 px, batch 32, through TensorFlow
   ``predict_on_batch``, ONNX Runtime (:func:`cxr_model.inference.export_onnx` +
   :class:`cxr_model.inference.OnnxModel`), OpenVINO fp32 (latency hint, ``INFERENCE_PRECISION_HINT
   = f32``) and a naive per-image ``model.predict(x[None])``; each path's ratio to TensorFlow and
   its share of the machine's fp32 limit (numpy sgemm GFLOP/s measured in this run ÷ the model's
   GFLOP per image, counted from the layer shapes: 2·k_h·k_w·c_in per output value of each
   Conv2D, 2·n_in per output of each Dense; rescaling, ReLU, pooling and the sigmoid are left out).
   The paths are timed in interleaved rounds (each round times every path once), so a busy
   neighbour slows them alike; the median round is reported, and the best as well.
2. ``import tensorflow`` / ``onnxruntime`` / ``openvino`` in fresh interpreters (best of 3), and
   each package's installed size (the files its distribution records, plus the whole closure of
   its requirements).
3. ONNX Runtime batch sizes 1–32: images/s and peak RSS of a fresh subprocess per batch size, with
   ONNX Runtime's CPU memory arena on (the default) and off.
4. Lower precision: ONNX Runtime int8 (``quantize_dynamic``, and ``quantize_static`` calibrated on
   Train images) and OpenVINO bf16; their images/s (in the rounds of 1.) and their AUC against
   fp32 on the real x-rays of ``../shared/data/cxr-real``: a ``seed_cnn`` trained briefly on part
   of them (split by patient), scored on the rest.

The rounds use the trained model (the weights do not change the work per image).

    .venv/bin/python bench/inference_runtimes.py            # full run (~20 min on 2 busy cores, ~11 GB RAM)
    .venv/bin/python bench/inference_runtimes.py --quick    # smoke run
    make bench-runtimes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cxr-real"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/cxr-real")
IMAGE_SIZE = 224
BATCH = 32
SWEEP = (1, 2, 4, 8, 16, 32)
PACKAGES = {"tensorflow": "tensorflow", "onnxruntime": "onnxruntime", "openvino": "openvino"}
SLOW = {"ort_int8_dynamic"}  # one batch per round: ~25x slower than fp32 on this CPU
ADOPT_BELOW = 0.002  # the issue: adopt a lower precision only if AUC moves by less than this


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def memory_mb() -> dict:
    """This process's resident set now and its high-water mark (VmHWM, which, unlike
    ru_maxrss, starts afresh at exec), in MB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / 1e6
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


def machine() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "python": platform.python_version(),
    }


# --- 1. the machine's fp32 limit and the model's cost --------------------------------------------


def sgemm_gflops(n: int = 2048, repeats: int = 8) -> float:
    """Best numpy float32 matrix product speed (2·n³ flops per product), all cores."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def sgemm_gflops_avx512(n: int = 2048, repeats: int = 8) -> float | None:
    """The same in a fresh interpreter whose OpenBLAS is told to use its AVX-512 kernels
    (``OPENBLAS_CORETYPE=SkylakeX``): OpenBLAS 0.3.31 picks its AVX2 Haswell kernels on this AMD
    CPU, which would understate the machine's fp32 limit. None where the CPU has no AVX-512."""
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        return None
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += f"from inference_runtimes import sgemm_gflops; print(sgemm_gflops({n}, {repeats}))"
    env = {**os.environ, "OPENBLAS_CORETYPE": "SkylakeX"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def model_gflop(model) -> dict:
    """Multiply-adds ×2 per image of each Conv2D and Dense layer, from its shapes."""
    import keras

    per_layer = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            _, h, w, c_out = layer.output.shape
            per_layer[layer.name] = 2 * h * w * c_out * kh * kw * c_in / 1e9
        elif isinstance(layer, keras.layers.Dense):
            per_layer[layer.name] = 2 * layer.input.shape[-1] * layer.units / 1e9
    return {"total": sum(per_layer.values()), "by_layer": per_layer}


# --- runtimes -------------------------------------------------------------------------------------


def openvino_model(onnx_path: Path, precision: str):
    """The ONNX file compiled by OpenVINO for the CPU, latency hint, the given precision."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        ov.convert_model(str(onnx_path)),
        "CPU",
        {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision},
    )
    request = compiled.create_infer_request()

    def run(pixels: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(pixels, dtype=np.float32)})
        return request.get_output_tensor(0).data.reshape(-1).copy()

    return run, str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def onnx_runner(source: bytes | Path):
    from cxr_model.inference import OnnxModel

    model = OnnxModel(source)
    return lambda pixels: model.run(pixels)[0]


class Calibration:
    """Train images for ``quantize_static``, in batches of 8."""

    def __init__(self, images: np.ndarray, input_name: str):
        self.batches = iter(
            [{input_name: images[i : i + 8].astype(np.float32)} for i in range(0, len(images), 8)]
        )

    def get_next(self):
        return next(self.batches, None)


def quantized(onnx_path: Path, folder: Path, calibration: np.ndarray) -> dict:
    """int8 versions of the ONNX file: dynamic, and static (QDQ, per channel) if it works."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cxr_model.inference import INPUT_NAME

    found: dict = {}
    prepared = folder / "prepared.onnx"
    try:
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - the plain file is quantised instead
        log(f"quant_pre_process failed ({type(exc).__name__}: {exc}); quantising the export")
        prepared = onnx_path
    dynamic = folder / "int8-dynamic.onnx"
    try:
        quantize_dynamic(str(prepared), str(dynamic), weight_type=QuantType.QInt8)
        found["ort_int8_dynamic"] = dynamic
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        found["ort_int8_dynamic_error"] = f"{type(exc).__name__}: {exc}"[:300]

    class Reader(Calibration, CalibrationDataReader):
        pass

    static = folder / "int8-static.onnx"
    try:
        quantize_static(
            str(prepared),
            str(static),
            Reader(calibration, INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        found["ort_int8_static"] = static
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        found["ort_int8_static_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return found


def throughput_rounds(paths: dict, batch: np.ndarray, rounds: int, batches: int) -> dict:
    """images/s of each path, timed in interleaved rounds; ``naive`` runs one image at a time."""
    for run, per_image in paths.values():  # warm up: first calls build kernels and caches
        run(batch[:1] if per_image else batch)
    found: dict[str, list[float]] = {name: [] for name in paths}
    sgemm: list[float] = []
    sgemm_avx512: list[float | None] = []
    for number in range(rounds):
        sgemm.append(sgemm_gflops())
        sgemm_avx512.append(sgemm_gflops_avx512())
        for name, (run, per_image) in paths.items():
            started = time.perf_counter()
            if per_image:
                for image in batch:
                    run(image[None])
                images = len(batch)
            else:
                count = 1 if name in SLOW else batches
                for _ in range(count):
                    run(batch)
                images = count * len(batch)
            found[name].append(images / (time.perf_counter() - started))
        log(
            f"round {number + 1}/{rounds}: sgemm {sgemm[-1]:.0f} GFLOP/s "
            f"(AVX-512 kernels {sgemm_avx512[-1] or 0:.0f}); "
            + ", ".join(f"{name} {values[-1]:.1f}" for name, values in found.items())
            + f" images/s; load {load()[0]}"
        )
    return {"images_per_s": found, "sgemm_gflops": sgemm, "sgemm_gflops_avx512": sgemm_avx512}


# --- 2. imports and sizes -------------------------------------------------------------------------


def import_seconds(module: str, tries: int = 3) -> dict:
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    baseline = min(
        _timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        for _ in range(tries)
    )
    return {"best_s": min(times), "all_s": times, "bare_interpreter_s": baseline}


def _dist_bytes(dist) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def _requirements(dist) -> list[str]:
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def installed_size(name: str, base: set[str]) -> dict:
    """The distribution's own files, its requirements' closure, and the part of that closure the
    base install (cxr without extras) does not already bring."""
    own = metadata.distribution(name)
    closure: dict[str, int] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        key = current.lower().replace("_", "-")
        if key in closure:
            continue
        try:
            dist = metadata.distribution(current)
        except metadata.PackageNotFoundError:
            continue
        closure[key] = _dist_bytes(dist)
        todo.extend(_requirements(dist))
    extra = {k: v for k, v in closure.items() if k not in base or k == name}
    return {
        "version": own.version,
        "own_mb": _dist_bytes(own) / 1e6,
        "with_requirements_mb": sum(closure.values()) / 1e6,
        "beyond_base_install_mb": sum(extra.values()) / 1e6,
        "requirements": sorted(closure),
        "beyond_base_install": sorted(extra),
    }


def base_closure() -> set[str]:
    """Distributions the base install of cxr brings (its requirements' closure, no extras)."""
    seen: set[str] = set()
    todo = list(_requirements(metadata.distribution("cxr")))
    while todo:
        current = todo.pop()
        key = current.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            todo.extend(_requirements(metadata.distribution(current)))
        except metadata.PackageNotFoundError:
            pass
    return seen


# --- 3. batch sweep in fresh subprocesses ---------------------------------------------------------


def child(onnx_path: str, batch_size: int, images: int, arena: bool) -> None:
    """One batch size in this fresh process: images/s and RSS (MB), as one JSON line."""
    import onnxruntime as ort

    after_import = memory_mb()["rss_mb"]
    options = ort.SessionOptions()  # as cxr_model.inference.OnnxModel, arena switchable
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    after_session = memory_mb()["rss_mb"]
    session.run(None, {name: pixels})
    steps = max(images // batch_size, 1)
    started = time.perf_counter()
    for _ in range(steps):
        session.run(None, {name: pixels})
    seconds = time.perf_counter() - started
    peak = memory_mb()["peak_mb"]
    print(
        json.dumps(
            {
                "batch": batch_size,
                "arena": arena,
                "images_per_s": steps * batch_size / seconds,
                "rss_after_import_mb": after_import,
                "rss_with_session_and_input_mb": after_session,
                "peak_rss_mb": peak,
                "peak_increase_over_import_mb": peak - after_import,
                "input_mb": pixels.nbytes / 1e6,
            }
        )
    )


def sweep(onnx_path: Path, images: int, passes: int) -> dict:
    """Each batch size, arena on and off, in a fresh process; ``passes`` passes over them all
    (interleaved, so a busy neighbour slows them alike): the median images/s, the largest peak."""
    runs = []
    for number in range(passes):
        for arena in (True, False):
            for batch_size in SWEEP:
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    str(onnx_path),
                    str(batch_size),
                    str(images),
                    "on" if arena else "off",
                ]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["load"] = load()[0]
                runs.append(row)
                log(
                    f"sweep pass {number + 1} arena={'on' if arena else 'off'} batch {batch_size}: "
                    f"{row['images_per_s']:.1f} images/s, "
                    f"peak +{row['peak_increase_over_import_mb']:.0f} MB"
                )
    summary = []
    for arena in (True, False):
        for batch_size in SWEEP:
            mine = [r for r in runs if r["arena"] == arena and r["batch"] == batch_size]
            summary.append(
                {
                    "batch": batch_size,
                    "arena": arena,
                    "images_per_s_median": statistics.median(r["images_per_s"] for r in mine),
                    "images_per_s_all": [r["images_per_s"] for r in mine],
                    "peak_increase_over_import_mb": max(
                        r["peak_increase_over_import_mb"] for r in mine
                    ),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                    "rss_after_import_mb": min(r["rss_after_import_mb"] for r in mine),
                }
            )
    return {"summary": summary, "runs": runs}


# --- 4. the real x-rays ---------------------------------------------------------------------------


def real_xrays(limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 model inputs, labels (covid = 1), and a train mask (60% of patients, seeded)."""
    from cxr_model.images import to_model_input

    with (DATA / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(14)
    rows = [rows[i] for i in rng.permutation(len(rows))][:limit]
    images = np.stack([to_model_input((DATA / r["file"]).read_bytes(), IMAGE_SIZE) for r in rows])
    labels = np.array([r["label"] == "covid" for r in rows], dtype=np.float32)
    patients = sorted({r["patient_id"] for r in rows})
    chosen = set(rng.permutation(patients)[: int(0.6 * len(patients))])
    train = np.array([r["patient_id"] in chosen for r in rows])
    return images, labels, train


def in_batches(run, images: np.ndarray, size: int = BATCH) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(run(images[i : i + size].astype(np.float32))).reshape(-1)
            for i in range(0, len(images), size)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--batches", type=int, default=4, help="batches of 32 per path and round")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sweep-images", type=int, default=128, help="images per sweep process")
    parser.add_argument("--sweep-passes", type=int, default=1)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, batch_size, images, arena = args.child
        child(path, int(batch_size), int(images), arena == "on")
        return
    limit = None
    if args.quick:
        args.rounds, args.batches, args.epochs, args.sweep_images, limit = 1, 1, 1, 32, 120
        args.sweep_passes = 1

    report: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "load_before": load(),
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
    }
    log(f"start, load {report['load_before']}")
    import keras
    import onnxruntime
    import openvino
    import tensorflow as tf

    from cxr_model.inference import export_onnx
    from cxr_model.model import build_model, compile_for_training
    from cxr_model.scoring import ONNX_BATCH

    report["versions"] = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__,
        "numpy": np.__version__,
        "openvino_cpu_default_precision": str(
            openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        ),
    }

    # the real x-rays, and a briefly trained study CNN
    images, labels, train = real_xrays(limit)
    log(f"{len(images)} x-rays decoded, {int(train.sum())} to train on")
    keras.utils.set_random_seed(0)
    model = build_model("seed_cnn", IMAGE_SIZE)
    compile_for_training(model, 1e-3)
    started = time.perf_counter()
    history = model.fit(
        images[train].astype(np.float32),
        labels[train],
        batch_size=BATCH,
        epochs=args.epochs,
        shuffle=True,
        verbose=0,
    )
    report["training"] = {
        "architecture": "seed_cnn",
        "train_images": int(train.sum()),
        "test_images": int((~train).sum()),
        "test_covid": int(labels[~train].sum()),
        "split": "60% of patients (seeded) train, the rest test",
        "epochs": args.epochs,
        "seconds": time.perf_counter() - started,
        "final_train_auc": float(history.history["auc"][-1]),
    }
    memory = report["main_process_memory"] = {"after_training": memory_mb()}
    log(f"trained: {report['training']}; memory {memory['after_training']}")
    cost = model_gflop(model)
    report["model_gflop_per_image"] = cost

    with tempfile.TemporaryDirectory(prefix="cxr-runtimes-") as folder:
        folder = Path(folder)
        exported = export_onnx(model, IMAGE_SIZE)
        onnx_path = folder / "model.onnx"
        onnx_path.write_bytes(exported.data)
        report["onnx_bytes"] = len(exported.data)
        report["onnx_export_parity_max_abs_diff"] = exported.artifact.parity_max_abs_diff
        int8 = quantized(onnx_path, folder, images[train][: 64 if not args.quick else 16])
        ov_f32, ov_f32_precision = openvino_model(onnx_path, "f32")
        ov_bf16, ov_bf16_precision = openvino_model(onnx_path, "bf16")
        report["openvino_precision"] = {"f32_row": ov_f32_precision, "bf16_row": ov_bf16_precision}

        paths = {
            "tensorflow_predict_on_batch": (lambda x: model.predict_on_batch(x), False),
            "onnxruntime": (onnx_runner(exported.data), False),
            "openvino_fp32_latency": (ov_f32, False),
            "naive_per_image_predict": (lambda x: model.predict(x, verbose=0), True),
            "openvino_bf16_latency": (ov_bf16, False),
        }
        for name in ("ort_int8_dynamic", "ort_int8_static"):
            if name in int8:
                paths[name] = (onnx_runner(int8[name]), False)
            else:
                report[f"{name}_error"] = int8.get(f"{name}_error")
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
        # ONNX Runtime's smaller batches, in the same session and the same rounds: 32 images each
        # time, in batches of b (batch 32 is the "onnxruntime" row)
        fp32_run = paths["onnxruntime"][0]
        sweep_paths = {
            f"onnxruntime_batch_{b}": (
                lambda x, b=b: [fp32_run(x[i : i + b]) for i in range(0, len(x), b)],
                False,
            )
            for b in SWEEP
            if b != BATCH
        }
        memory["after_export_quantisation_openvino"] = memory_mb()
        log(
            f"timing {list(paths) + list(sweep_paths)} in {args.rounds} rounds; memory {memory_mb()}"
        )
        timed = throughput_rounds(paths | sweep_paths, batch, args.rounds, args.batches)
        sgemm = max([v for v in timed["sgemm_gflops"] + timed["sgemm_gflops_avx512"] if v])
        limit_images = sgemm / cost["total"]
        medians = {n: statistics.median(v) for n, v in timed["images_per_s"].items()}
        reference = medians["tensorflow_predict_on_batch"]
        report["throughput"] = {
            "image_size": IMAGE_SIZE,
            "batch": BATCH,
            "sgemm_gflops_best": sgemm,
            "sgemm_gflops_rounds": timed["sgemm_gflops"],
            "sgemm_gflops_openblas_skylakex_rounds": timed["sgemm_gflops_avx512"],
            "sgemm_note": "best of numpy float32 2048x2048 matmul, all cores, over the rounds, "
            "with OpenBLAS's own kernel choice and with OPENBLAS_CORETYPE=SkylakeX",
            "fp32_limit_images_per_s": limit_images,
            "rows": {
                name: {
                    "images_per_s_median": medians[name],
                    "images_per_s_best": max(values),
                    "images_per_s_rounds": values,
                    "vs_tensorflow": medians[name] / reference,
                    "share_of_fp32_limit": medians[name] / limit_images,
                }
                for name, values in timed["images_per_s"].items()
                if name in paths
            },
            "load_after_rounds": load(),
        }

        # parity on random pixels, and AUC on the real test x-rays
        parity_pixels = batch[:8]
        keras_probabilities = model.predict_on_batch(parity_pixels).reshape(-1)
        report["parity_vs_keras_random_pixels_max_abs_diff"] = {
            name: float(
                np.max(np.abs(np.asarray(run(parity_pixels)).reshape(-1) - keras_probabilities))
            )
            for name, (run, per_image) in paths.items()
            if not per_image and name != "tensorflow_predict_on_batch"
        }
        from sklearn.metrics import roc_auc_score

        test, y = images[~train], labels[~train]
        probabilities = {
            "keras": in_batches(lambda x: model.predict_on_batch(x), test),
            **{
                name: in_batches(run, test)
                for name, (run, per_image) in paths.items()
                if not per_image and name != "tensorflow_predict_on_batch"
            },
        }
        fp32 = probabilities["onnxruntime"]
        fp32_auc = float(roc_auc_score(y, fp32))
        quality = {}
        for name, found in probabilities.items():
            auc = float(roc_auc_score(y, found))
            quality[name] = {
                "auc": auc,
                "auc_change_vs_onnxruntime_fp32": auc - fp32_auc,
                "max_abs_probability_change": float(np.max(np.abs(found - fp32))),
                "labels_changed_at_0.5": int(np.sum((found >= 0.5) != (fp32 >= 0.5))),
            }
        lower = ("ort_int8_dynamic", "ort_int8_static", "openvino_bf16_latency")
        report["real_xrays"] = {
            "reference": "onnxruntime fp32 (what scoring runs)",
            "by_path": quality,
            "adopt_rule": f"|AUC change| < {ADOPT_BELOW}",
            "qualifies": {
                name: abs(quality[name]["auc_change_vs_onnxruntime_fp32"]) < ADOPT_BELOW
                for name in lower
                if name in quality
            },
        }
        memory["after_rounds_and_auc"] = memory_mb()
        log(f"AUC: { {n: round(q['auc'], 4) for n, q in quality.items()} }; memory {memory_mb()}")

        log("batch sweep in fresh processes")
        report["onnxruntime_batch_sweep"] = {
            "provisional_ONNX_BATCH": ONNX_BATCH,
            "in_process_rounds": {
                b: {
                    "images_per_s_median": medians[name],
                    "images_per_s_rounds": timed["images_per_s"][name],
                    "vs_batch_32": medians[name] / medians["onnxruntime"],
                }
                for b in SWEEP
                for name in [f"onnxruntime_batch_{b}" if b != BATCH else "onnxruntime"]
            },
            "images_per_process": args.sweep_images,
            "passes": args.sweep_passes,
            **sweep(onnx_path, args.sweep_images, args.sweep_passes),
        }

    log("imports and sizes")
    base = base_closure()
    report["imports"] = {name: import_seconds(name, 1 if args.quick else 3) for name in PACKAGES}
    report["installed"] = {name: installed_size(dist, base) for name, dist in PACKAGES.items()}
    report["installed_note"] = (
        "own_mb: the files the distribution's RECORD lists (its package folders, bundled native "
        "libraries, .dist-info); with_requirements_mb: plus every distribution its requirements "
        "pull in (markers evaluated, no extras); beyond_base_install_mb: of those, the ones "
        "cxr's base install (no extras) does not already bring"
    )
    report["load_after"] = load()
    log(f"done, load {report['load_after']}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
