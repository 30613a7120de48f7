"""The global memory budget from measured profiles (FTTE.md section 1), and per-device headroom.

M_i = min(MemAvailable, cgroup memory limit, inventory cap) - runtime baseline - runtime overhead
- data shard - safety margin.
- runtime baseline: resident memory after `import torch` and building the model (the probe);
  against a memory cgroup's limit, what the cgroup is charged for at that point instead
  (device_budget says why);
- runtime overhead: what real training steps cost beyond the plan's tensors (allocator heap,
  autograd, thread pools, kernel code: probe.runtime_step, ~23 MiB on x86 for har_cnn), which
  the plan's estimate does not contain;
- data shard: the bytes of the device's data, which its agent holds, when the run's split is
  known (`ftte train`, `ftte deploy`; not for `ftte plan --inventory`).
Swap never counts. M_min = min over devices of M_i, unless the recipe's `plan.memory_budget`
overrides it. Headroom rows compare each M_i with a plan's training memory (FTTE) and with full
training (what synchronous FedAvg would need), so the table shows who full FedAvg would exclude.

Records are the JSON profiles `ftte profile` writes (`<inventory dir>/.ftte/profiles.json`,
`{"devices": [record, ...]}`), so everything here also works on a copied or hand-made file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from ftte_cli.config.recipe import Recipe
from ftte_cli.errors import ConfigError
from ftte_cli.units import format_size, parse_size

PROFILES_DIR = ".ftte"
PROFILES_FILE = "profiles.json"


class Limit(str, Enum):
    """Which of the three ceilings bounds a device's memory."""

    mem_available = "mem_available"
    cgroup = "cgroup"
    inventory_cap = "inventory_cap"


@dataclass(frozen=True)
class DeviceBudget:
    """One device's usable training memory and how it was derived."""

    name: str
    ceiling_bytes: int  # min(MemAvailable, cgroup limit, inventory cap)
    limited_by: Limit  # which of the three it was
    baseline_bytes: int  # resident memory of the client runtime (import torch + model)
    margin_bytes: int  # the recipe's safety margin
    usable_bytes: int  # M_i = ceiling - baseline - runtime - margin (negative: nothing fits)
    runtime_bytes: int = 0  # the runtime's cost of a training step beyond the plan's tensors
    data_bytes: int = 0  # the device's data shard, which its agent holds while it trains


@dataclass(frozen=True)
class FleetBudget:
    """M_min and where it comes from."""

    devices: tuple[DeviceBudget, ...]
    m_min: int  # the budget a plan must fit
    bound_by: Optional[str]  # the most constrained device, or None when overridden
    overridden: bool  # True: recipe.plan.memory_budget set M_min


@dataclass(frozen=True)
class Budget:
    """The memory budget a plan is chosen for, and where it came from."""

    bytes: int
    source: str  # shown beside the figure: "--budget", "recipe plan.memory_budget", ...


def resolve_budget(recipe: Recipe, *, flag: Union[str, int, None] = None,
                   fraction: Optional[Budget] = None,
                   fleet: Optional[Budget] = None) -> Optional[Budget]:
    """The one budget rule, for `ftte plan`, `deploy`, `train`, `simulate` and the API: a
    `--budget` flag, else the recipe's plan.memory_budget, else (simulate) `--budget-fraction`
    of full training memory, else the fleet's M_min (`fleet_candidate`, or the simulator's
    smallest client). None when no source gives one (the caller says what is missing).

    The fraction comes before the fleet because a simulated fleet always has a smallest client:
    a fraction asked for would otherwise never apply.
    """
    if flag is not None:
        return Budget(parse_size(flag, "--budget"), "--budget")
    if recipe.plan.memory_budget is not None:
        return Budget(recipe.plan.memory_budget, "recipe plan.memory_budget")
    return fraction if fraction is not None else fleet


def fleet_candidate(fleet: FleetBudget) -> Budget:
    """A profiled fleet's M_min as a budget source."""
    return Budget(fleet.m_min, f"fleet M_min (most constrained: {fleet.bound_by})")


def fixed_bytes(recipe: Recipe, flag: Union[str, int, None] = None) -> Optional[int]:
    """The budget set without looking at any device (flag or recipe), which overrides M_min."""
    fixed = resolve_budget(recipe, flag=flag)
    return None if fixed is None else fixed.bytes


