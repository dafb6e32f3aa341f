"""``cxr``: a thin command line over the flows. Results for people; ``--verbose`` shows the logs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cxr_model.safe_text import console_text

if TYPE_CHECKING:  # rich.markdown and rich.table take a second to import: only when used
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
    # a 2-core machine busy importing TensorFlow (training) needs longer than Prefect's 20 s default
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}

SOURCES_HELP = (
    "Where the images come from, one or more of: folder:<path> (or a bare path: "
    "{covid,normal}/ or Train|Val/{covid,normal}/); manifest:<csv> (file or uri, label, optional "
    "patient_id, source); s3://bucket/prefix (a folder layout in the store); "
    "ieee8023:[<base-url>][?<filters>] (filters: views=PA,AP findings=COVID-19 modalities=X-ray, "
    "joined with &); "
    "kaggle:[<folder-or-zip>] (?pneumonia=include keeps pneumonia)."
)
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


def _check_sources(sources: list[str]) -> None:
    """Fail on a bad source spec or a missing folder or file before anything heavy starts."""
    from cxr_model.sources import check_source

    for spec in sources:
        try:
            check_source(spec)
        except ValueError as exc:
            _fail(exc, details=False)


def _check_input(source: str) -> str:
    """A folder to score: ``s3://bucket/prefix`` (its syntax is checked) or a local folder that
    must exist. Returns the location the flow gets."""
    if source.startswith("s3://"):
        bucket = source[len("s3://") :].partition("/")[0]
        if not bucket:
            _fail(ValueError(f"no bucket in {source!r}"), details=False)
        return source
    location = os.path.abspath(os.path.expanduser(source))
    if not os.path.isdir(location):
        _fail(
            ValueError(f"input folder {location} does not exist or is not a folder"), details=False
        )
    return location


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


def _print_audit(flags: list[str]) -> None:
    if not flags:
        console.print("shortcut audit:      no shortcut found")
        return
    console.print(
        f"[bold red]shortcut audit:      {len(flags)} flag(s)[/bold red]", highlight=False
    )
    for flag in flags:
        console.print(f"[bold red]  WARNING: {_shown(flag)}[/bold red]", highlight=False)


def _auc(auc: float | None, low: float | None, high: float | None) -> str:
    text = "n/a" if auc is None else f"{auc:.2f}"
    return text if low is None or high is None else f"{text} (95% CI {low:.2f}–{high:.2f})"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _print_retrain(r) -> None:
    """What a retraining run found, in the order a reader needs it: the audit, the internal and
    honest estimates side by side, and the gate's decision with its reason."""
    e, g = r.evaluation, r.generalisation
    _print_audit(r.quality.shortcut_flags)
    held_out = r.dataset.held_out
    held = f"{', '.join(held_out.sources)} — " if held_out.sources else ""
    console.print(f"held-out sources:    {_shown(held + held_out.reason)}")
    at = f"at threshold {e.threshold:.2f} (chosen on Val, {e.threshold_rule})"
    console.print(
        f"internal (Val):      AUC {_auc(e.auc, e.auc_ci_low, e.auc_ci_high)}; sensitivity "
        f"{_rate(e.sensitivity)}, specificity {_rate(e.specificity)} {at}"
    )
    if g.held_out is not None:
        h = g.held_out
        console.print(
            f"on held-out sources: AUC {_auc(h.auc, h.auc_ci_low, h.auc_ci_high)}; sensitivity "
            f"{_rate(h.sensitivity)}, specificity {_rate(h.specificity)} at the same threshold "
            f"({h.n_covid} covid, {h.n_normal} normal)"
        )
    for row in g.within_source:
        console.print(
            f"within {_shown(row.source)}: ".ljust(21)
            + f"AUC {_auc(row.auc, row.auc_ci_low, row.auc_ci_high)} ({row.n_covid} covid, "
            f"{row.n_normal} normal, {row.splits})"
        )
    honest = g.honest
    style = "bold red" if g.confounded else "bold"
    if honest is None:
        console.print(
            f"[{style}]honest estimate:     none — no held-out source and no source with both "
            f"classes[/{style}]",
            highlight=False,
        )
    else:
        console.print(
            f"[{style}]honest estimate:     {_shown(honest.name)} "
            f"{_auc(honest.auc, honest.auc_ci_low, honest.auc_ci_high)} (internal Val AUC "
            f"{_rate(e.auc)})[/{style}]",
            highlight=False,
        )
    console.print(
        f"training:            accuracy {r.trained.train_accuracy:.2f} on Train (augmented, "
        f"weighted), {r.trained.val_accuracy:.2f} on Val, both at threshold 0.5"
    )
    reg = r.registered
    verdict = "bold green" if reg.alias == "champion" else "bold yellow"
    console.print(
        f"[{verdict}]registered:          {reg.name} v{reg.version} as {reg.alias.upper()}"
        f"[/{verdict}] at {reg.uri}",
        highlight=False,
    )
    console.print(f"promotion gate:      {_shown(reg.reason)}")
    console.print(f"model card:          {reg.card_uri}")


