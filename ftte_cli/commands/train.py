"""`ftte train`: train a recipe on the fleet with a live dashboard (logic: ftte_cli/train/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftte_cli import api
from ftte_cli.commands.options import (
    CONNECT_TIMEOUT,
    AcceptNewHostKeysOpt,
    ConnectTimeoutOpt,
    FormatOpt,
    LimitOpt,
    OptionalRecipeOpt,
    inventory_path,
    ssh_options,
)
from ftte_cli.commands.report import TensorboardOpt
from ftte_cli.config.recipe import STRATEGIES
from ftte_cli.errors import ConfigError, ExitCode
from ftte_cli.fleet.ssh import SLOW_DEVICE_SSH
from ftte_cli.output import Format, console, handle_errors, print_json, table
from ftte_cli.units import format_size

ROWS = ("device", "status", "accepted", "rejected", "staleness", "peak memory", "up", "down")


def train(
    recipe: OptionalRecipeOpt = None,
    inventory: Annotated[Optional[Path], typer.Option(
        "--inventory", "-i", envvar="FTTE_INVENTORY", callback=inventory_path,
        help="Inventory YAML, or a built-in name.")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", help=f"Override the recipe's strategy: {'|'.join(STRATEGIES)}.")] = None,
    limit: LimitOpt = None,
    direct: Annotated[Optional[str], typer.Option(
        "--direct", help="Bind HOST:PORT and let agents dial it (no SSH tunnels; tokens are "
        "then the only guard).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(
        "--run-dir", help="Run directory (default runs/train-<timestamp>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in RUN_DIR from its last checkpoint.")] = None,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    no_dashboard: Annotated[bool, typer.Option(
        "--no-dashboard", help="Plain progress lines instead of the live dashboard.")] = False,
    offline_after: Annotated[float, typer.Option(
        "--offline-after", min=1.0, help="Seconds without a request before a device is "
        "offline.")] = 10.0,
    connect_timeout: ConnectTimeoutOpt = CONNECT_TIMEOUT,
    tensorboard: TensorboardOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Start the server, launch the agents, train until a stop rule, stop every agent."""
    with handle_errors(fmt):
        from ftte_cli.ui.dashboard import Phases

        if strategy is not None and strategy not in STRATEGIES:
            raise ConfigError(f"--strategy: unknown {strategy!r} (known: {', '.join(STRATEGIES)})")
        if tensorboard is not None:
            api.require_tensorboard()  # before the run, not after it
        dashboard = False if (no_dashboard or fmt == Format.json) else None
        phases = Phases(live=None if dashboard is None else False)
        try:
            result = api.train(
                recipe, inventory, strategy=strategy, limit=limit, direct=direct,
                run_dir=run_dir, resume=resume, offline_after=offline_after,
                ssh=ssh_options(accept_new_host_keys=accept_new_host_keys,
                                connect_timeout=connect_timeout,
                                command_timeout=SLOW_DEVICE_SSH.command_timeout),
                quiet=False, dashboard=dashboard, phases=phases)
        finally:
            phases.close()
        if tensorboard is not None:  # written from the run directory, like `ftte report`
            api.export_tensorboard(result.run_dir, tensorboard)
        _render(result, fmt)
        if result.stop_reason.value in ("no_devices", "stalled", "error"):
            raise typer.Exit(int(ExitCode.FAILURE))


def _render(result: api.TrainResult, fmt: Format) -> None:
    if fmt == Format.json:
        print_json(result)
        return
    rows = [[d["name"], d["status"], d["accepted"], d["rejected"], d["staleness"],
             "-" if d["peak_memory"] is None else format_size(d["peak_memory"]),
             format_size(d["bytes_up"]), format_size(d["bytes_down"])] for d in result.devices]
    console.print(table(f"Run {result.run_dir}", ROWS, rows))
    best = "-" if result.best_accuracy is None else f"{result.best_accuracy:.3f}"
    reached = (f"target reached at {result.time_to_target:.0f}s" if result.target_reached
               else "target not reached")
    console.print(f"stopped: {result.stop_reason.value}; version {result.version}; best accuracy "
                  f"{best}; {reached}; elapsed {result.elapsed:.0f}s", highlight=False)
    for name, why in result.excluded.items():
        console.print(f"excluded {name}: {why}", highlight=False)
