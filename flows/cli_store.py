"""``cxr store``: the embedded S3 store's status, and stopping it."""

from __future__ import annotations

import typer

from flows import cli

commands = typer.Typer(help="The embedded S3 store.", no_args_is_help=True)


@commands.command("status")
def store_status() -> None:
    """Where the embedded store listens, if it runs."""
    from cxr_model import embedded_store
    from cxr_model.config import get_settings

    server = embedded_store.status(get_settings().state_dir)
    cli.console.print(
        f"running at {server.endpoint_url} (pid {server.pid})" if server else "not running"
    )


@commands.command("stop")
def store_stop() -> None:
    """Stop the embedded store (its data stays)."""
    from cxr_model import embedded_store
    from cxr_model.config import get_settings

    stopped = embedded_store.stop(get_settings().state_dir)
    cli.console.print("stopped" if stopped else "was not running")
