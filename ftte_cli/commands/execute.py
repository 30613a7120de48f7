"""`ftte exec -i INV [--limit G] [--sudo] -- COMMAND`: one shell command on every device.

Each device's output is printed as it finishes (`pi4-a | ok | rc=0 | 0.4s` then its stdout and
stderr), then the recap; `--format json` prints one document with every device's output instead.
Exit codes are those of every fleet command (a non-zero exit status on a device is `failed`, 8).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import typer
from rich.text import Text

from ftte_cli import api
from ftte_cli.commands.options import (
    COMMAND_TIMEOUT,
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
    ssh_options,
)
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.adhoc import CommandOutput
from ftte_cli.fleet.ssh import DeviceResult, FleetResults
from ftte_cli.output import Format, console, handle_errors, print_json
from ftte_cli.ui.recap import STYLES, exit_with, recap_rows, render_recap, summary


def exec_rows(results: FleetResults) -> list[dict[str, Any]]:
    """The recap rows plus each device's exit status and output (None where it did not run)."""
    rows = recap_rows(results)
    for row, r in zip(rows, results):
        out = r.value if isinstance(r.value, CommandOutput) else None
        row.update(rc=out.rc if out else None, stdout=out.stdout if out else None,
                   stderr=out.stderr if out else None)
    return rows


def _printer() -> Any:
    """An on_done callback printing one device's block; a lock keeps blocks whole."""
    lock = threading.Lock()

    def show(r: DeviceResult) -> None:
        out = r.value if isinstance(r.value, CommandOutput) else None
        head = Text(f"{r.device.name} | ")
        head.append(r.outcome.value, style=STYLES[r.outcome])
        head.append(f" | rc={out.rc}" if out else f" | {r.detail}")
        head.append(f" | {r.elapsed:.1f}s")
        with lock:
            console.print(head, highlight=False, soft_wrap=True)
            if out is not None:
                for text, style in ((out.stdout, None), (out.stderr, "red")):
                    if text.strip():
                        console.print(Text(text.rstrip("\n"), style=style or ""),
                                      highlight=False, soft_wrap=True)

    return show


def exec_command(
    command: Annotated[list[str], typer.Argument(
        help="The command, after `--`; run by each device's login shell, like `ssh host CMD`.",
        show_default=False)],
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    sudo: Annotated[bool, typer.Option(
        "--sudo", help="Run it as root with `sudo -n` (no password prompt: sudo must allow it).")
    ] = False,
    forks: ForksOpt = FORKS,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = CONNECT_TIMEOUT,
    command_timeout: CommandTimeoutOpt = COMMAND_TIMEOUT,
    fmt: FormatOpt = Format.table,
) -> None:
    """Run one shell command on every selected device: output per device, then the recap."""
    with handle_errors(fmt):
        line = " ".join(command).strip()
        if not line:
            raise ConfigError("exec: COMMAND is empty (put it after `--`)")
        opts = ssh_options(forks=forks, accept_new_host_keys=accept_new_host_keys,
                           known_hosts=known_hosts, connect_timeout=connect_timeout,
                           command_timeout=command_timeout)
        results = api.run_command(inventory, line, limit=limit, sudo=sudo, ssh=opts,
                                  on_done=None if fmt == Format.json else _printer())
    if fmt == Format.json:
        print_json({"command": line, "sudo": sudo, "devices": exec_rows(results),
                    "summary": summary(results), "exit_code": int(results.exit_code())})
    else:
        render_recap(results, fmt)
    exit_with(results)
