"""`ftte deploy`: build each device's bundle and ship it (checks first, atomic, skipped if same)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from ftte_cli import api
from ftte_cli.commands.options import (
    CONNECT_TIMEOUT,
    FORKS,
    AcceptNewHostKeysOpt,
    CommandTimeoutOpt,
    ConnectTimeoutOpt,
    ForksOpt,
    FormatOpt,
    InventoryOpt,
    KnownHostsOpt,
    LimitOpt,
    RecipeOpt,
    ssh_options,
)
from ftte_cli.output import Format, err_console, handle_errors

log = logging.getLogger(__name__)

DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Run the checks and say what would change; copy nothing.")
]


def deploy(
    recipe: RecipeOpt,
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    dry_run: DryRunOpt = False,
    forks: ForksOpt = FORKS,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = CONNECT_TIMEOUT,
    command_timeout: CommandTimeoutOpt = 120.0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Ship the recipe's bundle (runtime, plan, model, data shard, token) to every device."""
    from ftte_cli.errors import ExitCode
    from ftte_cli.fleet.ssh import FleetInterrupted
    from ftte_cli.ui.recap import exit_with, render_recap

    with handle_errors(fmt):
        opts = ssh_options(forks=forks, accept_new_host_keys=accept_new_host_keys,
                           known_hosts=known_hosts, connect_timeout=connect_timeout,
                           command_timeout=command_timeout)
        try:
            with _status(fmt) as say:
                results = api.deploy(recipe, inventory, limit=limit, dry_run=dry_run, ssh=opts,
                                     say=say)
        except FleetInterrupted as stop:  # Ctrl-C: say what each device ended with
            render_recap(stop.results, fmt, title="Deploy (interrupted)", with_values=True)
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    render_recap(results, fmt, title="Deploy (dry run)" if dry_run else "Deploy",
                 with_values=True)
    exit_with(results)


@contextmanager
def _status(fmt: Format) -> Iterator[Callable[[str], None]]:
    """A spinner line on stderr for people; silence for scripts."""
    if fmt == Format.json or not err_console.is_terminal:
        yield lambda _message: None
        return
    with err_console.status("deploy") as status:
        yield lambda message: status.update(message)
