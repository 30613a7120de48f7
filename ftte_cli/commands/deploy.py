"""`ftte deploy`: build each device's bundle and ship it (checks first, atomic, skipped if same)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ftte_cli.commands.options import (
    AcceptNewHostKeysOpt,
    CommandTimeoutOpt,
    ConnectTimeoutOpt,
    ForksOpt,
    FormatOpt,
    InventoryOpt,
    KnownHostsOpt,
    LimitOpt,
    select_devices,
    ssh_options,
)
from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import Recipe, load_recipe
from ftte_cli.fleet.ssh import FleetResults, SshOptions
from ftte_cli.output import Format, err_console, handle_errors

if TYPE_CHECKING:
    import torch  # noqa: F401 (annotations only: keep `ftte --help` fast)

log = logging.getLogger(__name__)

RecipeOpt = Annotated[Path, typer.Option("--recipe", "-r", help="Training recipe YAML.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Run the checks and say what would change; copy nothing.")
]


def deploy(
    recipe: RecipeOpt,
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    dry_run: DryRunOpt = False,
    forks: ForksOpt = 10,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    command_timeout: CommandTimeoutOpt = 120.0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Ship the recipe's bundle (runtime, plan, model, data shard, token) to every device."""
    from ftte_cli.fleet.recap import exit_with, render_recap

    with handle_errors(fmt):
        rec = load_recipe(recipe)
        inv, selected = select_devices(inventory, limit)
        opts = ssh_options(forks=forks, accept_new_host_keys=accept_new_host_keys,
                           known_hosts=known_hosts, connect_timeout=connect_timeout,
                           command_timeout=command_timeout)
        with _status(fmt) as say:
            results = plan_and_deploy(rec, inventory, list(inv.devices.values()), selected,
                                      opts, dry_run=dry_run, say=say)
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


@dataclass(frozen=True)
class FleetPlan:
    """What deploying needs besides the devices: the data split, the plan and the start model."""

    fed: Any  # engine.data.FederatedData, one client per inventory device
    choice: Any  # train.planning.PlanChoice: the plan and who trains it
    params: dict[str, torch.Tensor]  # initial model (fleet.bundle.initial_params)


def fleet_plan(recipe: Recipe, inventory: Path, devices: list[Device], selected: list[Device],
               opts: SshOptions) -> FleetPlan:
    """Profiles -> fleet budget -> plan, as `ftte train` does (profiles missing ones first).

    `devices` is the whole inventory (shards follow inventory order). Devices without a profile
    (e.g. no torch yet) are left out of the budget; deploying still pre-checks them and says
    what is missing before anything is copied.
    """
    from ftte_cli.engine.data import load_federated
    from ftte_cli.fleet.bundle import initial_model, initial_params
    from ftte_cli.train.planning import check_devices, choose_plan, load_or_profile

    check_devices(selected)
    fed = load_federated(recipe.data, len(devices), recipe.seed)
    records = load_or_profile(inventory, selected, recipe, opts)
    profiled = [d for d in selected if d.name in records] or selected
    model = initial_model(recipe, fed.input_shape, fed.num_classes)
    choice = choose_plan(recipe, model, profiled, fed.input_shape, fed.num_classes, fed.proxy,
                         records)
    return FleetPlan(fed, choice, initial_params(recipe, fed.input_shape, fed.num_classes))


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
