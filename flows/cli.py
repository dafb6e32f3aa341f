"""``cxr``: a thin command line over the flows. Results for people; ``--verbose`` shows the logs.

This module holds the app and what every command shares: the console, the progress lines, the
log file, one-line errors. The commands live in groups beside it (``cli_train``: demo, ingest,
train; ``cli_score``; ``cli_registry``; ``cli_outputs``: get, open, runs; ``cli_store``), each
importing the flows inside the command, so that a bad argument fails before Prefect or
TensorFlow is imported and scoring never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.models import OptionInfo

from cxr_model.safe_text import console_text

app = typer.Typer(
    help="cxr: chest x-rays → a registered COVID-vs-normal classifier, and scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
LOG_FILE: Path | None = None
QUIET_ENV = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
}
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "KERAS_BACKEND": "tensorflow",
    # a 2-core machine busy importing TensorFlow (training) needs longer than Prefect's 20 s default
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect and TensorFlow logs.")]


class _ProgressHandler(logging.Handler):
    """Prints progress lines with the seconds elapsed since the command started."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        elapsed = time.monotonic() - self.started
        console.print(
            f"  [dim]{elapsed:5.0f}s[/dim] {_shown(record.getMessage())}", highlight=False
        )


def _shown(text: object) -> str:
    """Text from data (file names, reasons) on one console line, never read as Rich markup."""
    return escape(console_text(text))


LOG_KEEP_DAYS = 14
QUIET_LOGGERS = ("httpx", "httpcore", "great_expectations._docs_decorators")
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def _log_file() -> Path:
    """Today's log file (one per day, shared by the day's commands); older than
    :data:`LOG_KEEP_DAYS` days are removed."""
    from cxr_model.config import get_settings

    folder = get_settings().state_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - LOG_KEEP_DAYS * 86400
    for old in folder.glob("cxr-*.log"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            continue  # another command removed it, or it is not ours to remove
    return folder / f"cxr-{datetime.now():%Y-%m-%d}.log"


def _configure(verbose: bool) -> None:
    """Set the environment before Prefect/TensorFlow are imported (they read it at import).

    Without ``--verbose``, today's log file under the state folder gets everything the terminal
    does not show: Python logging at INFO and above (Prefect's flow and task runs, Great
    Expectations, TensorFlow, cxr's progress lines) through a root handler, which Prefect keeps
    (it leaves the root logger alone when it already has a handler of the user's), and the
    process's stderr, where TensorFlow's native code and library warnings write.
    """
    global LOG_FILE
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    progress = logging.getLogger("cxr.progress")
    progress.setLevel(logging.INFO)
    progress.propagate = False
    if not progress.handlers:
        progress.addHandler(_ProgressHandler())
    if verbose or LOG_FILE is not None:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    LOG_FILE = _log_file()
    sys.stderr.flush()
    log_fd = os.open(LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    command = " ".join(sys.argv[1:])
    started = f"{datetime.now():%Y-%m-%d %H:%M:%S}"
    os.write(log_fd, f"\n=== {started} pid {os.getpid()}: cxr {command}\n".encode())
    os.dup2(log_fd, 2)
    os.close(log_fd)
    handler = logging.FileHandler(LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    progress.addHandler(handler)
    for name in QUIET_LOGGERS:  # a line per HTTP request or per decorated function: noise
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)


def _fail(exc: BaseException, *, details: bool = True) -> None:
    first, *more = getattr(exc, "lines", None) or [str(exc)]  # a multi-line error lists its lines
    if LOG_FILE:  # the file gets the error too, with its traceback
        logging.getLogger("cxr").error("error: %s", first, exc_info=exc if details else None)
    console.print(f"[bold red]error:[/bold red] {_shown(first)}", highlight=False)
    for line in more:
        console.print(f"  {_shown(line)}", highlight=False)
    if LOG_FILE and details:
        console.print(f"[dim]details: {LOG_FILE} (or rerun with --verbose)[/dim]", highlight=False)
    raise typer.Exit(code=1)


def _progress(message: str) -> None:
    """A progress line now (before the flow's own), with the seconds since the command started."""
    logging.getLogger("cxr.progress").info(message)


STARTING = "starting Prefect and TensorFlow (the first import takes a while)…"
SCORING_START = "starting Prefect…"  # scoring imports no TensorFlow (ONNX Runtime runs the model)


def _run(title: str, call):
    """Run a flow call with a spinner; turn its failure into one line a user can act on."""
    from flows.temporary_api import tie_temporary_api

    with console.status(title):
        try:
            # a command killed mid-run leaves no Prefect server behind
            if tie_temporary_api():
                _progress(
                    "loaded; starting a temporary Prefect API (with `make up` running, "
                    "PREFECT_API_URL=http://127.0.0.1:4200/api skips this)"
                )
            return call()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            _fail(exc)


def _ui_hint() -> str:
    api = os.environ.get("PREFECT_API_URL")
    if api:
        return f"Prefect UI: {api.removesuffix('/api')}"
    return (
        "Prefect UI: run `make ui` (prefect server start) and open http://127.0.0.1:4200 "
        "to see these runs"
    )


def _get_hint(uri: str | None, output: str) -> None:
    """How to download ``uri`` (an output under ``runs/<flow>/<run>/``) with `cxr get`."""
    parts = (uri or "").removeprefix("s3://").split("/")
    if len(parts) >= 5 and parts[1] == "runs":
        console.print(
            f"download:    cxr get {_shown(parts[3])} {output} [DEST] (all runs: cxr runs)",
            highlight=False,
        )


def given(**options: object) -> dict[str, object]:
    """The options given on the command line; one left out (None) keeps the parameter model's
    default, so each default is declared once, on the model."""
    return {name: value for name, value in options.items() if value is not None}


def default_option(text: str) -> OptionInfo:
    """An option left out by default: the parameter model's default applies (see
    :func:`given`), and its help says where that default is rather than repeating it."""
    return typer.Option(help=text, show_default=False)


JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


def _registry_call(call):
    """Run a registry operation; a failure becomes one line a user can act on."""
    _configure(False)
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
        _fail(exc)


def _store():
    from cxr_model.config import get_settings
    from cxr_model.storage import open_store

    return open_store(get_settings())


def _registry():
    from cxr_model.configured import open_registry

    return open_registry()


def _register_commands() -> None:
    """The command groups, in the order `cxr --help` lists them. They import this module for
    the shared helpers, so they are added once it is complete."""
    from flows import cli_outputs, cli_registry, cli_score, cli_store, cli_train

    app.add_typer(cli_train.commands)
    app.add_typer(cli_score.commands)
    app.add_typer(cli_outputs.commands)
    app.add_typer(cli_registry.commands, name="registry")
    app.add_typer(cli_store.commands, name="store")


if __name__ == "__main__":  # `python -m flows.cli`: run the app of the module flows.cli
    from flows.cli import app as registered

    registered()
else:
    _register_commands()
    from flows.cli_registry import _diff_table  # noqa: E402, F401 - where it was before the split
