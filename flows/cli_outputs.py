"""``cxr get``, ``cxr open`` and ``cxr runs``: the outputs of runs, from the store to here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows import cli
from flows.cli import JsonOption

commands = typer.Typer()

GetWhat = Annotated[
    str,
    typer.Argument(
        help="s3://bucket/key (an object, or a prefix: every object under it), or a run name "
        "(see `cxr runs`; <flow>/<run> when two flows share it)."
    ),
]


@commands.command()
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
            cli._fail(ValueError(f"unexpected argument {dest!r} after {what} and its destination"))
        output, dest = None, output

    def fetch():
        target = outputs.resolve(cli._store(), what, output)
        where = Path(dest or ".").expanduser()
        if dest and dest.endswith(("/", os.sep)):
            where.mkdir(parents=True, exist_ok=True)  # a folder, even when it does not exist yet
        return outputs.download(target, where, overwrite=force)

    path = cli._registry_call(fetch)
    cli.console.print(str(path), highlight=False)


@commands.command("open")
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
        target = outputs.resolve(cli._store(), what, output, with_folder=True)
        return outputs.fetch_to_cache(target, get_settings().cache_dir)

    path = cli._registry_call(fetch)
    cli.console.print(str(path), highlight=False)
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


@commands.command()
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
        store = cli._store()
        found = outputs.list_runs(store, flow)[:limit]
        return store, [(run, run.outputs()) for run in found]

    store, found = cli._registry_call(load)
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
        cli.console.print(f"no runs under {store.uri(outputs.RUNS_PREFIX)} yet")
        return
    longest = max(len(cli._shown(run.name)) for run, _ in found)
    table = Table()  # the run column fits the names whole: they are what `cxr get` takes
    table.add_column("run", width=max(min(longest, cli.console.width - 40), 10), overflow="fold")
    table.add_column("flow", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("outputs", ratio=1, overflow="fold")
    for run, named in found:
        table.add_row(
            cli._shown(run.name),
            run.flow,
            f"{run.updated:%Y-%m-%d %H:%M}",
            ", ".join(named) or "-",
        )
    cli.console.print(table)
    cli.console.print(
        "download one with `cxr get <run> <output> [DEST]`, or open it with `cxr open <run> "
        "<output>`",
        highlight=False,
    )
