"""The demo's recipe on the default testbed fleet: the budget binds (issue 11, part 4).

recipes/har-demo.yaml is chosen so the emulated Pi Zero 2 W cannot train the model in full: the
plan must be sparse, bound by that device, and strict FedAvg must leave it out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.testbed import Testbed

from ftte_cli.api import fleet_plan, load_recipe
from ftte_cli.config.inventory import load_inventory
from ftte_cli.fleet.ssh import SshOptions

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

REPO = Path(__file__).resolve().parents[2]


def test_demo_recipe_gets_a_sparse_plan_bound_by_the_pi_zero(testbed: Testbed,
                                                             tmp_path: Path) -> None:
    if not testbed.isolated:  # without root the devices are uncapped: nothing binds
        return
    inventory = tmp_path / "inventory.yaml"  # a copy: the profiles cache lands in tmp_path
    inventory.write_text(yaml.safe_dump(yaml.safe_load(testbed.inventory.read_text())))
    devices = list(load_inventory(inventory).devices.values())
    recipe = load_recipe(REPO / "recipes" / "har-demo.yaml")
    planned = fleet_plan(recipe, inventory, devices, devices,
                         SshOptions(connect_timeout=20.0, command_timeout=300.0))
    plan, budget = planned.choice.plan, planned.choice.budget
    zero = testbed.by_class("pi-zero-2").name
    assert budget is not None and budget.bound_by == zero
    assert plan.trainable_params < 0.5 * plan.total_params  # sparse, not dense in micro-batches
    assert plan.estimated_bytes is not None and plan.full_training_bytes is not None
    assert plan.estimated_bytes <= budget.m_min < plan.full_training_bytes
    usable = {d.name: d.usable_bytes for d in budget.devices}
    excluded = [n for n, u in usable.items() if u < plan.full_training_bytes]
    assert excluded == [zero]  # strict FedAvg would lose the Pi Zero 2, and only it
