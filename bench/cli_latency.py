"""How long `cxr` takes to say something: bad arguments, the first progress line, fixed costs.

Measures, each as subprocess wall time from start:

- the failure of ``cxr score /nonexistent``, ``cxr ingest foo:bar`` and ``cxr train /nonexistent``
  (median of ``--repeat`` runs; the target is under 2 s);
- ``cxr demo``: its first line, its first progress line and its whole run (it registers the
  champion that the scoring below uses);
- ``cxr score <folder>`` on the 44 actualmed x-rays: first line, first progress line, and the whole
  command, against the flow's own scoring seconds (the rest is the fixed cost: imports, Prefect's
  temporary API, loading the model);
- for reference: ``import tensorflow``, ``import prefect`` and ``import flows.score`` alone.

Everything runs in a fresh state folder (its own embedded store, stopped at the end) and without
``PREFECT_API_URL`` (a temporary Prefect API per command, as a new user gets), unless you set it.

    .venv/bin/python bench/cli_latency.py [--folder ../shared/data/cxr-real/actualmed] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO.parent / "shared" / "data" / "cxr-real" / "actualmed"
PROGRESS = re.compile(r"^\s+\d+s ")


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


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--skip-demo", action="store_true", help="No demo (score with --state-dir)."
    )
    parser.add_argument(
        "--state-dir", type=Path, help="Reuse this state (its store's champion scores the folder)."
    )
    args = parser.parse_args()

    state = args.state_dir or Path(tempfile.mkdtemp(prefix="cxr-latency-"))
    env = {**os.environ, "CXR_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; state {state}")

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

    for module in ("tensorflow", "prefect", "flows.score"):
        print(f"import {module}: {_import_time(module, env):.1f} s")

    if args.skip_demo and not args.state_dir:
        return
    try:
        if not args.skip_demo:
            demo = _timed(["demo"], env)
            print(
                f"cxr demo: first line {_fmt(demo['first'])}, first progress line "
                f"{_fmt(demo['progress'])}, whole run {_fmt(demo['total'])} (exit {demo['code']})"
            )
            if demo["code"] != 0:
                print("\n".join(demo["lines"][-20:]))
                return
        scored = _timed(["score", str(args.folder)], env)
        inner = next(
            (
                float(m.group(1))
                for line in scored["lines"]
                if (m := re.search(r"in ([\d.]+) s$", line))
            ),
            None,
        )
        files = sum(1 for p in args.folder.rglob("*") if p.is_file())
        print(
            f"cxr score {args.folder} ({files} files): first line {_fmt(scored['first'])}, "
            f"first progress line {_fmt(scored['progress'])}, whole command "
            f"{_fmt(scored['total'])}, of which the flow's scoring {_fmt(inner)} "
            f"(exit {scored['code']})"
        )
        print("\n".join(f"    | {line}" for line in scored["lines"] if PROGRESS.match(line)))
        if scored["code"] != 0:
            print("\n".join(scored["lines"][-20:]))
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.cli", "store", "stop"], cwd=REPO, env=env, check=False
        )


if __name__ == "__main__":
    main()
