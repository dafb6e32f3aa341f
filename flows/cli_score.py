"""``cxr score`` and ``cxr score-inbox``: score files with a registered model.

Scoring imports Prefect and ONNX Runtime, never TensorFlow.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from flows import cli
from flows.cli import Verbose

commands = typer.Typer()


def _check_input(source: str) -> str:
    """A folder to score: ``s3://bucket/prefix`` (its syntax is checked) or a local folder that
    must exist. Returns the location the flow gets."""
    if source.startswith("s3://"):
        bucket = source[len("s3://") :].partition("/")[0]
        if not bucket:
            cli._fail(ValueError(f"no bucket in {source!r}"), details=False)
        return source
    location = os.path.abspath(os.path.expanduser(source))
    if not os.path.isdir(location):
        cli._fail(
            ValueError(f"input folder {location} does not exist or is not a folder"), details=False
        )
    return location


def _print_score_summary(summary: dict, version: int | None, runtime: str | None) -> None:
    """Rows by status, the kinds of errors and rejections, and a loud line when the model's
    probabilities do not apply (mostly out of distribution, or no OOD check)."""
    from cxr_model.scoring import ScoreSummary, distribution_warning

    s = ScoreSummary(**summary)
    by = s.by_status
    errors = ", ".join(f"{reason}: {count}" for reason, count in s.errors_by_reason.items())
    rejected = ", ".join(f"{reason}: {count}" for reason, count in s.rejected_by_reason.items())
    cli.console.print(
        f"{s.files} files: {by.get('ok', 0)} ok, {s.out_of_distribution} out of distribution, "
        f"{by.get('rejected', 0)} rejected"
        + (f" ({cli._shown(rejected)})" if rejected else "")
        + f", {by.get('error', 0) + by.get('skipped', 0)} errors"
        + (f" ({cli._shown(errors)})" if errors else "")
        + f"; model version {version}"
        + (f" (run by {runtime})" if runtime else ""),
        highlight=False,
    )
    warning = distribution_warning(s)
    if warning:
        cli.console.print(f"[bold red]WARNING: {cli._shown(warning)}[/bold red]", highlight=False)


@commands.command()
def score(
    source: Annotated[
        str, typer.Argument(help="Folder to score: local path or s3://bucket/prefix.")
    ],
    model: Annotated[
        str | None, cli.default_option("Alias or version; default the champion.")
    ] = None,
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
    cli._configure(verbose)
    location = _check_input(source)
    cli._progress(f"scoring {location}; {cli.SCORING_START}")
    from flows.score import ScoreParams, score_folder

    chosen = cli.given(
        model=model,
        output=output,
        threshold=threshold,
        chunk_size=chunk_size,
        max_chunks_in_flight=in_flight,
        task_runner=task_runner,
        dask_address=dask_address,
        dask_workers=workers,
    )

    def run():
        return score_folder(ScoreParams(input=location, **chosen))

    result = cli._run(f"scoring {source}…", run)
    if result.model_version is None:  # no champion yet: nothing was scored
        cli.console.print(cli._shown(result.message))
        return
    _print_score_summary(result.summary, result.model_version, result.runtime)
    cli.console.print(
        f"{result.summary['predicted']} predicted now, {result.summary['reused']} reused, "
        f"in {result.seconds:.1f} s"
    )
    cli.console.print(
        f"predictions: {result.predictions_uri} (Parquet: {result.predictions_parquet_uri})"
    )
    cli._get_hint(result.predictions_uri, "predictions")


@commands.command("score-inbox")
def score_inbox(
    inbox: Annotated[
        str | None,
        typer.Argument(help="s3://bucket/prefix/ or folder; default s3://<bucket>/inbox/."),
    ] = None,
    model: Annotated[
        str | None, cli.default_option("Alias or version; default the champion.")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Score the files in the inbox that this model has not scored yet (what the scheduled
    score-inbox deployment runs)."""
    cli._configure(verbose)
    if inbox is not None:
        inbox = _check_input(inbox)
    cli._progress(f"scoring the inbox; {cli.SCORING_START}")
    from flows.score import InboxParams
    from flows.score import score_inbox as score_inbox_flow

    result = cli._run(
        "scoring the inbox…",
        lambda: score_inbox_flow(InboxParams(**cli.given(inbox=inbox, model=model))),
    )
    cli.console.print(cli._shown(result.message))
    if result.predictions_uri:
        cli.console.print(
            f"predictions: {result.predictions_uri} (Parquet: {result.predictions_parquet_uri})"
        )
