"""Fast feedback and logs that help: a bad argument fails before TensorFlow or Prefect is
imported, and the `details:` log file holds the command's Prefect, GX and TensorFlow logs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cxr_model.sources import SourceError, check_source

REPO = Path(__file__).resolve().parents[1]

# Runs a `cxr` command in-process, then reports which heavy modules it imported.
PROBE = textwrap.dedent(
    """
    import sys
    from flows.cli import app
    try:
        app(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
    heavy = sorted(m for m in ("tensorflow", "keras", "prefect", "great_expectations")
                   if m in sys.modules)
    print("EXIT", code, "HEAVY", ",".join(heavy) or "-")
    """
)


def _probe(tmp_path: Path, *args: str) -> tuple[str, str]:
    env = {**os.environ, "CXR_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = done.stdout.strip().splitlines()[-1]
    return done.stdout, last


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["score", "/nonexistent"], "input folder /nonexistent does not exist"),
        (["score-inbox", "/nonexistent"], "input folder /nonexistent does not exist"),
        (["ingest", "foo:bar"], "unknown source kind 'foo'"),
        (["train", "/nonexistent"], "source folder /nonexistent does not exist"),
        (["train", "manifest:/nonexistent.csv"], "manifest /nonexistent.csv does not exist"),
        (["ingest", "kaggle:/nonexistent.zip"], "Kaggle source /nonexistent.zip does not exist"),
        (["ingest", "s3://"], "no bucket"),
    ],
)
def test_a_bad_argument_fails_before_tensorflow_or_prefect_is_imported(
    tmp_path, args, says
) -> None:
    printed, last = _probe(tmp_path, *args)

    assert says in printed
    assert last == "EXIT 1 HEAVY -"


def test_check_source_accepts_what_exists_and_names_what_does_not(tmp_path) -> None:
    (tmp_path / "covid").mkdir()
    (tmp_path / "m.csv").write_text("file,label\n")
    for spec in (str(tmp_path), f"folder:{tmp_path}", f"manifest:{tmp_path}/m.csv", "s3://b/p"):
        check_source(spec)
    check_source("ieee8023:")  # remote: only the syntax is checked here
    with pytest.raises(SourceError, match="is not an http"):
        check_source("ieee8023:ftp://example.org")
    with pytest.raises(SourceError, match=f"source folder {tmp_path}/nope does not exist"):
        check_source(f"folder:{tmp_path}/nope")


LOGGING_PROBE = textwrap.dedent(
    """
    import logging, sys, warnings
    from flows import cli
    cli._configure(False)
    import prefect  # configures logging at import, as the flows do
    logging.getLogger("prefect.flow_runs").info("flow run says hello")
    logging.getLogger("great_expectations.core").warning("gx says hello")
    logging.getLogger("tensorflow").warning("tf says hello")
    logging.getLogger("cxr.progress").info("progress says hello")
    logging.getLogger("httpx").info("HTTP Request: POST /api/logs/")
    try:
        cli._fail(RuntimeError("the flow failed"))
    except BaseException:
        pass
    warnings.warn("a library warning")
    print(cli.LOG_FILE)
    """
)


@pytest.mark.slow
def test_the_details_log_holds_prefect_gx_and_tensorflow_logs_one_file_a_day(tmp_path) -> None:
    env = {**os.environ, "CXR_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    files = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", LOGGING_PROBE],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout
        files.append(Path(done.stdout.strip().splitlines()[-1]))

    assert files[0] == files[1]  # one file a day, not one per command
    assert sorted(p.name for p in (tmp_path / "state" / "logs").iterdir()) == [files[0].name]
    log = files[0].read_text()
    for said in ("flow run says hello", "gx says hello", "tf says hello", "progress says hello"):
        assert log.count(said) == 2, log
    assert log.count("a library warning") == 2
    assert log.count("ERROR cxr: error: the flow failed") == 2
    assert log.count("RuntimeError: the flow failed") == 2  # with its traceback
    assert "HTTP Request" not in log  # one line per HTTP request is noise
    assert log.count("=== ") == 2  # each command starts with a header line
