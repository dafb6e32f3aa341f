"""How long `cxr` takes to say something: bad arguments, the first progress line, fixed costs.

Measures, each as subprocess wall time from start:

- the failure of ``cxr score /nonexistent``, ``cxr ingest foo:bar`` and ``cxr train /nonexistent``
  (median of ``--repeat`` runs; the target is under 2 s);
- for reference: ``import tensorflow``, ``onnxruntime``, ``prefect``, ``flows.cli`` and
  ``flows.score`` alone, each in a fresh interpreter, and what ``flows.score``'s import time
  goes to (``python -X importtime``: its direct imports by cumulative time; a module imported by
  an earlier one counts there);
- a version to score with: by default the study's CNN (untrained weights: speed does not depend
  on them) registered as registration does it since issue 14, exported to ONNX with
  :func:`cxr_model.inference.export_onnx` and ``model.onnx`` attached, then made champion, in a
  subprocess (the only one that imports TensorFlow); with ``--demo`` ``cxr demo`` instead (its
  retraining exports at registration too; minutes), timed: first line, first progress line, the
  whole run;
- ``cxr score <folder>`` on the 44 actualmed x-rays, ``--score-runs`` times: the first predicts
  every image, the next ones reuse the stored scores (the fixed cost alone). Each: first line,
  first progress line, the whole command, the flow's own scoring seconds, the progress lines
  (their seconds since the CLI module loaded say where the time goes: imports, Prefect's temporary
  API, loading the model), and whether the version was scored with ONNX Runtime;
- with ``--prefect-server``, the same command once more against a running ``prefect server start``
  (``PREFECT_API_URL`` set, as ``make up`` gives), after it is healthy: the fixed cost less the
  temporary API's start.

Everything runs in a fresh state folder with its own embedded store (started by the registration
and running for every ``cxr score``, stopped at the end) and without ``PREFECT_API_URL`` (a
temporary Prefect API per command, as a new user gets), unless you set it.

    .venv/bin/python bench/cli_latency.py [--folder ../shared/data/cxr-real/actualmed] [--repeat 3]
    .venv/bin/python bench/cli_latency.py --prefect-server --score-runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO.parent / "shared" / "data" / "cxr-real" / "actualmed"
PROGRESS = re.compile(r"^\s+\d+s ")
ARCHITECTURE = "seed_cnn"
IMAGE_SIZE = 224
THRESHOLD = 0.5
IMPORTS = ("tensorflow", "onnxruntime", "prefect", "flows.cli", "flows.score")
SERVER_WAIT_S = 180


def _timed(args: list[str], env: dict[str, str], timeout: float = 1800) -> dict:
    """Run ``cxr ARGS``; the times of its first line, first progress line and exit, and its
    output."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    first = first_progress = None
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        now = time.monotonic() - started
        lines.append(line.rstrip("\n"))
        if first is None and line.strip():
            first = now
        if first_progress is None and PROGRESS.match(line):
            first_progress = now
        if now > timeout:
            process.kill()
            break
    code = process.wait()
    return {
        "first": first,
        "progress": first_progress,
        "total": time.monotonic() - started,
        "code": code,
        "lines": lines,
    }


