"""The scoring flows: resolve the model → score the files in chunks → merge the predictions.

``score-folder`` scores every file under a folder or ``s3://`` prefix. ``score-inbox`` scores the
files under an inbox prefix whose content the chosen model (the champion by default) has not
scored yet, and leaves the others out of its table. Both work the same way:

- The listing is streamed into chunks of ``chunk_size`` files, one ``score-chunk`` task each, with
  at most ``max_chunks_in_flight`` chunks submitted and unfinished at a time (so memory stays flat
  however large the folder). Each chunk writes its rows as it finishes, and reuses the scores
  stored for contents the model has seen before (see :mod:`cxr_model.scoring`); a rerun predicts
  nothing twice, and a killed run resumes where it stopped.
- Where the chunk tasks run is ``task_runner``: ``threads`` (default) on the flow's own thread
  pool, in this process; ``dask`` on a Dask cluster through prefect-dask, either a temporary
  in-process cluster of ``dask_workers`` workers (threads, which share this process's settings
  and loaded model) or the running cluster at ``dask_address``, whose workers need the same
  ``CXR_*``/``AWS_*`` environment and ``PREFECT_API_URL``. A flow's task runner is fixed when the
  flow starts, so with Dask the chunks run in a ``score-chunks`` subflow given the Dask runner
  (``flow.with_options``); threads need no subflow, which saves starting and winding down a
  flow run (about a second, most of it Prefect waiting for the run's heartbeat thread). The
  parameter works the same from the CLI, a deployment or Python.
- A run with files that could not be scored completes; its summary artifact and its final state
  message say how many, and why.
- The input is checked before the model is resolved, so a missing folder is reported as such.
  With no champion yet (a new stack, before its first retraining has passed the gate) and no
  version asked for, nothing is scored: the run ends Completed, named ``Skipped``, with a state
  message that says how to get a champion, and the inbox's files wait for the next run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Literal

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, field_validator, model_validator

from cxr_model.config import INBOX_PREFIX
from cxr_model.registry import CHAMPION
from cxr_model.score_report import parquet_key_for
from cxr_model.scoring import REJECTED, ScoreSummary, chunked, distribution_warning, list_inputs
from cxr_model.windowed import in_order
from flows.run_names import timestamped
from tasks.common import run_prefix, say, store
from tasks.scoring import (
    ChunkResult,
    ModelChoice,
    check_input,
    publish_predictions,
    resolve_model,
    score_chunk,
)

MAX_CHUNKS_IN_FLIGHT = 1_000
NO_CHAMPION = (
    "no champion yet: nothing scored, the files are left for a later run. Train one with "
    "`cxr train folder:<images>` (or run the nightly-retrain deployment), or promote a "
    "registered version with `cxr registry promote <version>` (`cxr registry list` shows them)"
)

if TYPE_CHECKING:  # Dask takes a second to import: only for runs that use it
    from prefect_dask import DaskTaskRunner


class ScoringOptions(BaseModel):
    """How to score: which model, where the predictions go, and how the work is spread."""

    model: str = Field(
        default=CHAMPION, description="Model alias (champion, ...) or version number."
    )
    output: str | None = Field(
        default=None,
        description="Key prefix for the predictions in the cxr bucket; default runs/score/<run name>.",
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Decision threshold; default the model card's."
    )
    chunk_size: int = Field(default=256, ge=1, le=10_000, description="Images per scoring task.")
    max_chunks_in_flight: int = Field(
        default=4,
        ge=1,
        le=MAX_CHUNKS_IN_FLIGHT,
        description="Chunks scored at once (bounds memory).",
    )
    task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="Where chunk tasks run: threads of this process, or a Dask cluster.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of a running Dask cluster (tcp://host:8786); default a temporary "
        "local cluster.",
    )
    dask_workers: int = Field(
        default=2, ge=1, le=256, description="Workers of the temporary local Dask cluster."
    )

    @field_validator("output")
    @classmethod
    def _key_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        prefix = value.strip().strip("/")
        if not prefix or prefix.startswith("s3:"):
            raise ValueError(
                f"output {value!r} must be a key prefix inside the cxr bucket, e.g. runs/score/nightly"
            )
        return prefix

    @model_validator(mode="after")
    def _address_needs_dask(self) -> ScoringOptions:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError("dask_address is used only with task_runner='dask'")
        return self


class ScoreParams(ScoringOptions):
    """A scoring request, as the CLI and the Prefect UI form fill it in."""

    input: str = Field(description="Folder to score: a local path or s3://bucket/prefix.")

    @field_validator("input")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must name a folder or an s3://bucket/prefix to score")
        return value.strip()


class InboxParams(ScoringOptions):
    """A request to score what is new in an inbox."""

    inbox: str | None = Field(
        default=None,
        description="Inbox to score: s3://bucket/prefix/ or a folder; default s3://<bucket>/inbox/.",
    )


class ScoreResult(BaseModel):
    """Where a scoring run's predictions are, and what it did (no version and no predictions
    when there was no champion to score with)."""

    model_version: int | None
    runtime: str | None = None  # what ran the model: onnxruntime, or keras for an old version
    predictions_uri: str | None
    predictions_parquet_uri: str | None
    summary: dict
    seconds: float
    message: str


def _input_folder() -> str:
    """The last part of the scored folder's path, for the run's name."""
    params = flow_run.parameters.get("params")
    location = (
        params.input if isinstance(params, ScoreParams) else str((params or {}).get("input", ""))
    )
    return PurePosixPath(location.rstrip("/")).name or "input"


def _chunks_run_name() -> str:
    return f"{PurePosixPath(flow_run.parameters['prefix']).name}-chunks"


def dask_runner_for(options: ScoringOptions) -> DaskTaskRunner:
    """The Dask task runner ``options`` ask for (see the module docstring)."""
    from prefect_dask import DaskTaskRunner

    if options.dask_address:
        return DaskTaskRunner(address=options.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": options.dask_workers,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": None,
        }
    )


def submit_chunks(
    location: str,
    model: ModelChoice,
    prefix: str,
    chunk_size: int,
    in_flight: int,
    run: str,
    only_new: bool,
) -> list[ChunkResult]:
    """Score the files under ``location`` chunk by chunk on the current flow's task runner,
    ``in_flight`` chunks at a time."""
    chunks = chunked(list_inputs(location, store()), chunk_size)
    submitted = (
        score_chunk.submit(paths, model, f"{prefix}/chunks/{number:05d}.csv", run, only_new)
        for number, paths in enumerate(chunks)
    )
    return list(in_order(submitted, in_flight))


@flow(name="score-chunks", flow_run_name=_chunks_run_name)
def score_chunks(
    location: str,
    model: ModelChoice,
    prefix: str,
    chunk_size: int,
    in_flight: int,
    run: str,
    only_new: bool,
) -> list[ChunkResult]:
    """:func:`submit_chunks` in a subflow, on the task runner given by ``with_options``."""
    return submit_chunks(location, model, prefix, chunk_size, in_flight, run, only_new)


def _message(summary: ScoreSummary, model: ModelChoice) -> str:
    """The final state message: what was scored, and how many files could not be."""
    text = f"scored {summary.scored} of {summary.files} files with {model.name} v{model.version}"
    warning = distribution_warning(summary)
    if warning:
        text = f"WARNING: {warning}; {text}"
    if summary.out_of_distribution:
        text += f"; {summary.out_of_distribution} out of distribution (no label)"
    rejected = summary.by_status.get(REJECTED, 0)
    if rejected:
        text += f"; {rejected} rejected by the image checks"
    if summary.errors:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors_by_reason.items()))
        plural = "" if summary.errors == 1 else "s"
        text += f"; {summary.errors} error{plural} ({reasons})"
    if summary.skipped:
        text += f"; {summary.skipped} skipped as already scored"
    return text + f"; {summary.predicted} predicted now, {summary.reused} reused"


def _skipped(seconds: float) -> State:
    """The run's end when there is no champion to score with.

    Completed, not Failed: nothing is wrong with the input or the stack, and failing every few
    minutes until the first champion would bury real failures (and trigger their automation).
    Not Cancelled either: nobody stopped it, and Cancelled is what the inbox's concurrency limit
    gives a run that collided with another. Named ``Skipped`` so the run list shows it.
    """
    say(NO_CHAMPION)
    result = ScoreResult(
        model_version=None,
        predictions_uri=None,
        predictions_parquet_uri=None,
        summary=asdict(ScoreSummary()),
        seconds=seconds,
        message=NO_CHAMPION,
    )
    return Completed(name="Skipped", message=NO_CHAMPION, data=result)


def _score(location: str, options: ScoringOptions, title: str, only_new: bool) -> State:
    """Check the input → resolve the model → score the chunks on the chosen runner → merge;
    a Completed state (named Skipped when there is no champion yet)."""
    started = time.monotonic()
    check_input(location)
    model = resolve_model(options.model, options.threshold)
    if model is None:
        return _skipped(time.monotonic() - started)
    prefix = options.output or run_prefix("score")
    work = (
        location,
        model,
        prefix,
        options.chunk_size,
        options.max_chunks_in_flight,
        str(flow_run.get_id()),
        only_new,
    )
    if options.task_runner == "dask":
        chunks = score_chunks.with_options(task_runner=dask_runner_for(options))(*work)
    else:
        chunks = submit_chunks(*work)
    output_key = f"{prefix}/predictions.csv"
    seconds = time.monotonic() - started
    summary = publish_predictions(chunks, model, output_key, title, seconds)
    result = ScoreResult(
        model_version=model.version,
        runtime=model.runtime,
        predictions_uri=store().uri(output_key),
        predictions_parquet_uri=store().uri(parquet_key_for(output_key)),
        summary=asdict(summary),
        seconds=seconds,
        message=_message(summary, model),
    )
    # A Completed state carries the message to the run's final state; callers get ``result``.
    return Completed(message=result.message, data=result)


# Threads start as chunks are submitted (max_chunks_in_flight at a time), not up front.
CHUNK_THREADS = ThreadPoolTaskRunner(max_workers=MAX_CHUNKS_IN_FLIGHT)


@flow(
    name="score-folder",
    flow_run_name=timestamped("score", _input_folder),
    task_runner=CHUNK_THREADS,
)
def score_folder(params: ScoreParams) -> ScoreResult:
    """Score every file under ``params.input`` with a registered model."""
    return _score(params.input, params, f"Scored {params.input}", only_new=False)


@flow(name="score-inbox", flow_run_name=timestamped("score-inbox"), task_runner=CHUNK_THREADS)
def score_inbox(params: InboxParams | None = None) -> ScoreResult:
    """Score the files in the inbox that the model has not scored yet."""
    params = params or InboxParams()
    inbox = params.inbox or store().uri(INBOX_PREFIX)
    return _score(inbox, params, f"Scored new files in {inbox}", only_new=True)
