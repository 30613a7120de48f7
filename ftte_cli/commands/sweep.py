"""`ftte sweep`: a grid of runs (strategies x seeds x --set values) on the fleet or simulated,
one at a time, resumable, ending with a comparison table and PNGs (logic: ftte_cli/sweep/).
Exit code 1 when any run failed (after the whole grid ran and the table was printed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

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
from ftte_cli.errors import ConfigError, ExitCode
from ftte_cli.fleet.ssh import SLOW_DEVICE_SSH
from ftte_cli.output import Format, console, err_console, handle_errors, print_json, table
from ftte_cli.units import format_size

COLUMNS = ("strategy", "runs", "reached", "time to target", "final acc", "payload to target",
           "memory/device", "peak memory by class")


def sweep(
    recipe: OptionalRecipeOpt = None,
    inventory: Annotated[Optional[Path], typer.Option(
        "--inventory", "-i", envvar="FTTE_INVENTORY", callback=inventory_path,
        help="Inventory YAML (the fleet; with "
        "--simulate its size and benchmarked profiles shape the simulated fleet).")] = None,
    strategies: Annotated[str, typer.Option(
        help="Comma-separated: ftte, fedbuff, fedasync, fedavg.")] = "ftte,fedbuff,fedavg",
    seeds: Annotated[str, typer.Option(help="Comma-separated recipe seeds.")] = "1",
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", help="KEY=V1,V2: a recipe key swept over values, e.g. "
        "strategy.buffer_size=5,10 (repeatable).")] = None,
    simulate: Annotated[bool, typer.Option(
        "--simulate", help="Run the grid in the simulator instead of on the fleet.")] = False,
    fleet: Annotated[Optional[Path], typer.Option(
        help="--simulate: profiles JSON to replay (default: the inventory's benchmarked "
        "profiles).")] = None,
    limit: LimitOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Sweep folder (default runs/sweep-<time>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Finish the missing runs of the sweep in this folder.")] = None,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    connect_timeout: ConnectTimeoutOpt = CONNECT_TIMEOUT,
    offline_after: Annotated[float, typer.Option(
        "--offline-after", min=1.0, help="Seconds without a request before a device is "
        "offline.")] = 10.0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Run strategies x seeds (x --set values) one run at a time and compare them."""
    with handle_errors(fmt):
        from ftte_cli.rundir.store import new_run_dir

        if resume is None and recipe is None:  # before new_run_dir makes a folder
            raise ConfigError("sweep: --recipe is required (or --resume DIR)")
        grid = None if resume is not None else api.grid(strategies, seeds, tuple(sets or ()))
        opts = api.SweepOptions(
            out=resume or out or new_run_dir(Path("runs"), "sweep"), recipe=recipe,
            inventory=inventory, grid=grid, simulate=simulate, limit=limit, fleet=fleet,
            resume=resume is not None, offline_after=offline_after,
            ssh=ssh_options(accept_new_host_keys=accept_new_host_keys,
                            connect_timeout=connect_timeout,
                            command_timeout=SLOW_DEVICE_SSH.command_timeout))
        result = api.sweep(opts, _progress if fmt == Format.table else None)
        _render(result, fmt)
        if result.failed:  # every run is recorded and compared; scripts still learn of it
            raise typer.Exit(int(ExitCode.FAILURE))


def _progress(run: Any, record: Any) -> None:
    if record is None:
        err_console.print(f"run {run.run_id} ...", highlight=False)
    else:
        detail = record.error if record.error else (
            f"{record.stop_reason}, best acc {_num(record.best_accuracy, '.3f')}, time to target "
            f"{_num(record.time_to_target, '.1f', ' s')}")
        err_console.print(f"run {run.run_id}: {record.status.value} ({detail})", highlight=False)


def _num(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _stat(s: Any, spec: str, suffix: str = "") -> str:
    if s.mean is None:
        return "-"
    return f"{s.mean:{spec}}{suffix}" + (f" ± {s.spread:{spec}}" if s.n > 1 else "")


def _size_stat(s: Any) -> str:
    if s.mean is None:
        return "-"
    return format_size(int(s.mean)) + (f" ± {format_size(int(s.spread))}" if s.n > 1 else "")


def rows(comparison: list[Any]) -> list[list[str]]:
    """The table's rows (from the same GroupStats the JSON prints)."""
    out = []
    for g in comparison:
        peaks = ", ".join(f"{c} {_size_stat(s)}" for c, s in g.peak_memory_by_class.items())
        out.append([g.group, f"{g.runs - g.failed}/{g.runs}", f"{g.reached}/{g.runs}",
                    _stat(g.time_to_target, ".1f", " s"), _stat(g.final_accuracy, ".3f"),
                    _size_stat(g.payload_to_target),
                    "-" if g.memory_per_device is None else format_size(g.memory_per_device),
                    peaks or "-"])
    return out


def _render(result: Any, fmt: Format) -> None:
    if fmt == Format.json:
        print_json({"out": str(result.out), "simulate": result.simulate, "ran": result.ran,
                    "skipped": result.skipped, "comparison": result.comparison,
                    "runs": result.records, "plots": [str(p) for p in result.plots]})
        return
    kind = "simulated" if result.simulate else "fleet"
    console.print(table(f"Sweep {result.out} ({kind}; mean ± sd over seeds)", COLUMNS,
                        rows(result.comparison)))
    for r in result.failed:
        console.print(f"failed {r.run_id}: {r.error}", highlight=False, soft_wrap=True)
    console.print(f"ran {len(result.ran)}, already done {len(result.skipped)}; plots: "
                  + ", ".join(str(p) for p in result.plots), highlight=False, soft_wrap=True)