def _import_time(module: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=REPO,
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def _import_breakdown(module: str, env: dict[str, str], top: int = 8) -> list[tuple[str, float]]:
    """``module``'s direct imports by cumulative seconds (``-X importtime``), largest first."""
    found = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    direct = []
    for line in found.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if match and len(match.group(2)) == 2:  # one level below `module` (2 spaces a level)
            direct.append((match.group(3), int(match.group(1)) / 1e6))
        elif match and match.group(3) == module:
            direct.append((f"{module} (all)", int(match.group(1)) / 1e6))
    return sorted(direct, key=lambda item: -item[1])[: top + 1]


def register_champion() -> None:
    """``--register``: in this process (the only one that imports TensorFlow), register the
    study's CNN with its ONNX export in the configured store (``CXR_STATE_DIR``'s embedded one)
    and make it champion."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from cxr_model.config import get_settings
    from cxr_model.inference import INFERENCE_FILE, export_onnx
    from cxr_model.model import build_model
    from cxr_model.registry import CHAMPION, Registry
    from cxr_model.storage import open_store

    settings = get_settings()
    model = build_model(ARCHITECTURE, IMAGE_SIZE)
    export = export_onnx(model, IMAGE_SIZE)
    models = Registry(open_store(settings), settings.model_name, settings.cache_dir)
    with tempfile.TemporaryDirectory(prefix="cxr-latency-model-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        card = models.register(
            path,
            threshold=THRESHOLD,
            metrics={},
            training={},
            parameters={"training": {"image_size": IMAGE_SIZE, "architecture": ARCHITECTURE}},
            dataset_id="bench-untrained",
            export=export,
        )
    models.set_alias(CHAMPION, card.version, reason="bench/cli_latency.py")
    print(f"registered {card.name} v{card.version} with {INFERENCE_FILE} as champion")


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _score(folder: Path, env: dict[str, str], label: str) -> int:
    """``cxr score folder``, timed and printed; its exit status."""
    load = os.getloadavg()[0]
    scored = _timed(["score", str(folder)], env)
    inner = next(
        (
            float(m.group(1))
            for line in scored["lines"]
            if (m := re.search(r"in ([\d.]+) s$", line))
        ),
        None,
    )
    onnx = any("no ONNX export" in line for line in scored["lines"])
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    print(
        f"cxr score {folder} ({files} files), {label}: load {load:.2f}→{os.getloadavg()[0]:.2f}; "
        f"first line {_fmt(scored['first'])}, first progress line {_fmt(scored['progress'])}, "
        f"whole command {_fmt(scored['total'])}, of which the flow's scoring {_fmt(inner)} "
        f"(exit {scored['code']}; {'Keras, no ONNX export' if onnx else 'ONNX Runtime'})"
    )
    print(f"    first line: {scored['lines'][0] if scored['lines'] else '-'}")
    shown = [line for line in scored["lines"] if PROGRESS.match(line) or " predicted now" in line]
    print("\n".join(f"    | {line}" for line in shown))
    if scored["code"] != 0:
        print("\n".join(scored["lines"][-20:]))
    return scored["code"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _prefect_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A ``prefect server start`` on a free local port, once its health check answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"prefect server start did not answer on {url} in {SERVER_WAIT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--score-runs", type=int, default=2, help="cxr score runs in a row")
    parser.add_argument("--demo", action="store_true", help="register with `cxr demo` (minutes)")
    parser.add_argument(
        "--state-dir", type=Path, help="Reuse this state (its store's champion scores the folder)."
    )
    parser.add_argument(
        "--prefect-server", action="store_true", help="also score against a running Prefect API"
    )
    parser.add_argument("--register", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.register:
        register_champion()
        return

    state = args.state_dir or Path(tempfile.mkdtemp(prefix="cxr-latency-"))
    env = {**os.environ, "CXR_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    print(f"machine: {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; state {state}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")

    for command in (
        ["score", "/nonexistent"],
        ["ingest", "foo:bar"],
        ["train", "/nonexistent"],
    ):
        runs = [_timed(command, env) for _ in range(args.repeat)]
        assert all(r["code"] == 1 for r in runs), runs[0]["lines"]
        walls = [r["total"] for r in runs]
        print(
            f"cxr {' '.join(command)}: fails in median {statistics.median(walls):.2f} s "
            f"(min {min(walls):.2f}, max {max(walls):.2f}); says: {runs[0]['lines'][0]}"
        )

    for module in IMPORTS:
        print(f"import {module}: {_import_time(module, env):.1f} s")
    breakdown = _import_breakdown("flows.score", env)
    print("import flows.score, by direct import (-X importtime, cumulative):")
    print("\n".join(f"    {name}: {seconds:.2f} s" for name, seconds in breakdown))

    try:
        if args.demo:
            demo = _timed(["demo"], env)
            print(
                f"cxr demo: first line {_fmt(demo['first'])}, first progress line "
                f"{_fmt(demo['progress'])}, whole run {_fmt(demo['total'])} (exit {demo['code']})"
            )
            if demo["code"] != 0:
                print("\n".join(demo["lines"][-20:]))
                return
        elif not args.state_dir:
            started = time.monotonic()
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--register"],
                cwd=REPO,
                env=env,
                check=True,
            )
            print(f"registration (export included): {time.monotonic() - started:.1f} s")
        for run in range(args.score_runs):
            label = "new images" if run == 0 else f"run {run + 1}, scores reused"
            if _score(args.folder, env, label) != 0:
                return
        if args.prefect_server:
            server, url = _prefect_server(env)
            try:
                _score(args.folder, {**env, "PREFECT_API_URL": url}, f"PREFECT_API_URL={url}")
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.cli", "store", "stop"], cwd=REPO, env=env, check=False
        )


if __name__ == "__main__":
    main()
