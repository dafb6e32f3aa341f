"""``cxr demo``, ``cxr ingest`` and ``cxr train``: images in, a registered model out.

Options left out take the defaults of the flows' parameter models (``RetrainParams`` with its
``TrainParams``, ``SplitParams`` and ``GateSettings``; ``DemoParams``), so they are declared once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows import cli
from flows.cli import Verbose
from flows.cli_score import _print_score_summary

commands = typer.Typer()

SOURCES_HELP = (
    "Where the images come from, one or more of: folder:<path> (or a bare path: "
    "{covid,normal}/ or Train|Val/{covid,normal}/); manifest:<csv> (file or uri, label, optional "
    "patient_id, source); s3://bucket/prefix (a folder layout in the store); "
    "ieee8023:[<base-url>][?<filters>] (filters: views=PA,AP findings=COVID-19 modalities=X-ray, "
    "joined with &); "
    "kaggle:[<folder-or-zip>] (?pneumonia=include keeps pneumonia)."
)


def _check_sources(sources: list[str]) -> None:
    """Fail on a bad source spec or a missing folder or file before anything heavy starts."""
    from cxr_model.sources import check_source

    for spec in sources:
        try:
            check_source(spec)
        except ValueError as exc:
            cli._fail(exc, details=False)


def _print_audit(flags: list[str]) -> None:
    if not flags:
        cli.console.print("shortcut audit:      no shortcut found")
        return
    cli.console.print(
        f"[bold red]shortcut audit:      {len(flags)} flag(s)[/bold red]", highlight=False
    )
    for flag in flags:
        cli.console.print(f"[bold red]  WARNING: {cli._shown(flag)}[/bold red]", highlight=False)


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
    cli.console.print(f"held-out sources:    {cli._shown(held + held_out.reason)}")
    at = f"at threshold {e.threshold:.2f} (chosen on Val, {e.threshold_rule})"
    cli.console.print(
        f"internal (Val):      AUC {_auc(e.auc, e.auc_ci_low, e.auc_ci_high)}; sensitivity "
        f"{_rate(e.sensitivity)}, specificity {_rate(e.specificity)} {at}"
    )
    if g.held_out is not None:
        h = g.held_out
        cli.console.print(
            f"on held-out sources: AUC {_auc(h.auc, h.auc_ci_low, h.auc_ci_high)}; sensitivity "
            f"{_rate(h.sensitivity)}, specificity {_rate(h.specificity)} at the same threshold "
            f"({h.n_covid} covid, {h.n_normal} normal)"
        )
    for row in g.within_source:
        cli.console.print(
            f"within {cli._shown(row.source)}: ".ljust(21)
            + f"AUC {_auc(row.auc, row.auc_ci_low, row.auc_ci_high)} ({row.n_covid} covid, "
            f"{row.n_normal} normal, {row.splits})"
        )
    honest = g.honest
    style = "bold red" if g.confounded else "bold"
    if honest is None:
        cli.console.print(
            f"[{style}]honest estimate:     none — no held-out source and no source with both "
            f"classes[/{style}]",
            highlight=False,
        )
    else:
        cli.console.print(
            f"[{style}]honest estimate:     {cli._shown(honest.name)} "
            f"{_auc(honest.auc, honest.auc_ci_low, honest.auc_ci_high)} (internal Val AUC "
            f"{_rate(e.auc)})[/{style}]",
            highlight=False,
        )
    cli.console.print(
        f"training:            accuracy {r.trained.train_accuracy:.2f} on Train (augmented, "
        f"weighted), {r.trained.val_accuracy:.2f} on Val, both at threshold 0.5"
    )
    reg = r.registered
    verdict = "bold green" if reg.alias == "champion" else "bold yellow"
    cli.console.print(
        f"[{verdict}]registered:          {reg.name} v{reg.version} as {reg.alias.upper()}"
        f"[/{verdict}] at {reg.uri}",
        highlight=False,
    )
    cli.console.print(f"promotion gate:      {cli._shown(reg.reason)}")
    cli.console.print(f"model card:          {reg.card_uri}")


@commands.command()
def demo(
    verbose: Verbose = False,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.", show_default=False)] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Square input size in pixels.", show_default=False)
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per step.", show_default=False)
    ] = None,
) -> None:
    """Run the whole pipeline on a generated (synthetic) sample: ingest → ... → score.

    Options left out keep the demo's training settings (the sample's, SAMPLE_TRAINING).
    """
    cli._configure(verbose)
    cli.console.print("[bold]cxr demo[/bold] on a SYNTHETIC sample (generated, not real x-rays)")
    cli._progress(cli.STARTING)
    from cxr_model.train import TrainParams
    from flows.demo import DemoParams
    from flows.demo import demo as demo_flow

    params = DemoParams()
    chosen = cli.given(epochs=epochs, image_size=image_size, batch_size=batch_size)
    params.training = TrainParams(**{**params.training.model_dump(), **chosen})
    result = cli._run("running the pipeline…", lambda: demo_flow(params))
    r = result.retrain
    cli.console.print()
    _print_retrain(r)
    cli.console.print(f"data quality report: {r.quality.report_uri}")
    cli.console.print(
        f"data docs:           {r.quality.docs_uri}  (local: file://{r.quality.docs_local})"
    )
    _print_score_summary(result.score.summary, result.score.model_version, result.score.runtime)
    cli.console.print(
        f"predictions:         {result.score.predictions_uri} "
        f"(Parquet: {result.score.predictions_parquet_uri})"
    )
    cli.console.print(cli._ui_hint())


@commands.command()
def ingest(
    sources: Annotated[list[str], typer.Argument(help=SOURCES_HELP, show_default=False)],
    verbose: Verbose = False,
) -> None:
    """Get images from SOURCES into the raw store and check them (no training)."""
    cli._configure(verbose)
    _check_sources(sources)
    cli._progress(f"{len(sources)} source(s) found; {cli.STARTING}")
    from flows.ingest import IngestParams
    from flows.ingest import ingest as ingest_flow

    report = cli._run("ingesting…", lambda: ingest_flow(IngestParams(sources=sources)))
    from rich.markdown import Markdown

    cli.console.print(Markdown(report.ingest.summary))
    cli.console.print(Markdown(report.quality.summary))
    _print_audit(report.quality.shortcut_flags)
    cli.console.print(f"data quality report: {report.quality.report_uri}")
    cli.console.print(
        f"data docs: {report.quality.docs_uri} (local: file://{report.quality.docs_local})"
    )


@commands.command()
def train(
    sources: Annotated[list[str], typer.Argument(help=SOURCES_HELP, show_default=False)],
    epochs: Annotated[int | None, cli.default_option("Training epochs.")] = None,
    image_size: Annotated[int | None, cli.default_option("Square input size in pixels.")] = None,
    batch_size: Annotated[int | None, cli.default_option("Images per step.")] = None,
    learning_rate: Annotated[float | None, cli.default_option("Adam learning rate.")] = None,
    seed: Annotated[
        int | None, cli.default_option("Seed of the training: weights, shuffling, augmentation.")
    ] = None,
    split_seed: Annotated[
        int | None, cli.default_option("Seed of the patient-grouped Train/Val split.")
    ] = None,
    val_fraction: Annotated[
        float | None, cli.default_option("Share of patients for validation.")
    ] = None,
    architecture: Annotated[
        str | None,
        cli.default_option(
            "seed_cnn (the study's), compact_cnn, densenet121, efficientnetb0 or resnet50."
        ),
    ] = None,
    cv_folds: Annotated[
        int | None,
        cli.default_option(
            "K ≥ 2: cross-validate by patient and register the K-model average; 1: not."
        ),
    ] = None,
    patience: Annotated[
        int | None, cli.default_option("Early stopping after this many epochs without progress.")
    ] = None,
    hold_out: Annotated[
        list[str] | None,
        cli.default_option(
            "A source to keep out of training and evaluate on (repeat for more; 'none': "
            "hold nothing out). Default: chosen automatically when the shortcut audit flags "
            "the data."
        ),
    ] = None,
    allow_confounded: Annotated[
        bool | None,
        cli.default_option(
            "Let the gate promote a model although the data are confounded and the "
            "held-out-source evidence is missing or weak (recorded on the card)."
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Retrain on SOURCES: get images → check → split → train → evaluate → gate → register.

    Options left out take the study's settings: the defaults of RetrainParams (flows/retrain.py)
    and of its TrainParams, SplitParams and GateSettings. --seed seeds the training,
    --split-seed the split.
    """
    cli._configure(verbose)
    _check_sources(sources)
    cli._progress(f"{len(sources)} source(s) found; {cli.STARTING}")
    from cxr_model.gate import GateSettings
    from cxr_model.split import SplitParams
    from cxr_model.train import TrainParams
    from flows.retrain import RetrainParams, retrain

    held_out = None if hold_out is None else [s for s in hold_out if s.lower() != "none"]
    params = RetrainParams(
        sources=sources,
        split=SplitParams(
            **cli.given(val_fraction=val_fraction, seed=split_seed, held_out_sources=held_out)
        ),
        gate=GateSettings(**cli.given(allow_confounded=allow_confounded)),
        training=TrainParams(
            **cli.given(
                architecture=architecture,
                patience=patience,
                epochs=epochs,
                image_size=image_size,
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=seed,
            )
        ),
        **cli.given(cv_folds=cv_folds),
    )
    r = cli._run("retraining…", lambda: retrain(params))
    _print_retrain(r)