@dataclass(frozen=True)
class Headroom:
    """One device under FTTE's plan and under full training; negative headroom: does not fit."""

    name: str
    usable_bytes: int
    ftte_bytes: int
    full_bytes: int
    ftte_headroom: int  # usable - ftte
    full_headroom: int  # usable - full

    @property
    def fits_ftte(self) -> bool:
        """The plan's training memory fits this device."""
        return self.ftte_headroom >= 0

    @property
    def fits_full(self) -> bool:
        """Full training fits (False: strict FedAvg excludes this device)."""
        return self.full_headroom >= 0


def device_budget(name: str, mem_available: int, cgroup_limit: Optional[int],
                  inventory_cap: Optional[int], baseline: int, margin: int,
                  runtime: int = 0, data: int = 0,
                  cgroup_baseline: Optional[int] = None) -> DeviceBudget:
    """M_i for one device; swap is deliberately not an input. `runtime`: what a real training
    step costs beyond the plan's tensors (the profile's runtime_overhead_bytes); `data`: the
    bytes of the shard its bundle carries (known when the run's data is split).

    The baseline is counted in the currency of the ceiling that binds: resident memory against
    MemAvailable or an inventory cap, but what the memory cgroup is charged for
    (`cgroup_baseline`, every process in it) against the cgroup's limit, which the kernel
    enforces on that charge and not on RSS (shared library pages loaded by another cgroup count
    in RSS but not in the charge; a login shell or sshd in the cgroup counts in the charge).
    """
    ceilings = [(mem_available, Limit.mem_available)]
    if cgroup_limit is not None:
        ceilings.append((cgroup_limit, Limit.cgroup))
    if inventory_cap is not None:
        ceilings.append((inventory_cap, Limit.inventory_cap))
    ceiling, limit = min(ceilings, key=lambda c: c[0])
    if limit == Limit.cgroup and cgroup_baseline is not None:
        baseline = cgroup_baseline
    return DeviceBudget(name=name, ceiling_bytes=ceiling, limited_by=limit,
                        baseline_bytes=baseline, margin_bytes=margin,
                        usable_bytes=ceiling - baseline - runtime - data - margin,
                        runtime_bytes=runtime, data_bytes=data)


def budget_from_record(record: Mapping[str, Any], margin: int,
                       where: str = "profiles", data: int = 0) -> DeviceBudget:
    """M_i from one profile record (see module docstring); ConfigError names the missing key."""
    name = str(record.get("name", "?"))
    available = record.get("mem_available_bytes")
    if not isinstance(available, int):
        raise ConfigError(f"{where}: {name}: mem_available_bytes missing (profile it again)")
    return device_budget(name, available, record.get("cgroup_mem_limit_bytes"),
                         record.get("inventory_cap_bytes"),
                         int(record.get("baseline_rss_bytes") or 0), margin,
                         int(record.get("runtime_overhead_bytes") or 0), data,
                         record.get("baseline_cgroup_bytes"))


def fleet_budget(devices: Iterable[DeviceBudget],
                 override: Optional[int] = None) -> FleetBudget:
    """M_min over the devices (the most constrained one), or the override when given."""
    devs = tuple(devices)
    if override is not None:  # profiles optional: they only feed the headroom table
        return FleetBudget(devs, int(override), None, True)
    if not devs:
        raise ConfigError("no device profiles: run `ftte profile` first "
                          "(or set plan.memory_budget)")
    worst = min(devs, key=lambda d: d.usable_bytes)
    return FleetBudget(devs, worst.usable_bytes, worst.name, False)


def recipe_budget(records: Mapping[str, Mapping[str, Any]], safety_margin: Union[int, str],
                  memory_budget: Union[int, str, None] = None,
                  names: Optional[Iterable[str]] = None, where: str = "profiles",
                  data_bytes: Optional[Mapping[str, int]] = None) -> FleetBudget:
    """The fleet budget for a recipe's plan section over the chosen devices' records;
    `data_bytes`: device -> its data shard's bytes, when the run's split is known."""
    margin = parse_size(safety_margin, "plan.safety_margin")
    override = None if memory_budget is None else parse_size(memory_budget, "plan.memory_budget")
    chosen = list(records) if names is None else list(names)
    missing = [n for n in chosen if n not in records]
    if missing:
        raise ConfigError(f"{where}: no profile for {', '.join(missing)} (run `ftte profile`)")
    shards = data_bytes or {}
    return fleet_budget((budget_from_record({"name": n, **records[n]}, margin, where,
                                            shards.get(n, 0))
                         for n in chosen), override)


