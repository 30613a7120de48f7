"""Profiles -> budget -> plan for `ftte train`, and which devices take part.

FTTE trains the sparse plan that fits the fleet's tightest device (fleet/budget.py for M_min,
engine/selection.py for the plan). The dense baselines train everything; synchronous FedAvg under
`baseline_memory: strict` excludes the devices whose usable memory cannot hold full training and
refuses the run when none is left, while `lenient` keeps them (a capped device may then be
OOM-killed, which the dashboard shows as failed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import Recipe
from ftte_cli.engine.data import FederatedData, load_federated
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.plan import Plan, dense_plan
from ftte_cli.errors import BudgetInfeasible, ConfigError
from ftte_cli.fleet import budget as fleet_budget
from ftte_cli.fleet.ssh import FleetResults, SshOptions
from ftte_cli.startmodel import StartInfo, model_params, start_model
from ftte_cli.units import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanChoice:
    """The plan of a run and who trains it."""

    plan: Plan
    devices: list[Device]  # taking part
    excluded: dict[str, str] = field(default_factory=dict)  # device -> why not
    budget: Optional[fleet_budget.FleetBudget] = None
    profiles: dict[str, Any] = field(default_factory=dict)  # records used, for the manifest
    notes: list[str] = field(default_factory=list)


def load_or_profile(inventory: Path, devices: list[Device], recipe: Recipe,
                    opts: SshOptions) -> dict[str, dict[str, Any]]:
    """Cached profiles of `devices`; profiles the missing ones (and caches them) unless the
    recipe sets plan.memory_budget."""
    path = fleet_budget.profiles_path(inventory)
    records = fleet_budget.load_profiles(path)
    missing = [d for d in devices if d.name not in records]
    if missing and fleet_budget.fixed_bytes(recipe) is None:  # a set budget needs none
        from ftte_cli.fleet.profile import ProfileRequest, profile_fleet, save_profiles

        log.info("profiling %s", ", ".join(d.name for d in missing))
        results = profile_fleet(missing, opts, ProfileRequest(recipe=recipe))
        records = save_profiles(path, results)
    return {d.name: records[d.name] for d in devices if d.name in records}


def fleet_budget_for(recipe: Recipe, records: dict[str, dict[str, Any]],
                     devices: list[Device],
                     data_bytes: Optional[dict[str, int]] = None) -> fleet_budget.FleetBudget:
    """M_min over the devices with a profile (the recipe's memory_budget overrides);
    `data_bytes`: each device's data shard, which its agent holds besides the plan."""
    fixed = fleet_budget.fixed_bytes(recipe)
    if fixed is not None and not records:
        return fleet_budget.fleet_budget([], fixed)
    names = [d.name for d in devices if d.name in records]
    return fleet_budget.recipe_budget(records, recipe.plan.safety_margin, fixed, names,
                                      data_bytes=data_bytes)


def choose_plan(recipe: Recipe, model: nn.Module, devices: list[Device], input_shape: tuple,
                num_classes: int, proxy: Any, records: dict[str, dict[str, Any]],
                data_bytes: Optional[dict[str, int]] = None) -> PlanChoice:
    """The plan for the recipe's strategy and the devices that can train it."""
    budget = fleet_budget_for(recipe, records, devices, data_bytes)
    if recipe.strategy.name == "ftte":
        plan, notes = _plan_fitting_each_device(recipe, model, devices, input_shape, num_classes,
                                                proxy, budget)
        return PlanChoice(plan, devices, budget=budget, profiles=records, notes=notes)
    full = training_memory(model, dense_plan(model, recipe.model.name), recipe.train.batch_size,
                           input_shape, recipe.train.momentum).total
    plan = dense_plan(model, recipe.model.name)
    plan = _with_memory(plan, full)
    if recipe.strategy.name != "fedavg":
        return PlanChoice(plan, devices, budget=budget, profiles=records)
    return _fedavg_members(recipe, plan, devices, budget, records,
                           _full_per_device(recipe, model, plan, devices, input_shape, full))


def _full_per_device(recipe: Recipe, model: nn.Module, plan: Plan, devices: list[Device],
                     input_shape: tuple, full: int) -> dict[str, int]:
    """Full training memory of each device at its own (ftte_train) batch size."""
    from ftte_cli.config.inventory import device_train

    out = {}
    for d in devices:
        cfg = device_train(recipe.train, d)
        out[d.name] = full if cfg == recipe.train else training_memory(
            model, plan, cfg.batch_size, input_shape, cfg.momentum).total
    return out


def _usable(budget: fleet_budget.FleetBudget) -> dict[str, int]:
    """Device -> the memory its training may use (the recipe's budget, when set, for all)."""
    if budget.overridden:
        return {}
    return {d.name: d.usable_bytes for d in budget.devices}


def _plan_fitting_each_device(recipe: Recipe, model: nn.Module, devices: list[Device],
                              input_shape: tuple, num_classes: int, proxy: Any,
                              budget: fleet_budget.FleetBudget) -> tuple[Plan, list[str]]:
    """The FTTE plan under M_min, checked on every device at its own batch size (inventory
    ftte_train). When a larger batch overflows a device, the plan's budget (at the recipe's
    batch) is bisected down to the largest one whose plan fits every device; the unit scores
    are computed once. BudgetInfeasible when not even the head fits some device."""
    from ftte_cli.config.inventory import device_train
    from ftte_cli.engine.selection import select

    usable = _usable(budget)
    own = {d.name: device_train(recipe.train, d) for d in devices if d.train}

    def overflow(plan: Plan) -> dict[str, int]:
        return {name: training_memory(model, plan, cfg.batch_size, input_shape,
                                      cfg.momentum).total - usable.get(name, budget.m_min)
                for name, cfg in own.items()}

    first = select(model, recipe, proxy, budget.m_min, input_shape, num_classes)
    over = overflow(first.plan)
    notes = [f"{n}: batch size {c.batch_size} checked against its own memory"
             for n, c in own.items() if c.batch_size != recipe.train.batch_size]
    if all(v <= 0 for v in over.values()):
        return first.plan, notes
    worst = max(over, key=lambda n: over[n])
    lo, hi, best = 0, budget.m_min, None
    for _ in range(10):
        mid = (lo + hi) // 2
        try:
            plan = select(model, recipe, proxy, mid, input_shape, num_classes, reuse=first).plan
        except BudgetInfeasible:
            lo = mid
            continue
        if all(v <= 0 for v in overflow(plan).values()):
            best, lo = plan, mid
        else:
            hi = mid
    if best is None:
        raise BudgetInfeasible(
            f"inventory: {worst}: ftte_train batch size {own[worst].batch_size} leaves no plan "
            f"that fits its memory ({format_size(usable.get(worst, budget.m_min))})",
            budget.m_min)
    notes.append(f"{worst}: batch size {own[worst].batch_size} needed "
                 f"{format_size(over[worst])} more than it has; plan chosen under "
                 f"{format_size(lo)} at the recipe's batch size instead")
    return best, notes


def _with_memory(plan: Plan, full: int) -> Plan:
    from dataclasses import replace

    return replace(plan, estimated_bytes=full, full_training_bytes=full)


def _fedavg_members(recipe: Recipe, plan: Plan, devices: list[Device],
                    budget: fleet_budget.FleetBudget, records: dict[str, dict[str, Any]],
                    fulls: dict[str, int]) -> PlanChoice:
    usable = {d.name: d.usable_bytes for d in budget.devices}
    if budget.overridden:  # the recipe's budget stands for every device
        usable = {d.name: budget.m_min for d in devices}
    short = {d.name: usable[d.name] for d in devices
             if d.name in usable and usable[d.name] < fulls[d.name]}
    why = {name: f"usable {format_size(u)} < full training {format_size(fulls[name])}"
           for name, u in short.items()}
    full = min(fulls.values(), default=0)
    if recipe.strategy.baseline_memory == "lenient":
        notes = [f"baseline_memory lenient: {n} kept although {w}" for n, w in why.items()]
        return PlanChoice(plan, devices, budget=budget, profiles=records, notes=notes)
    members = [d for d in devices if d.name not in short]
    if not members:
        raise BudgetInfeasible(
            f"{recipe.source or 'recipe'}: strategy.baseline_memory: strict FedAvg excludes every "
            f"device (full training needs {format_size(full)}, the largest usable memory is "
            f"{format_size(max(usable.values(), default=0))}); use FTTE or baseline_memory: "
            "lenient", full)
    return PlanChoice(plan, members, excluded=why, budget=budget, profiles=records,
                      notes=[f"baseline_memory strict: excluded {n} ({w})" for n, w in why.items()])


def check_devices(devices: list[Device]) -> None:
    """A run needs at least one device."""
    if not devices:
        raise ConfigError("inventory: no devices selected (check --limit)")


# ---- plan and deploy (the server side of `ftte deploy` and `ftte train`) ------------------


@dataclass(frozen=True)
class FleetPlan:
    """What deploying needs besides the devices: the data split, the plan and the start model."""

    fed: FederatedData  # one client per inventory device
    choice: PlanChoice  # the plan and who trains it
    params: dict[str, torch.Tensor]  # initial model (startmodel.model_params)
    start: StartInfo  # where the initial model came from (warm start figures)


def fleet_plan(recipe: Recipe, inventory: Path, devices: list[Device], selected: list[Device],
               opts: SshOptions) -> FleetPlan:
    """Profiles -> fleet budget -> plan, as `ftte train` does (profiles missing ones first).

    `devices` is the whole inventory (shards follow inventory order). Devices without a profile
    (e.g. no torch yet) are left out of the budget; deploying still pre-checks them and says
    what is missing before anything is copied.
    """
    check_devices(selected)
    fed = load_federated(recipe.data, len(devices), recipe.seed, recipe.init)
    records = load_or_profile(inventory, selected, recipe, opts)
    profiled = [d for d in selected if d.name in records] or selected
    model, start = start_model(recipe, fed.input_shape, fed.num_classes, fed)
    choice = choose_plan(recipe, model, profiled, fed.input_shape, fed.num_classes, fed.proxy,
                         records, shard_bytes(fed, devices))
    params = model_params(model)
    return FleetPlan(fed, choice, params, start)


def shard_bytes(fed: FederatedData, devices: list[Device]) -> dict[str, int]:
    """Device -> bytes of the data shard its bundle carries (client i goes to device i; a device
    training on its own `ftte_data` file gets none from us)."""
    out = {}
    for device, client in zip(devices, fed.clients):
        if device.data is None:
            tensors = (client.train.x, client.train.y, client.test.x, client.test.y)
            out[device.name] = sum(t.numel() * t.element_size() for t in tensors)
    return out


def plan_and_deploy(recipe: Recipe, inventory: Path, devices: list[Device],
                    selected: list[Device], opts: SshOptions, *, dry_run: bool = False,
                    root: Optional[Path] = None, planned: Optional[FleetPlan] = None,
                    say: Callable[[str], None] = lambda _message: None) -> FleetResults:
    """Pre-check, `fleet_plan` for the devices that passed (unless given), build every bundle,
    ship them; devices that failed the pre-check keep their result (nothing was copied)."""
    from ftte_cli.fleet.bundle import DEFAULT_ROOT, build_bundles
    from ftte_cli.fleet.deploy import precheck_fleet, ship_bundles

    say(f"checking {len(selected)} devices (python, torch, safetensors)")
    checks = precheck_fleet(selected, opts)
    ready = [d for d in selected if checks[d.name].outcome.succeeded]
    if not ready:
        return checks
    if planned is None:
        say("profiles -> memory budget -> plan (profiling devices without a cached profile)")
        planned = fleet_plan(recipe, inventory, devices, ready, opts)
    say(f"building {len(devices)} bundles")
    bundles = build_bundles(recipe, devices, planned.choice.plan, fed=planned.fed,
                            params=planned.params, root=root or DEFAULT_ROOT)
    say(f"{'checking' if dry_run else 'shipping'} bundles on {len(ready)} devices")
    shipped = ship_bundles(ready, bundles, opts, dry_run=dry_run)
    return FleetResults({d.name: shipped.results.get(d.name) or checks[d.name]
                         for d in selected})
