"""`ftte testbed up|status|down|power`: an emulated fleet of capped sshd devices on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftte_cli import api
from ftte_cli.errors import ConfigError
from ftte_cli.output import Format, console, err_console, handle_errors, print_json, table
from ftte_cli.testbed import lifecycle
from ftte_cli.testbed.devices import DEFAULT_MIX, DEVICE_CLASSES, DeviceClass
from ftte_cli.testbed.state import TestbedState
from ftte_cli.units import format_size

app = typer.Typer(help="An emulated fleet on this machine: real sshd per device, with caps.",
                  no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="Folder holding the testbed's files.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="table or json.")]

COLUMNS = ("device", "class", "address", "port", "alive", "memory cap", "cpu", "link", "mem used")


def _caps(c: DeviceClass) -> str:
    if c.mem_cap_mb is None:
        return "uncapped"
    return f"{c.mem_cap_mb} MiB, {c.cpu_percent}% CPU, {c.bandwidth_mbit:g} Mbit/s"


def _rows(statuses: list[lifecycle.DeviceStatus]) -> list[list[Any]]:
    return [[s.name, s.device_class, s.address, s.port, "yes" if s.alive else "NO",
             _size(s.mem_cap_bytes), "-" if s.cpu_percent is None else f"{s.cpu_percent}%",
             "-" if s.bandwidth_mbit is None else f"{s.bandwidth_mbit:g} Mbit/s",
             _size(s.mem_used_bytes)] for s in statuses]


def _size(n: Optional[int]) -> str:
    return "-" if n is None else format_size(n)


def _summary(state: TestbedState, statuses: list[lifecycle.DeviceStatus]) -> dict[str, Any]:
    return {"dir": state.dir, "id": state.id, "isolated": state.isolated,
            "inventory": str(Path(state.dir) / lifecycle.INVENTORY_FILE),
            "notes": list(state.notes), "devices": statuses}


def _show(state: TestbedState, statuses: list[lifecycle.DeviceStatus], fmt: Format) -> None:
    if fmt == Format.json:
        print_json(_summary(state, statuses))
        return
    console.print(table(f"testbed {state.id} in {state.dir}", COLUMNS, _rows(statuses)))
    for note in state.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"inventory: {Path(state.dir) / lifecycle.INVENTORY_FILE}", highlight=False)


@app.command("up")
def up(
    devices: Annotated[int, typer.Option("--devices", "-n", help="How many devices.")] = 4,
    mix: Annotated[str, typer.Option("--mix", help=(
        "Device classes, repeated round-robin: " + ", ".join(
            f"{c.name} ({_caps(c)})" for c in DEVICE_CLASSES.values())))] = ",".join(DEFAULT_MIX),
    directory: DirOpt = Path(".testbed"),
    bandwidth: Annotated[bool, typer.Option("--bandwidth/--no-bandwidth",
                                            help="Cap each link with tc (root only).")] = True,
    fmt: FormatOpt = Format.table,
) -> None:
    """Start N emulated devices and write their inventory, key pair and known_hosts."""
    with handle_errors(fmt):
        api.testbed_up(directory, devices, mix, bandwidth)
        state, statuses = api.testbed_status(directory)
        assert state is not None
        _show(state, statuses, fmt)


@app.command("status")
def status(directory: DirOpt = Path(".testbed"), fmt: FormatOpt = Format.table) -> None:
    """Show each device of the testbed: address, port, alive, caps and memory in use."""
    with handle_errors(fmt):
        state, statuses = api.testbed_status(directory)
        if state is None:
            if fmt == Format.json:
                print_json({"dir": str(directory.resolve()), "devices": []})
            else:
                console.print(f"no testbed in {directory.resolve()}", highlight=False)
            return
        _show(state, statuses, fmt)


@app.command("down")
def down(directory: DirOpt = Path(".testbed"), fmt: FormatOpt = Format.table) -> None:
    """Stop every process and remove every cgroup, namespace and link the testbed made."""
    with handle_errors(fmt):
        report = api.testbed_down(directory)
        if fmt == Format.json:
            print_json(report)
        else:
            console.print(
                f"stopped {len(report.killed)} processes, removed {len(report.cgroups)} cgroups, "
                f"{len(report.namespaces)} namespaces, {len(report.links)} links", highlight=False)
            for item in report.leftovers:
                err_console.print(f"[red]left behind:[/] {item}", highlight=False)
        if report.leftovers:
            raise typer.Exit(1)


@app.command("power")
def power(
    device: Annotated[str, typer.Argument(help="The testbed device, e.g. pi4-2.")],
    battery: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Battery level as a fraction of full (0.34).")] = None,
    charging: Annotated[Optional[bool], typer.Option(
        "--charging/--on-battery", help="Plugged in, or running on its battery.")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", help="Hottest thermal zone, degrees C.")] = None,
    watts: Annotated[Optional[float], typer.Option(
        "--watts", min=0.0, help="Power draw a sensor would report (energy is then "
        "measured, not estimated).")] = None,
    clear: Annotated[bool, typer.Option(
        "--clear", help="Remove the emulation: back to the machine's own sensors.")] = False,
    directory: DirOpt = Path(".testbed"),
    fmt: FormatOpt = Format.table,
) -> None:
    """Emulate one device's battery, charging, temperature and power draw (its power.json)."""
    with handle_errors(fmt):
        values = {k: v for k, v in (("battery", battery), ("charging", charging),
                                    ("temperature_c", temperature), ("power_w", watts))
                  if v is not None}
        if not clear and not values:
            raise ConfigError("testbed power: give --battery, --charging/--on-battery, "
                              "--temperature or --watts (or --clear)")
        path = api.testbed_power(directory, device, None if clear else values)
        if fmt == Format.json:
            print_json({"device": device, "file": str(path), "power": None if clear else values})
        else:
            what = "cleared" if clear else ", ".join(f"{k}={v}" for k, v in values.items())
            console.print(f"{device}: {what} ({path})", highlight=False)
