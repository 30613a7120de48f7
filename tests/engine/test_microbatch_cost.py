"""The simulator charges a micro-batched plan its measured slowdown per sample (issue 10)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers.simkit import tiny_recipe

from ftte_cli.engine.plan import FULL, build_plan
from ftte_cli.sim.devices import (
    PASS_SLOWDOWN,
    ComputeCost,
    DeviceModel,
    compute_cost,
    compute_seconds,
    job_seconds,
    pass_slowdown,
)
from ftte_cli.sim.runner import SimSettings, prepare


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))


def test_pass_slowdown_is_the_measured_ratio_to_whole_batches() -> None:
    assert pass_slowdown(32, 32) == 1.0 and pass_slowdown(64, 32) == 1.0
    assert pass_slowdown(8, 32) == pytest.approx(1.38)
    assert pass_slowdown(1, 32) == pytest.approx(2.4)  # measured below the pass of 2 (3.1)
    assert pass_slowdown(8, 64) == pytest.approx(1.38)  # 64 and more count as 32
    assert pass_slowdown(4, 16) == pytest.approx(1.9 / 1.08)  # relative to the batch's own pass
    # 12 lies between the measured 8 and 16: linear in log2, 1.38 + 0.585 x (1.08 - 1.38)
    assert pass_slowdown(12, 32) == pytest.approx(1.38 + (math.log2(12) - 3) * -0.30)
    assert PASS_SLOWDOWN[32] == 1.0


def test_micro_batched_plan_is_charged_its_slowdown() -> None:
    model = _model()
    masks = {n: FULL for n, _ in model.named_parameters()}
    whole = build_plan(model, masks)
    micro = build_plan(model, masks, micro_batch=8)
    flops = {"0": 100, "1": 100}
    assert compute_cost(flops, whole, 32).pass_slowdown == 1.0
    assert compute_cost(flops, micro, 32).pass_slowdown == pytest.approx(1.38)
    assert compute_cost(flops, micro).pass_slowdown == 1.0  # no batch size given: not charged
    assert compute_cost(flops, micro, 8).pass_slowdown == 1.0  # micro-batch = batch: one pass
    dev = DeviceModel("d", memory_bytes=1, bandwidth_bps=8e6, latency_s=0.1, flops_per_s=1e9,
                      slowdown=2.0)
    cost = ComputeCost(1_000_000, 3_000_000, 3_000_000, pass_slowdown=1.38)
    # 0.1 + 8 * 1.5e6 / 8e6 + 3e6 * 100 / 1e9 * 1.38 * 2
    assert job_seconds(dev, cost, 100, 1_000_000, 500_000) == pytest.approx(0.1 + 1.5 + 0.828)
    prof = DeviceModel("p", 1, 8e6, 0.0, sec_per_sample_fwd=0.01, sec_per_sample_bwd=0.02)
    assert compute_seconds(prof, ComputeCost(1, 2, 3, 1.9), 10) == pytest.approx(
        10 * (0.01 + 0.5 * 0.02) * 1.9)


def test_plans_without_micro_batching_keep_bit_identical_times() -> None:
    model = _model()
    plan = build_plan(model, {n: FULL for n, _ in model.named_parameters()})
    flops = {"0": 1234, "1": 567}
    dev = DeviceModel("d", memory_bytes=1, bandwidth_bps=3e6, latency_s=0.07,
                      flops_per_s=1.7e9, slowdown=7.3)
    cost = compute_cost(flops, plan, 32)
    before = cost.train_flops / 1.7e9 * 333 * 7.3  # the formula before micro-batches were charged
    assert compute_seconds(dev, cost, 333) == before


def test_simulated_world_charges_its_micro_batched_plan(tmp_path: Path) -> None:
    # 60% of full training: micro-batches hold every parameter (as in test_sim's tiny world)
    recipe = tiny_recipe(tmp_path, budget="null")
    world = prepare(SimSettings(recipe=recipe, budget_fraction=0.6, stop_at_target=False))
    micro = world.ftte.micro_batch
    assert micro is not None and micro < recipe.train.batch_size
    assert world.costs["ftte"].pass_slowdown == pass_slowdown(micro, recipe.train.batch_size) > 1
    assert world.costs["dense"].pass_slowdown == 1.0