def _print_score_summary(summary: dict, version: int | None, runtime: str | None) -> None:
    """Rows by status, the kinds of errors and rejections, and a loud line when the model's
    probabilities do not apply (mostly out of distribution, or no OOD check)."""
    from cxr_model.scoring import ScoreSummary, distribution_warning

    s = ScoreSummary(**summary)
    by = s.by_status
    errors = ", ".join(f"{reason}: {count}" for reason, count in s.errors_by_reason.items())
    rejected = ", ".join(f"{reason}: {count}" for reason, count in s.rejected_by_reason.items())
    console.print(
        f"{s.files} files: {by.get('ok', 0)} ok, {s.out_of_distribution} out of distribution, "
        f"{by.get('rejected', 0)} rejected"
        + (f" ({_shown(rejected)})" if rejected else "")
        + f", {by.get('error', 0) + by.get('skipped', 0)} errors"
        + (f" ({_shown(errors)})" if errors else "")
        + f"; model version {version}"
        + (f" (run by {runtime})" if runtime else ""),
        highlight=False,
    )
    warning = distribution_warning(s)
    if warning:
        console.print(f"[bold red]WARNING: {_shown(warning)}[/bold red]", highlight=False)


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
    console.print("[bold]cxr demo[/bold] on a SYNTHETIC sample (generated, not real x-rays)")
    _progress(STARTING)
    from cxr_model.train import TrainParams
    from flows.demo import DemoParams
    from flows.demo import demo as demo_flow

    params = DemoParams()
    overrides = {"epochs": epochs, "image_size": image_size, "batch_size": batch_size}
    chosen = {k: v for k, v in overrides.items() if v is not None}
    params.training = TrainParams(**{**params.training.model_dump(), **chosen})
    result = _run("running the pipeline…", lambda: demo_flow(params))
    r = result.retrain
    console.print()
    _print_retrain(r)
    console.print(f"data quality report: {r.quality.report_uri}")
    console.print(
        f"data docs:           {r.quality.docs_uri}  (local: file://{r.quality.docs_local})"
    )
    _print_score_summary(result.score.summary, result.score.model_version, result.score.runtime)
    console.print(
        f"predictions:         {result.score.predictions_uri} "
        f"(Parquet: {result.score.predictions_parquet_uri})"
    )
    console.print(_ui_hint())


@app.command()
def ingest(
    sources: Annotated[list[str], typer.Argument(help=SOURCES_HELP, show_default=False)],
    verbose: Verbose = False,
) -> None:
    """Get images from SOURCES into the raw store and check them (no training)."""
    _configure(verbose)
    _check_sources(sources)
    _progress(f"{len(sources)} source(s) found; {STARTING}")
    from flows.ingest import IngestParams
    from flows.ingest import ingest as ingest_flow

    report = _run("ingesting…", lambda: ingest_flow(IngestParams(sources=sources)))
    from rich.markdown import Markdown

    console.print(Markdown(report.ingest.summary))
    console.print(Markdown(report.quality.summary))
    _print_audit(report.quality.shortcut_flags)
    console.print(f"data quality report: {report.quality.report_uri}")
    console.print(
        f"data docs: {report.quality.docs_uri} (local: file://{report.quality.docs_local})"
    )


