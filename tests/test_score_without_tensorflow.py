"""Scoring runs without TensorFlow: the flows, the CLI and Dask workers, for real.

A 32 px model with an out-of-distribution check is registered with its ONNX export. The scoring
runs happen in subprocesses in which importing TensorFlow, Keras or tf2onnx fails (a
``sitecustomize`` on ``PYTHONPATH`` refuses them, and Dask's worker processes inherit it), against
the test S3 server and the test Prefect API: ``score-folder`` on threads and on a Dask cluster of
worker processes, ``score-inbox``, and ``cxr score``. Each process then reports which of those
modules it holds (none). The predictions equal those of the same model run by Keras.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import SCORING_CARD, SCORING_SIZE, png

from cxr_model.inference import export_onnx
from cxr_model.model import seed_cnn
from cxr_model.ood import OOD_FILE, OodCheck, OodDetector, feature_extractor, thumbnails
from cxr_model.registry import CHAMPION, Registry

pytestmark = pytest.mark.integration

SIZE = SCORING_SIZE
BLOCKED = ("tensorflow", "keras", "tf2onnx", "sklearn", "scipy", "great_expectations", "matplotlib")
REPO = Path(__file__).resolve().parents[1]
BLOCKER = f"""
import sys

BLOCKED = {BLOCKED!r}


class RefuseTraining:
    \"\"\"Scoring must not need the training stack: importing it fails here.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (refused by the test)", name=name)
        return None


sys.meta_path.insert(0, RefuseTraining())
"""
SCORING = """
import json, sys
from distributed import Client, LocalCluster
from flows.score import InboxParams, ScoreParams, score_folder, score_inbox

folder, inbox = sys.argv[1], sys.argv[2]
BLOCKED = ("tensorflow", "keras", "tf2onnx", "sklearn", "scipy", "great_expectations", "matplotlib")


def held():
    return sorted({name.partition(".")[0] for name in sys.modules} & set(BLOCKED))


results = {"threads": score_folder(ScoreParams(input=folder, chunk_size=4)).model_dump()}
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
    dask = ScoreParams(
        input=folder, chunk_size=4, task_runner="dask", dask_address=cluster.scheduler_address,
        model="2",
    )
    results["dask"] = score_folder(dask).model_dump()
    with Client(cluster) as client:
        results["workers_hold"] = sorted(set().union(*client.run(held).values()))
results["inbox"] = score_inbox(InboxParams(inbox=inbox, chunk_size=4)).model_dump()
results["process_holds"] = held()
print("RESULT " + json.dumps(results))
"""


def _register_exported(models: Registry, tmp_path: Path) -> tuple[OodCheck, bytes]:
    """Versions 1 and 2 (champion 1): the same model, with its OOD check and ONNX export;
    returns the OOD check's card entry and file."""
    model = seed_cnn(image_size=SIZE)
    path = tmp_path / "model.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (40, SIZE, SIZE, 3)).astype(np.float32)
    features = np.asarray(feature_extractor(model).predict_on_batch(pixels))
    views = features[:30], thumbnails(pixels[:30])
    detector = OodDetector.fit(views, (features[30:], thumbnails(pixels[30:])))
    ood = OodCheck.of(detector.to_bytes(), detector, {})
    exported = export_onnx(model, SIZE)
    for _ in range(2):
        card = models.register(path, **SCORING_CARD, ood=ood.model_dump(), export=exported)
        models.attach(card.version, OOD_FILE, detector.to_bytes())
    models.set_alias(CHAMPION, 1)
    return ood, detector.to_bytes()


def _environment(tmp_path: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO)])
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


def _table(store, uri: str) -> pd.DataFrame:
    key = uri.removeprefix(f"s3://{store.bucket}/")
    return pd.read_csv(io.BytesIO(store.get_bytes(key)), dtype={"probability_covid": float})


def test_scoring_flows_cli_and_dask_workers_run_without_tensorflow(
    prefect_harness, settings, store, tmp_path
):
    models = Registry(store, settings.model_name, settings.cache_dir)
    ood, ood_file = _register_exported(models, tmp_path)
    folder, inbox = tmp_path / "xrays", tmp_path / "inbox"
    for where, seeds in ((folder, range(10)), (inbox, range(10, 16))):
        where.mkdir()
        for seed in seeds:
            (where / f"img-{seed:02d}.png").write_bytes(png(seed))
    env = _environment(tmp_path)

    refused = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True
    )
    assert "refused by the test" in refused.stderr  # the blocker works

    done = subprocess.run(
        [sys.executable, "-c", SCORING, str(folder), str(inbox)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line.removeprefix("RESULT "))
    assert results["process_holds"] == [] and results["workers_hold"] == []
    for name, files in (("threads", 10), ("dask", 10), ("inbox", 6)):
        summary = results[name]["summary"]
        assert (summary["files"], summary["predicted"], summary["errors"]) == (files, files, 0)
        assert summary["ood_checked"] is True  # the export's second output feeds the OOD check
    onnx_rows = _table(store, results["threads"]["predictions_uri"])
    assert onnx_rows["ood_score"].notna().all()

    cli = subprocess.run(
        [str(Path(sys.executable).with_name("cxr")), "score", str(folder), "--model", "2"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "run by onnxruntime" in cli.stdout, cli.stdout[-2000:]

    # the same model through Keras (a version without an export) gives the same predictions
    from flows.score import ScoreParams, score_folder

    keras_version = models.register(
        tmp_path / "model.keras", **SCORING_CARD, ood=ood.model_dump()
    ).version
    models.attach(keras_version, OOD_FILE, ood_file)
    by_keras = score_folder(ScoreParams(input=str(folder), model=str(keras_version)))
    keras_rows = _table(store, by_keras.predictions_uri).set_index("source_path")
    onnx_rows = onnx_rows.set_index("source_path").loc[keras_rows.index]
    difference = np.abs(onnx_rows["probability_covid"] - keras_rows["probability_covid"])
    assert difference.max() < 1e-4
    for column in ("status", "predicted_label"):
        assert onnx_rows[column].astype(str).tolist() == keras_rows[column].astype(str).tolist()
    assert np.abs(onnx_rows["ood_score"] - keras_rows["ood_score"]).max() < 1e-3


def test_the_base_install_scores_and_the_train_extra_brings_tensorflow():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=\[;! ]", requirement, maxsplit=1)[0] for requirement in requirements}

    base, train = names(project["dependencies"]), names(project["optional-dependencies"]["train"])
    assert "onnxruntime" in base
    assert not base & {"tensorflow", "keras", "tf2onnx", "scikit-learn", "great-expectations"}
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "great-expectations"} <= train
    dockerfile = (REPO / "deployments" / "docker" / "Dockerfile").read_text()
    score_stage = dockerfile.split("FROM base AS score", 1)[1].split("FROM base AS", 1)[0]
    assert "uv sync --frozen --no-dev" in score_stage and "--extra" not in score_stage
