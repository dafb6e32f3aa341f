"""``cxr``: a thin command line over the flows. Results for people; ``--verbose`` shows the logs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

app = typer.Typer(
    help="cxr: chest x-rays → a registered COVID-vs-normal classifier, and scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
registry_app = typer.Typer(help="Registered model versions and aliases.", no_args_is_help=True)
store_app = typer.Typer(help="The embedded S3 store.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
app.add_typer(store_app, name="store")
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
    # a 2-core machine busy importing TensorFlow needs longer than Prefect's 20 s default
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
        console.print(f"  [dim]{elapsed:5.0f}s[/dim] {record.getMessage()}", highlight=False)


def _log_file() -> Path:
    from cxr_model.config import get_settings

    folder = get_settings().state_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"cxr-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"


def _configure(verbose: bool) -> None:
    """Set the environment before Prefect/TensorFlow are imported (they read it at import).

    Without ``--verbose`` the process's stderr, where TensorFlow's native code and library
    warnings write, goes to a log file under the state folder instead of the terminal.
    """
    global LOG_FILE
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    if not verbose:
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        LOG_FILE = _log_file()
        sys.stderr.flush()
        log_fd = os.open(LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    progress = logging.getLogger("cxr.progress")
    progress.setLevel(logging.INFO)
    progress.propagate = False
    if not progress.handlers:
        progress.addHandler(_ProgressHandler())


def _fail(exc: BaseException) -> None:
    console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    if LOG_FILE:
        console.print(f"[dim]details: {LOG_FILE} (or rerun with --verbose)[/dim]", highlight=False)
    raise typer.Exit(code=1)


def _run(title: str, call):
    """Run a flow call with a spinner; turn its failure into one line a user can act on."""
    with console.status(title):
        try:
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


@app.command()
def demo(
    verbose: Verbose = False,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (demo: 15).")] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size in px (demo: 64; study: 224).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (demo: 16).")] = None,
) -> None:
    """Run the whole pipeline on a generated (synthetic) sample: ingest → ... → score."""
    _configure(verbose)
    from cxr_model.train import TrainParams
    from flows.demo import DemoParams
    from flows.demo import demo as demo_flow

    params = DemoParams()
    overrides = {"epochs": epochs, "image_size": image_size, "batch_size": batch_size}
    chosen = {k: v for k, v in overrides.items() if v is not None}
    params.training = TrainParams(**{**params.training.model_dump(), **chosen})
    console.print("[bold]cxr demo[/bold] on a SYNTHETIC sample (generated, not real x-rays)")
    result = _run("running the pipeline…", lambda: demo_flow(params))
    r = result.retrain
    console.print()
    console.print(f"train accuracy:      {r.trained.train_accuracy:.3f}")
    console.print(f"validation accuracy: {r.trained.val_accuracy:.3f}")
    console.print(
        f"registered:          {r.registered.name} version {r.registered.version} "
        f"(alias {r.registered.alias}) at {r.registered.uri}"
    )
    console.print(f"data quality report: {r.quality.report_uri}")
    console.print(
        f"data docs:           {r.quality.docs_uri}  (local: file://{r.quality.docs_local})"
    )
    console.print(
        f"evaluation:          AUC {r.evaluation.auc}, sensitivity {r.evaluation.sensitivity}, "
        f"specificity {r.evaluation.specificity}"
    )
    console.print(
        f"predictions:         {result.score.predictions_uri} "
        f"({result.score.summary['scored']} scored, {result.score.summary['errors']} errors)"
    )
    console.print(_ui_hint())


@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="folder:<path> or manifest:<csv> (a bare path is a folder).")
    ],
    verbose: Verbose = False,
) -> None:
    """Get images from SOURCES into the raw store and check them (no training)."""
    _configure(verbose)
    from flows.ingest import IngestParams
    from flows.ingest import ingest as ingest_flow

    report = _run("ingesting…", lambda: ingest_flow(IngestParams(sources=sources)))
    console.print(Markdown(report.ingest.summary))
    console.print(Markdown(report.quality.summary))
    console.print(f"data quality report: {report.quality.report_uri}")
    console.print(
        f"data docs: {report.quality.docs_uri} (local: file://{report.quality.docs_local})"
    )


@app.command()
def train(
    sources: Annotated[
        list[str], typer.Argument(help="folder:<path> or manifest:<csv> (a bare path is a folder).")
    ],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    image_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    val_fraction: Annotated[float, typer.Option(help="Share of patients for validation.")] = 0.2,
    verbose: Verbose = False,
) -> None:
    """Retrain on SOURCES: get images → check → split → train → evaluate → register."""
    _configure(verbose)
    from cxr_model.split import SplitParams
    from cxr_model.train import TrainParams
    from flows.retrain import RetrainParams, retrain

    params = RetrainParams(
        sources=sources,
        split=SplitParams(val_fraction=val_fraction, seed=seed),
        training=TrainParams(
            epochs=epochs,
            image_size=image_size,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
        ),
    )
    r = _run("retraining…", lambda: retrain(params))
    console.print(
        f"train accuracy {r.trained.train_accuracy:.3f}, validation accuracy "
        f"{r.trained.val_accuracy:.3f}, AUC {r.evaluation.auc}"
    )
    console.print(
        f"registered {r.registered.name} version {r.registered.version} "
        f"(alias {r.registered.alias}) at {r.registered.uri}"
    )


@app.command()
def score(
    source: Annotated[
        str, typer.Argument(help="Folder to score: local path or s3://bucket/prefix.")
    ],
    model: Annotated[str, typer.Option(help="Alias or version.")] = "champion",
    output: Annotated[str | None, typer.Option(help="Key prefix for the predictions.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the card's threshold.")] = None,
    verbose: Verbose = False,
) -> None:
    """Score every file under SOURCE with a registered model; write a predictions CSV."""
    _configure(verbose)
    from flows.score import ScoreParams, score_folder

    location = source if source.startswith("s3://") else os.path.abspath(source)
    params = ScoreParams(input=location, model=model, output=output, threshold=threshold)
    result = _run(f"scoring {source}…", lambda: score_folder(params))
    s = result.summary
    reasons = ", ".join(f"{reason}: {count}" for reason, count in s["errors_by_reason"].items())
    console.print(
        f"{s['files']} files found, {s['scored']} scored, {s['errors']} errors"
        + (f" ({reasons})" if reasons else "")
        + f"; model version {result.model_version}"
    )
    console.print(f"predictions: {result.predictions_uri}")


def _registry():
    from cxr_model.config import get_settings
    from cxr_model.registry import Registry
    from cxr_model.storage import open_store

    settings = get_settings()
    return Registry(open_store(settings), settings.model_name, settings.cache_dir)


@registry_app.command("list")
def registry_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Every registered version with its aliases and metrics."""
    _configure(False)
    try:
        rows = _registry().describe()
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("version", "aliases", "created", "accuracy", "AUC", "dataset", "size MB")
    for row in rows:
        metrics = row["metrics"]
        table.add_row(
            str(row["version"]),
            ",".join(row["aliases"]),
            row["created_at"][:16].replace("T", " "),
            f"{metrics.get('accuracy', 0):.3f}",
            str(metrics.get("auc")),
            row["dataset_id"],
            f"{row['model_bytes'] / 1e6:.1f}",
        )
    console.print(table)


