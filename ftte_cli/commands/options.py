"""Option types shared by the commands, so every command spells, documents and defaults them
alike: `--recipe`, `--inventory`, `--limit`, `--format` and the SSH flag set.

    def profile(inventory: InventoryOpt, limit: LimitOpt = None, forks: ForksOpt = FORKS,
                connect_timeout: ConnectTimeoutOpt = CONNECT_TIMEOUT, ...):
        opts = ssh_options(forks=forks, connect_timeout=connect_timeout, ...)

The SSH defaults are `SshOptions()`'s (one connect timeout, 20 s, for every command); only the
command timeout differs where a command's remote steps are slow (profile and train import torch
on a quarter of a core: `SLOW_DEVICE_SSH`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftte_cli import builtin
from ftte_cli.config.inventory import Device, Inventory
from ftte_cli.fleet.ssh import SshOptions
from ftte_cli.output import Format, err_console


def _resolve(kind: str, value: Optional[Path]) -> Optional[Path]:
    """A `--recipe` / `--inventory` value as the file to load; says so when a name was looked up."""
    if value is None:
        return None
    resolved = builtin.resolve(kind, value)
    note = builtin.describe(kind, value, resolved)
    if note is not None:
        err_console.print(note, highlight=False, soft_wrap=True)
    return resolved.path


def recipe_path(value: Optional[Path]) -> Optional[Path]:
    """Typer callback for every `--recipe`: a path, or a built-in name (`har`, `har.yaml`)."""
    return _resolve(builtin.RECIPES, value)


def inventory_path(value: Optional[Path]) -> Optional[Path]:
    """Typer callback for every `--inventory`: a path, or a built-in name (`lab`)."""
    return _resolve(builtin.INVENTORIES, value)


RECIPE_HELP = "Recipe YAML, or a built-in name (`har`)."
RecipeOpt = Annotated[
    Path, typer.Option("--recipe", "-r", callback=recipe_path, help=RECIPE_HELP)
]
OptionalRecipeOpt = Annotated[
    Optional[Path], typer.Option("--recipe", "-r", callback=recipe_path, help=RECIPE_HELP)
]
InventoryOpt = Annotated[
    Path,
    typer.Option(
        "--inventory", "-i", envvar="FTTE_INVENTORY", callback=inventory_path,
        help="Inventory YAML (Ansible format), or a built-in name (`lab`).",
    ),
]
LimitOpt = Annotated[
    Optional[str],
    typer.Option("--limit", "-l", help="Only these groups or hosts, comma-separated."),
]
ForksOpt = Annotated[
    int, typer.Option("--forks", "-f", min=1, help="Devices handled at once.")
]
AcceptNewHostKeysOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Trust unknown host keys and record them in known_hosts (never a changed key).",
    ),
]
KnownHostsOpt = Annotated[
    Optional[Path],
    typer.Option("--known-hosts", help="known_hosts file for every device (default: per device, "
                 "then ~/.ssh/known_hosts)."),
]
ConnectTimeoutOpt = Annotated[
    float,
    typer.Option("--connect-timeout", min=0.1, help="Seconds for TCP connect, banner and auth."),
]
CommandTimeoutOpt = Annotated[
    float, typer.Option("--command-timeout", min=0.1, help="Seconds allowed per remote command.")
]
FormatOpt = Annotated[
    Format, typer.Option("--format", help="table for people, json for scripts.")
]


DEFAULT_SSH = SshOptions()
FORKS = DEFAULT_SSH.forks
CONNECT_TIMEOUT = DEFAULT_SSH.connect_timeout
COMMAND_TIMEOUT = DEFAULT_SSH.command_timeout


def select_devices(inventory: Path, limit: Optional[str]) -> tuple[Inventory, list[Device]]:
    """Load the inventory and apply `--limit` (an unknown name is a ConfigError)."""
    from ftte_cli import api

    return api.select_devices(inventory, limit)


def ssh_options(
    *,
    forks: int = FORKS,
    accept_new_host_keys: bool = False,
    known_hosts: Optional[Path] = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float = COMMAND_TIMEOUT,
) -> SshOptions:
    """SshOptions from the shared flags."""
    return SshOptions(
        known_hosts=known_hosts,
        accept_new_host_keys=accept_new_host_keys,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        forks=forks,
    )
