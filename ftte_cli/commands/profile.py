"""`ftte profile`: measure every device of the inventory and cache the profiles as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

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
    OptionalRecipeOpt,
    ssh_options,
)
from ftte_cli.errors import ConfigError
from ftte_cli.fleet import budget as bud
from ftte_cli.fleet import profile as prof
from ftte_cli.fleet.ssh import SLOW_DEVICE_SSH, FleetResults
from ftte_cli.output import Format, console, handle_errors, print_json, table
from ftte_cli.ui.recap import exit_with, recap_rows, recap_table, summary, summary_line
from ftte_cli.units import format_size

COLUMNS = ("device", "class", "cpus", "quota", "memory", "limited by", "baseline", "runtime",
           "usable M_i", "torch")
BENCH_COLUMNS = ("device", "model", "fwd ms/sample", "bwd ms/sample", "rtt ms", "upload Mbit/s")
POWER_COLUMNS = ("device", "battery", "charging", "temp C", "power W", "throttled", "from")


def _size(n: Optional[int]) -> str:
    return "-" if n is None else format_size(n)


def _num(x: Optional[float], scale: float = 1.0, digits: int = 3) -> str:
    return "-" if x is None else f"{x * scale:.{digits}g}"


def _profiles(results: FleetResults) -> list[prof.DeviceProfile]:
    return [r.value for r in results.succeeded.values() if isinstance(r.value, prof.DeviceProfile)]


def profile_rows(results: FleetResults) -> list[list[Any]]:
    """One row per profiled device: the memory that bounds it and what is left for training."""
    rows = []
    for p in _profiles(results):
        ceiling = min(x for x in (p.mem_available_bytes, p.cgroup_mem_limit_bytes,
                                  p.inventory_cap_bytes, 2**63) if x is not None)
        rows.append([p.name, p.device_class or "-", p.cpu_count, _num(p.cpu_quota),
                     _size(ceiling if ceiling < 2**63 else None), p.limited_by or "-",
                     _size(_baseline(p)), _size(p.runtime_overhead_bytes),
                     _size(p.usable_memory_bytes),
                     p.torch_version or "absent"])
    return rows


def _baseline(p: prof.DeviceProfile) -> Optional[int]:
    """The baseline M_i counts: the cgroup's charge against its limit, else resident memory."""
    if p.limited_by == "cgroup" and p.baseline_cgroup_bytes is not None:
        return p.baseline_cgroup_bytes
    return p.baseline_rss_bytes


def bench_rows(results: FleetResults) -> list[list[Any]]:
    """One row per benchmarked device: per-sample step times and the link."""
    return [[p.name, p.bench_model, _num(p.sec_per_sample_fwd, 1e3),
             _num(p.sec_per_sample_bwd, 1e3), _num(p.rtt_s, 1e3), _num(p.bandwidth_bps, 1e-6)]
            for p in _profiles(results) if p.benchmarked]


def power_rows(results: FleetResults) -> list[list[Any]]:
    """Battery, charging, temperature and draw per device that reports any ("-": missing)."""
    def yes_no(x: Optional[bool]) -> str:
        return "-" if x is None else ("yes" if x else "no")

    rows = []
    for p in _profiles(results):
        if p.power_sources or p.battery is not None or p.charging is not None:
            rows.append([p.name, "-" if p.battery is None else f"{100 * p.battery:.0f}%",
                         yes_no(p.charging), _num(p.temperature_c), _num(p.power_w),
                         yes_no(p.throttled), ", ".join(p.power_sources) or "-"])
    return rows


def profile(
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    benchmark: Annotated[bool, typer.Option(
        "--benchmark", help="Also time training steps of the recipe's model, RTT and upload.")
    ] = False,
    recipe: OptionalRecipeOpt = None,
    max_age: Annotated[Optional[float], typer.Option(
        "--max-age", min=0, help="Reuse cached profiles younger than this many seconds.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also write the profiles here (default cache: <inventory dir>/"
        ".ftte/profiles.json).")] = None,
    forks: ForksOpt = FORKS,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = CONNECT_TIMEOUT,
    command_timeout: CommandTimeoutOpt = SLOW_DEVICE_SSH.command_timeout,
    fmt: FormatOpt = Format.table,
) -> None:
    """Measure each device (memory, cgroup caps, CPU, disk, Python/torch, runtime baseline)."""
    with handle_errors(fmt):
        if benchmark and recipe is None:
            raise ConfigError("--benchmark: needs --recipe (the model to time)")
        opts = ssh_options(forks=forks, accept_new_host_keys=accept_new_host_keys,
                           known_hosts=known_hosts, connect_timeout=connect_timeout,
                           command_timeout=command_timeout)
        results = api.profile(inventory, limit=limit, recipe=recipe, benchmark=benchmark,
                              max_age=max_age, ssh=opts, probe_timeout=command_timeout,
                              out=out)
        cache = bud.profiles_path(inventory)
        records = bud.load_profiles(cache)
        _render(results, records, cache, fmt)
    exit_with(results)


def _render(results: FleetResults, records: dict[str, Any], cache: Path, fmt: Format) -> None:
    if fmt == Format.json:
        print_json({"profiles": [records[n] for n in results.succeeded if n in records],
                    "devices": recap_rows(results), "summary": summary(results),
                    "exit_code": int(results.exit_code()), "cache": str(cache)})
        return
    console.print(table("Device profiles", COLUMNS, profile_rows(results)))
    bench = bench_rows(results)
    if bench:
        console.print(table("Benchmark", BENCH_COLUMNS, bench))
    power = power_rows(results)
    if power:
        console.print(table("Power", POWER_COLUMNS, power))
    console.print(recap_table(results, "Recap"))
    console.print(summary_line(results), highlight=False)
    console.print(f"profiles: {cache}", highlight=False)