@registry_app.command("show")
def registry_show(version: Annotated[str, typer.Argument(help="Version number or alias.")]) -> None:
    """The full card of a version."""
    _configure(False)
    try:
        models = _registry()
        card = models.card(models.resolve(version))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    sys.stdout.write(card.model_dump_json(indent=2) + "\n")


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version number.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
) -> None:
    """Point ALIAS (default champion) at VERSION."""
    _configure(False)
    try:
        models = _registry()
        moved = models.set_alias(alias, models.resolve(version), reason="promoted by hand")
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    console.print(f"{alias} → version {moved.version} (was {moved.history[-1].previous_version})")


@store_app.command("status")
def store_status() -> None:
    """Where the embedded store listens, if it runs."""
    from cxr_model import embedded_store
    from cxr_model.config import get_settings

    server = embedded_store.status(get_settings().state_dir)
    console.print(
        f"running at {server.endpoint_url} (pid {server.pid})" if server else "not running"
    )


@store_app.command("stop")
def store_stop() -> None:
    """Stop the embedded store (its data stays)."""
    from cxr_model import embedded_store
    from cxr_model.config import get_settings

    stopped = embedded_store.stop(get_settings().state_dir)
    console.print("stopped" if stopped else "was not running")


if __name__ == "__main__":
    app()