@app.command()
def train(
    sources: Annotated[list[str], typer.Argument(help=SOURCES_HELP, show_default=False)],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    image_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    val_fraction: Annotated[float, typer.Option(help="Share of patients for validation.")] = 0.2,
    architecture: Annotated[
        str,
        typer.Option(help="seed_cnn, compact_cnn, densenet121, efficientnetb0 or resnet50."),
    ] = "seed_cnn",
    cv_folds: Annotated[
        int, typer.Option(help="K ≥ 2: cross-validate by patient and register the K-model average.")
    ] = 1,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping after this many epochs without progress.")
    ] = None,
    hold_out: Annotated[
        list[str] | None,
        typer.Option(
            help="A source to keep out of training and evaluate on (repeat for more; 'none': "
            "hold nothing out). Default: chosen automatically when the shortcut audit flags "
            "the data."
        ),
    ] = None,
    allow_confounded: Annotated[
        bool,
        typer.Option(
            help="Let the gate promote a model although the data are confounded and the "
            "held-out-source evidence is missing or weak (recorded on the card)."
        ),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Retrain on SOURCES: get images → check → split → train → evaluate → gate → register."""
    _configure(verbose)
    _check_sources(sources)
    _progress(f"{len(sources)} source(s) found; {STARTING}")
    from cxr_model.gate import GateSettings
    from cxr_model.split import SplitParams
    from cxr_model.train import TrainParams
    from flows.retrain import RetrainParams, retrain

    held_out = None if hold_out is None else [s for s in hold_out if s.lower() != "none"]
    params = RetrainParams(
        sources=sources,
        split=SplitParams(val_fraction=val_fraction, seed=seed, held_out_sources=held_out),
        gate=GateSettings(allow_confounded=allow_confounded),
        cv_folds=cv_folds,
        training=TrainParams(
            architecture=architecture,
            patience=patience,
            epochs=epochs,
            image_size=image_size,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
        ),
    )
    r = _run("retraining…", lambda: retrain(params))
    _print_retrain(r)


@app.command()
def score(
    source: Annotated[
        str, typer.Argument(help="Folder to score: local path or s3://bucket/prefix.")
    ],
    model: Annotated[str, typer.Option(help="Alias or version.")] = "champion",
    output: Annotated[str | None, typer.Option(help="Key prefix for the predictions.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the card's threshold.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Images per scoring task.")] = None,
    in_flight: Annotated[int | None, typer.Option(help="Chunks scored at once.")] = None,
    task_runner: Annotated[
        str | None,
        typer.Option(help="threads (default), or dask: a local cluster or --dask-address."),
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Scheduler of a running Dask cluster.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Workers of the local Dask cluster.")] = None,
    verbose: Verbose = False,
) -> None:
    """Score every file under SOURCE with a registered model; write a predictions CSV.

    Images this model version scored before (same bytes, any path) are not predicted again.
    """
    _configure(verbose)
    location = _check_input(source)
    _progress(f"scoring {location}; {SCORING_START}")
    from flows.score import ScoreParams, score_folder

    options = {
        "chunk_size": chunk_size,
        "max_chunks_in_flight": in_flight,
        "task_runner": task_runner,
        "dask_address": dask_address,
        "dask_workers": workers,
    }
    chosen = {name: value for name, value in options.items() if value is not None}

    def run():
        params = ScoreParams(
            input=location, model=model, output=output, threshold=threshold, **chosen
        )
        return score_folder(params)

    result = _run(f"scoring {source}…", run)
    if result.model_version is None:  # no champion yet: nothing was scored
        console.print(_shown(result.message))
        return
    _print_score_summary(result.summary, result.model_version, result.runtime)
    console.print(
        f"{result.summary['predicted']} predicted now, {result.summary['reused']} reused, "
        f"in {result.seconds:.1f} s"
    )
    console.print(
        f"predictions: {result.predictions_uri} (Parquet: {result.predictions_parquet_uri})"
    )
    _get_hint(result.predictions_uri, "predictions")


def _get_hint(uri: str | None, output: str) -> None:
    """How to download ``uri`` (an output under ``runs/<flow>/<run>/``) with `cxr get`."""
    parts = (uri or "").removeprefix("s3://").split("/")
    if len(parts) >= 5 and parts[1] == "runs":
        console.print(
            f"download:    cxr get {_shown(parts[3])} {output} [DEST] (all runs: cxr runs)",
            highlight=False,
        )


@app.command("score-inbox")
def score_inbox(
    inbox: Annotated[
        str | None,
        typer.Argument(help="s3://bucket/prefix/ or folder; default s3://<bucket>/inbox/."),
    ] = None,
    model: Annotated[str, typer.Option(help="Alias or version.")] = "champion",
    verbose: Verbose = False,
) -> None:
    """Score the files in the inbox that this model has not scored yet (what the scheduled
    score-inbox deployment runs)."""
    _configure(verbose)
    if inbox is not None:
        inbox = _check_input(inbox)
    _progress(f"scoring the inbox; {SCORING_START}")
    from flows.score import InboxParams
    from flows.score import score_inbox as score_inbox_flow

    result = _run(
        "scoring the inbox…", lambda: score_inbox_flow(InboxParams(inbox=inbox, model=model))
    )
    console.print(_shown(result.message))
    if result.predictions_uri:
        console.print(
            f"predictions: {result.predictions_uri} (Parquet: {result.predictions_parquet_uri})"
        )


def _registry():
    from cxr_model.config import get_settings
    from cxr_model.registry import Registry
    from cxr_model.storage import open_store

    settings = get_settings()
    return Registry(open_store(settings), settings.model_name, settings.cache_dir)


AliasOption = Annotated[
    str, typer.Option(help="Alias: lowercase letters, digits and dashes (e.g. champion, staging).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


def _registry_call(call):
    """Run a registry operation; a failure becomes one line a user can act on."""
    _configure(False)
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
        _fail(exc)


def _metric(value) -> str:
    """A metric for a table: three decimals, or a dash when the card has none."""
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _moves_table(aliases) -> Table:
    from rich.table import Table

    table = Table("alias", "moved at", "from", "to", "by", "reason")
    for alias in aliases:
        for move in alias.history:
            table.add_row(
                alias.alias,
                move.moved_at.replace("T", " "),
                "-" if move.previous_version is None else str(move.previous_version),
                str(move.version),
                _shown(move.moved_by),
                _shown(move.reason),
            )
    return table


@registry_app.command("list")
def registry_list(as_json: JsonOption = False) -> None:
    """Every version with its status, aliases and metrics; what cannot be read is named, with why.

    A version is complete, incomplete (no card, or no model file: a registration that stopped
    half-way; `cxr registry gc` removes those) or unreadable. An alias that cannot be read is
    listed on its own row.
    """
    from rich.table import Table

    rows = _registry_call(lambda: _registry().describe())
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(
        "version", "status", "aliases", "created", "accuracy", "AUC", "dataset", "size MB"
    )
    for row in rows:
        metrics = row["metrics"]
        table.add_row(
            "-" if row["version"] is None else str(row["version"]),
            row["status"],
            ",".join(row["aliases"]),
            (row["created_at"] or "-")[:16].replace("T", " "),
            _metric(metrics.get("accuracy")),
            _metric(metrics.get("auc")),
            row["dataset_id"] or "-",
            "-" if row["model_bytes"] is None else f"{row['model_bytes'] / 1e6:.1f}",
        )
    console.print(table)
    for row in rows:
        if row["problem"]:
            which = (
                f"alias {row['aliases'][0]}"
                if row["version"] is None
                else f"version {row['version']}"
            )
            console.print(f"{which} ({row['status']}): {_shown(row['problem'])}", highlight=False)
    if any(row["status"].startswith("incomplete") for row in rows):
        console.print(
            "incomplete versions are never loaded or aliased: `cxr registry gc` lists what it "
            "would remove, `cxr registry gc --yes` removes it",
            highlight=False,
        )


@registry_app.command("gc")
def registry_gc(
    yes: Annotated[
        bool, typer.Option("--yes", help="Remove them. Without it nothing is removed: a dry run.")
    ] = False,
    min_age_minutes: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Keep incomplete versions written less than this long ago, since a registration "
            "may still be uploading [default: 60].",
        ),
    ] = None,
) -> None:
    """List incomplete versions (a card without its model file, or a model file without its
    card) and, with --yes, remove them. Versions that an alias points at or has in its history,
    and recent ones, are kept and the reason shown."""
    from datetime import timedelta

    from cxr_model.registry import GC_MIN_AGE

    min_age = GC_MIN_AGE if min_age_minutes is None else timedelta(minutes=min_age_minutes)
    found = _registry_call(lambda: _registry().gc(min_age=min_age, remove=yes))
    if not found:
        console.print("no incomplete versions")
        return
    for item in found:
        action = "removed" if item.removed else "would remove"
        if item.kept_because:
            action = f"kept: {item.kept_because}"
        files = ", ".join(item.files)
        console.print(f"version {item.version} ({item.status}; {files}): {action}", highlight=False)
    removable = sum(1 for item in found if item.kept_because is None)
    plural = "" if removable == 1 else "s"
    if yes:
        console.print(f"removed {removable} incomplete version{plural}")
    elif removable:
        console.print(
            f"dry run: nothing removed; `cxr registry gc --yes` removes the {removable} "
            f"version{plural} marked 'would remove'"
        )


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    as_json: JsonOption = False,
) -> None:
    """The card of a version, and the aliases that point at it with their history of moves."""
    from rich.table import Table

    from cxr_model.registry import flatten

    def load():
        models = _registry()
        number = models.resolve(version)
        return models.card(number), models.aliases_of(number)

    card, aliases = _registry_call(load)
    if as_json:
        shown = {"card": card.model_dump(), "aliases": [a.model_dump() for a in aliases]}
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    console.print(
        f"[bold]{card.name} version {card.version}[/bold] "
        f"({', '.join(a.alias for a in aliases) or 'no alias'})",
        highlight=False,
    )
    fields = Table("field", "value", show_header=False)
    skipped = {"training", "name", "version"}  # training: per-epoch history, in the run's files
    for name, value in flatten(card.model_dump(exclude=skipped)).items():
        fields.add_row(name, _shown(value))
    console.print(fields)
    if aliases:
        console.print(_moves_table(aliases))


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version number (or an alias to copy).")],
    alias: AliasOption = "champion",
    reason: Annotated[str, typer.Option(help="Why, for the alias's history.")] = "promoted by hand",
) -> None:
    """Point ALIAS (default champion) at VERSION; the move is recorded in the alias's history."""

    def promote():
        models = _registry()
        target = models.resolve(version)
        return models.alias(alias), models.set_alias(alias, target, reason=reason)

    before, moved = _registry_call(promote)
    if before is not None and len(moved.history) == len(before.history):
        console.print(f"{alias} already points at version {moved.version}; nothing recorded")
        return
    last = moved.history[-1]
    was = "a new alias" if last.previous_version is None else f"was {last.previous_version}"
    console.print(f"{alias} → version {moved.version} ({was})")


@registry_app.command("rollback")
def registry_rollback(alias: AliasOption = "champion") -> None:
    """Move ALIAS back to the version it pointed to before its latest move.

    Repeated rollbacks walk further back; the rollback is recorded as a move of its own.
    """
    moved = _registry_call(lambda: _registry().rollback(alias))
    last = moved.history[-1]
    console.print(f"{alias} → version {last.version} (rolled back from {last.previous_version})")


@registry_app.command("diff")
def registry_diff(
    a: Annotated[str, typer.Argument(help="Version number or alias.")],
    b: Annotated[str, typer.Argument(help="Version number or alias.")],
    everything: Annotated[
        bool, typer.Option("--all", help="Show equal fields too, not only differences.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Two versions' cards side by side: metrics, parameters, dataset, model, code, libraries."""

    def compare():
        models = _registry()
        first, second = models.resolve(a), models.resolve(b)
        return first, second, models.diff(first, second, everything=everything)

    first, second, rows = _registry_call(compare)
    if as_json:
        shown = {"a": first, "b": second, "fields": [row.model_dump() for row in rows]}
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    if not rows:
        console.print(f"versions {first} and {second} have the same card fields")
        return
    console.print(_diff_table(first, second, rows, console.width))


def _diff_table(first: int, second: int, rows, width: int) -> Table:
    """The diff as a table whose field names are never cut: the field column is as wide as the
    longest name while each value column keeps at least 12 characters; what is longer than its
    column wraps (folds) onto the next line instead of ending in an ellipsis."""
    from rich.table import Table

    available = width - 10  # 4 borders and 3 x 2 padding
    longest = max((len(_shown(row.field)) for row in rows), default=5)
    field_width = max(min(longest, available - 2 * 12), 10)
    table = Table(expand=False)
    table.add_column("field", width=field_width, overflow="fold")
    for version in (first, second):
        table.add_column(f"version {version}", ratio=1, overflow="fold")
    for row in rows:
        table.add_row(_shown(row.field), _shown(row.a), _shown(row.b))
    return table


def _store():
    from cxr_model.config import get_settings
    from cxr_model.storage import open_store

    return open_store(get_settings())


GetWhat = Annotated[
    str,
    typer.Argument(
        help="s3://bucket/key (an object, or a prefix: every object under it), or a run name "
        "(see `cxr runs`; <flow>/<run> when two flows share it)."
    ),
]


@app.command()
def get(
    what: GetWhat,
    output: Annotated[
        str | None,
        typer.Argument(
            help="After s3://...: where to save it (default: here). After a run name: "
            "predictions, predictions-parquet, card, report, quality, data-docs, evaluation, "
            "training, model, or a key under the run's prefix (e.g. evaluation/roc.png)."
        ),
    ] = None,
    dest: Annotated[
        str | None, typer.Argument(help="After a run name and output: where to save it.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing local files.")] = False,
) -> None:
    """Download an output of a run from the store to a local path; print where it went."""
    from cxr_model import outputs

    if what.startswith("s3://"):
        if dest is not None:
            _fail(ValueError(f"unexpected argument {dest!r} after {what} and its destination"))
        output, dest = None, output

    def fetch():
        target = outputs.resolve(_store(), what, output)
        where = Path(dest or ".").expanduser()
        if dest and dest.endswith(("/", os.sep)):
            where.mkdir(parents=True, exist_ok=True)  # a folder, even when it does not exist yet
        return outputs.download(target, where, overwrite=force)

    path = _registry_call(fetch)
    console.print(str(path), highlight=False)


@app.command("open")
def open_output(
    what: GetWhat,
    output: Annotated[
        str | None,
        typer.Argument(help="After a run name: the output (as for `cxr get`)."),
    ] = None,
) -> None:
    """Fetch an output into the local cache, print its path, and open it with the system's
    opener when there is one (an HTML report comes with its folder: plots, styles)."""
    from cxr_model import outputs
    from cxr_model.config import get_settings

    def fetch():
        target = outputs.resolve(_store(), what, output, with_folder=True)
        return outputs.fetch_to_cache(target, get_settings().cache_dir)

    path = _registry_call(fetch)
    console.print(str(path), highlight=False)
    _launch(path)


def _launch(path: Path) -> bool:
    """Open ``path`` with the platform's opener if it has one and a display; never fails."""
    import shutil

    if sys.platform == "darwin":
        opener = shutil.which("open")
    elif sys.platform.startswith("win"):
        opener = "start"
    else:
        has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        opener = shutil.which("xdg-open") if has_display else None
    if not opener:
        return False
    try:
        typer.launch(str(path))
    except Exception:  # noqa: BLE001 - the path is printed; opening it is a convenience
        return False
    return True


@app.command()
def runs(
    flow: Annotated[
        str | None, typer.Option(help="Only this flow's runs: retrain, score, ingest, demo.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to list.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Recent runs, newest first, with the outputs `cxr get <run> <output>` downloads."""
    from rich.table import Table

    from cxr_model import outputs

    def load():
        store = _store()
        found = outputs.list_runs(store, flow)[:limit]
        return store, [(run, run.outputs()) for run in found]

    store, found = _registry_call(load)
    if as_json:
        shown = [
            {
                "flow": run.flow,
                "run": run.name,
                "updated": run.updated.isoformat(),
                "prefix": store.uri(run.prefix),
                "outputs": {name: store.uri(key) for name, key in named.items()},
            }
            for run, named in found
        ]
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    if not found:
        console.print(f"no runs under {store.uri(outputs.RUNS_PREFIX)} yet")
        return
    longest = max(len(_shown(run.name)) for run, _ in found)
    table = Table()  # the run column fits the names whole: they are what `cxr get` takes
    table.add_column("run", width=max(min(longest, console.width - 40), 10), overflow="fold")
    table.add_column("flow", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("outputs", ratio=1, overflow="fold")
    for run, named in found:
        table.add_row(
            _shown(run.name),
            run.flow,
            f"{run.updated:%Y-%m-%d %H:%M}",
            ", ".join(named) or "-",
        )
    console.print(table)
    console.print(
        "download one with `cxr get <run> <output> [DEST]`, or open it with `cxr open <run> "
        "<output>`",
        highlight=False,
    )


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
