"""Shared fixtures: a real SeaweedFS S3 server on loopback, Prefect's test harness, and a
small registered model.

The S3 server is started once per test session in a temporary folder with its own credentials;
every test that needs storage gets a fresh bucket on it. Nothing is mocked. The cards and
images these fixtures register or score are in ``helpers.py``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from helpers import SCORING_CARD, SCORING_SIZE  # noqa: E402

from cxr_model import embedded_store  # noqa: E402
from cxr_model.config import Settings  # noqa: E402
from cxr_model.registry import CHAMPION, Registry  # noqa: E402
from cxr_model.storage import ObjectStore, open_store  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real"
# Every test that stores something gets a bucket of its own, and each bucket takes at least one
# SeaweedFS volume: allow plenty, whatever the free disk space (volumes grow as written).
TEST_VOLUMES = 2000


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS ``weed mini`` on free loopback ports, with credentials required."""
    root = tmp_path_factory.mktemp("seaweedfs")
    creds = embedded_store.load_or_create_credentials(root)
    process, server = embedded_store.start_server(
        root / "data", creds, log_path=root / "server.log", detach=False, max_volumes=TEST_VOLUMES
    )
    yield server, creds
    # Its data is thrown away: a short grace, then kill (a clean stop is slow; BENCHMARKS.md).
    process.terminate()
    try:
        process.wait(timeout=2)
    except Exception:  # noqa: BLE001 - make sure it is gone either way
        process.kill()
        process.wait(timeout=20)


@pytest.fixture
def settings(s3_server, tmp_path, monkeypatch) -> Settings:
    """Settings pointing at the test server, a fresh bucket and a fresh state folder."""
    server, creds = s3_server
    bucket = f"cxr-test-{secrets.token_hex(4)}"
    env = {
        "CXR_S3_ENDPOINT_URL": server.endpoint_url,
        "CXR_BUCKET": bucket,
        "CXR_STATE_DIR": str(tmp_path / "state"),
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def store(settings) -> ObjectStore:
    return open_store(settings)


@pytest.fixture(scope="session")
def prefect_harness():
    """Flows run against a temporary Prefect API with its own SQLite database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "manifest.csv").exists():
        pytest.skip(f"real x-rays not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A saved untrained 32 px ``seed_cnn`` (``helpers.SCORING_SIZE``), shared by the session."""
    from cxr_model.model import seed_cnn  # TensorFlow only for the tests that ask for a model

    path = tmp_path_factory.mktemp("model") / "model.keras"
    seed_cnn(image_size=SCORING_SIZE).save(path)
    return path


@pytest.fixture
def registry(store, tmp_path) -> Registry:
    """An empty registry for "test-model" in this test's bucket."""
    return Registry(store, "test-model", tmp_path / "cache")


@pytest.fixture
def models(settings, store, model_file) -> Registry:
    """The registry of this test's bucket, with ``model_file`` as version 1, the champion."""
    registry = Registry(store, settings.model_name, settings.cache_dir)
    registry.register(model_file, **SCORING_CARD)
    registry.set_alias(CHAMPION, 1)
    return registry
