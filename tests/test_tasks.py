"""Task plumbing: which failures are retried, artifact keys Prefect accepts, and task modules that
import only the shared ones (scoring's without the training stack)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from botocore.exceptions import ClientError, EndpointConnectionError
from prefect.states import Failed

from cxr_model.sources import SourceError
from tasks.common import artifact_key, transient_failure


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_only_storage_and_network_trouble_is_retried():
    def retried(error: BaseException) -> bool:
        return transient_failure(None, None, Failed(data=error))

    assert retried(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert retried(client_error("InternalError", 500))
    assert retried(client_error("SlowDown", 503))
    assert not retried(client_error("AccessDenied", 403))
    assert not retried(SourceError("source folder /x does not exist"))
    assert not retried(ValueError("bad input"))


def test_artifact_keys_are_lowercase_dashes():
    assert artifact_key("Data Quality", "run_7") == "data-quality-run-7"


SHARED = {"tasks.common", "tasks.shared"}
TRAINING_STACK = ("tensorflow", "keras", "sklearn", "great_expectations", "matplotlib", "scipy")
TASKS = Path(__file__).resolve().parents[1] / "tasks"


def task_imports(path: Path) -> set[str]:
    """The ``tasks.*`` modules a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "tasks"}


def test_task_modules_import_only_the_shared_ones():
    for path in TASKS.glob("*.py"):
        allowed = {"tasks.common"} if path.stem == "shared" else SHARED
        assert task_imports(path) <= allowed, path.name


def test_the_common_task_module_needs_no_training_stack():
    held = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tasks.common, tasks.scoring; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(TRAINING_STACK)!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=TASKS.parent,
    )
    assert held.stdout.strip() == "[]"