def headroom(budget: FleetBudget, ftte_bytes: int, full_bytes: int) -> list[Headroom]:
    """Per-device headroom under a plan's training memory and under full training."""
    return [Headroom(d.name, d.usable_bytes, ftte_bytes, full_bytes,
                     d.usable_bytes - ftte_bytes, d.usable_bytes - full_bytes)
            for d in budget.devices]


def inventory_budget(inventory: Union[str, Path], recipe: Recipe, limit: Optional[str] = None,
                     override: Union[int, str, None] = None) -> FleetBudget:
    """The fleet-aware budget of `ftte plan --inventory`: cached profiles of the chosen devices.

    An override (`--budget`, else the recipe's `plan.memory_budget`) sets M_min; profiles then
    only feed the headroom table (devices without one are left out). Without an override every
    chosen device needs a cached profile.
    """
    from ftte_cli.config.inventory import load_inventory

    names = [d.name for d in load_inventory(Path(inventory)).select(limit)]
    path = profiles_path(inventory)
    records = load_profiles(path)
    fixed = fixed_bytes(recipe, override)
    if fixed is not None:
        names = [n for n in names if n in records]
    elif not records:
        raise ConfigError(f"{path}: no profiles yet (run `ftte profile -i {inventory}` first)")
    return recipe_budget(records, recipe.plan.safety_margin, fixed, names, where=str(path))


HEADROOM_COLUMNS = ("device", "usable M_i", "limited by", "FTTE plan", "FTTE headroom",
                    "full training", "full headroom", "full FedAvg")


def headroom_json(budget: FleetBudget, rows: list[Headroom]) -> dict[str, Any]:
    """M_min, its source, and one object per device (what the headroom table is drawn from)."""
    limits = {d.name: d.limited_by.value for d in budget.devices}
    return {"m_min_bytes": budget.m_min, "bound_by": budget.bound_by,
            "overridden": budget.overridden,
            "devices": [{"name": h.name, "usable_bytes": h.usable_bytes,
                         "limited_by": limits.get(h.name), "ftte_bytes": h.ftte_bytes,
                         "ftte_headroom_bytes": h.ftte_headroom, "fits_ftte": h.fits_ftte,
                         "full_bytes": h.full_bytes, "full_headroom_bytes": h.full_headroom,
                         "fits_full": h.fits_full}
                        for h in rows]}


def headroom_rows(data: dict[str, Any]) -> list[list[str]]:
    """Table rows (HEADROOM_COLUMNS) from `headroom_json`: who fits, who full FedAvg excludes."""
    return [[d["name"], format_size(d["usable_bytes"]), d["limited_by"] or "-",
             format_size(d["ftte_bytes"]), _signed(d["ftte_headroom_bytes"]),
             format_size(d["full_bytes"]), _signed(d["full_headroom_bytes"]),
             "included" if d["fits_full"] else "EXCLUDED"]
            for d in data["devices"]]


def _signed(n: int) -> str:
    return ("+" if n >= 0 else "-") + format_size(abs(n))


def profiles_path(inventory: Union[str, Path]) -> Path:
    """Where profiles of an inventory are cached: `<inventory dir>/.ftte/profiles.json`."""
    return Path(inventory).resolve().parent / PROFILES_DIR / PROFILES_FILE


def load_profiles(path: Union[str, Path]) -> dict[str, dict[str, Any]]:
    """Device name -> record from a profiles file; {} if there is none.

    Accepted: `{"devices": [records]}` (what `ftte profile` writes), `{"profiles": [...]}` (its
    `--format json` output), a bare list of records, or an object name -> record.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path}: not JSON ({err})") from err
    if isinstance(raw, dict) and isinstance(raw.get("devices", raw.get("profiles")), list):
        raw = raw.get("devices", raw.get("profiles"))
    if isinstance(raw, list):
        if not all(isinstance(r, dict) and "name" in r for r in raw):
            raise ConfigError(f"{path}: every profile record needs a name")
        raw = {str(r["name"]): r for r in raw}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: expected {{\"devices\": [profile records]}}")
    return {str(k): {**v, "name": v.get("name", k)} for k, v in raw.items()}


def dump_profiles(records: Mapping[str, Mapping[str, Any]]) -> str:
    """The profiles file's text: {"devices": [records]}, which `ftte simulate --fleet` replays."""
    return json.dumps({"devices": list(records.values())}, indent=2) + "\n"
