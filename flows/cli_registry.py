"""``cxr registry``: list, show, diff, promote, roll back and clean up registered versions."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from flows import cli
from flows.cli import JsonOption

if TYPE_CHECKING:  # rich.table takes a while to import: only when used
    from rich.table import Table

commands = typer.Typer(help="Registered model versions and aliases.", no_args_is_help=True)

AliasOption = Annotated[
    str, typer.Option(help="Alias: lowercase letters, digits and dashes (e.g. champion, staging).")
]


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
                cli._shown(move.moved_by),
                cli._shown(move.reason),
            )
    return table


@commands.command("list")
def registry_list(as_json: JsonOption = False) -> None:
    """Every version with its status, aliases and metrics; what cannot be read is named, with why.

    A version is complete, incomplete (no card, or no model file: a registration that stopped
    half-way; `cxr registry gc` removes those) or unreadable. An alias that cannot be read is
    listed on its own row.
    """
    from rich.table import Table

    rows = cli._registry_call(lambda: cli._registry().describe())
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
    cli.console.print(table)
    for row in rows:
        if row["problem"]:
            which = (
                f"alias {row['aliases'][0]}"
                if row["version"] is None
                else f"version {row['version']}"
            )
            cli.console.print(
                f"{which} ({row['status']}): {cli._shown(row['problem'])}", highlight=False
            )
    if any(row["status"].startswith("incomplete") for row in rows):
        cli.console.print(
            "incomplete versions are never loaded or aliased: `cxr registry gc` lists what it "
            "would remove, `cxr registry gc --yes` removes it",
            highlight=False,
        )


@commands.command("gc")
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
    found = cli._registry_call(lambda: cli._registry().gc(min_age=min_age, remove=yes))
    if not found:
        cli.console.print("no incomplete versions")
        return
    for item in found:
        action = "removed" if item.removed else "would remove"
        if item.kept_because:
            action = f"kept: {item.kept_because}"
        files = ", ".join(item.files)
        cli.console.print(
            f"version {item.version} ({item.status}; {files}): {action}", highlight=False
        )
    removable = sum(1 for item in found if item.kept_because is None)
    plural = "" if removable == 1 else "s"
    if yes:
        cli.console.print(f"removed {removable} incomplete version{plural}")
    elif removable:
        cli.console.print(
            f"dry run: nothing removed; `cxr registry gc --yes` removes the {removable} "
            f"version{plural} marked 'would remove'"
        )


@commands.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    as_json: JsonOption = False,
) -> None:
    """The card of a version, and the aliases that point at it with their history of moves."""
    from rich.table import Table

    from cxr_model.registry import flatten

    def load():
        models = cli._registry()
        number = models.resolve(version)
        return models.card(number), models.aliases_of(number)

    card, aliases = cli._registry_call(load)
    if as_json:
        shown = {"card": card.model_dump(), "aliases": [a.model_dump() for a in aliases]}
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    cli.console.print(
        f"[bold]{card.name} version {card.version}[/bold] "
        f"({', '.join(a.alias for a in aliases) or 'no alias'})",
        highlight=False,
    )
    fields = Table("field", "value", show_header=False)
    skipped = {"training", "name", "version"}  # training: per-epoch history, in the run's files
    for name, value in flatten(card.model_dump(exclude=skipped)).items():
        fields.add_row(name, cli._shown(value))
    cli.console.print(fields)
    if aliases:
        cli.console.print(_moves_table(aliases))


@commands.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version number (or an alias to copy).")],
    alias: AliasOption = "champion",
    reason: Annotated[str, typer.Option(help="Why, for the alias's history.")] = "promoted by hand",
) -> None:
    """Point ALIAS (default champion) at VERSION; the move is recorded in the alias's history."""

    def promote():
        models = cli._registry()
        target = models.resolve(version)
        return models.alias(alias), models.set_alias(alias, target, reason=reason)

    before, moved = cli._registry_call(promote)
    if before is not None and len(moved.history) == len(before.history):
        cli.console.print(f"{alias} already points at version {moved.version}; nothing recorded")
        return
    last = moved.history[-1]
    was = "a new alias" if last.previous_version is None else f"was {last.previous_version}"
    cli.console.print(f"{alias} → version {moved.version} ({was})")


@commands.command("rollback")
def registry_rollback(alias: AliasOption = "champion") -> None:
    """Move ALIAS back to the version it pointed to before its latest move.

    Repeated rollbacks walk further back; the rollback is recorded as a move of its own.
    """
    moved = cli._registry_call(lambda: cli._registry().rollback(alias))
    last = moved.history[-1]
    cli.console.print(
        f"{alias} → version {last.version} (rolled back from {last.previous_version})"
    )


@commands.command("diff")
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
        models = cli._registry()
        first, second = models.resolve(a), models.resolve(b)
        return first, second, models.diff(first, second, everything=everything)

    first, second, rows = cli._registry_call(compare)
    if as_json:
        shown = {"a": first, "b": second, "fields": [row.model_dump() for row in rows]}
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    if not rows:
        cli.console.print(f"versions {first} and {second} have the same card fields")
        return
    cli.console.print(_diff_table(first, second, rows, cli.console.width))


def _diff_table(first: int, second: int, rows, width: int) -> Table:
    """The diff as a table whose field names are never cut: the field column is as wide as the
    longest name while each value column keeps at least 12 characters; what is longer than its
    column wraps (folds) onto the next line instead of ending in an ellipsis."""
    from rich.table import Table

    available = width - 10  # 4 borders and 3 x 2 padding
    longest = max((len(cli._shown(row.field)) for row in rows), default=5)
    field_width = max(min(longest, available - 2 * 12), 10)
    table = Table(expand=False)
    table.add_column("field", width=field_width, overflow="fold")
    for version in (first, second):
        table.add_column(f"version {version}", ratio=1, overflow="fold")
    for row in rows:
        table.add_row(cli._shown(row.field), cli._shown(row.a), cli._shown(row.b))
    return table
