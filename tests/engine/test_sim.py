"""The simulator on a fixed seed: clock, device models, profiles, and bit-identical reruns."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.simkit import tiny_recipe

from ftte_cli.config.recipe import ServerOptimizerConfig, SimConfig
from ftte_cli.engine.plan import FROZEN, FULL, MaskKind, ParamMask, build_plan
from ftte_cli.engine.runtime_cost import STEP_OVERHEAD_BYTES, TORCH_RUNTIME_BYTES
from ftte_cli.errors import ConfigError
from ftte_cli.sim.clock import VirtualClock
from ftte_cli.sim.devices import (
    DEFAULT_MIX,
    DEVICE_CLASSES,
    ComputeCost,
    DeviceModel,
    apportion,
    compute_cost,
    job_seconds,
    load_profiles,
    make_fleet,
    trained_fractions,
    with_stragglers,
)
from ftte_cli.sim.runner import SimSettings, prepare, run_strategy, simulate


def test_clock_pops_in_time_then_schedule_order() -> None:
    clock: VirtualClock[str] = VirtualClock()
    clock.schedule(5.0, "late")
    clock.schedule(1.0, "a")
    clock.schedule(1.0, "b")
    assert [clock.pop()[1] for _ in range(3)] == ["a", "b", "late"]
    assert clock.now == 5.0
    clock.schedule(2.0, "past")  # clamped to now
    assert clock.pop() == (5.0, "past")


def test_job_time_is_latency_transfer_and_compute() -> None:
    dev = DeviceModel("d", memory_bytes=1, bandwidth_bps=8e6, latency_s=0.1, flops_per_s=1e9,
                      slowdown=2.0)
    cost = ComputeCost(forward_flops=1_000_000, train_flops=3_000_000, full_train_flops=3_000_000)
    # 0.1 + 8 * (1e6 + 5e5) / 8e6 + 3e6 * 100 / 1e9 * 2
    assert job_seconds(dev, cost, 100, 1_000_000, 500_000) == pytest.approx(0.1 + 1.5 + 0.6)
    prof = DeviceModel("p", 1, 8e6, 0.0, sec_per_sample_fwd=0.01, sec_per_sample_bwd=0.02)
    half = ComputeCost(1, 2, 3)  # backward of this plan = half the dense backward
    assert job_seconds(prof, half, 10, 0, 0) == pytest.approx(10 * (0.01 + 0.5 * 0.02))


def test_sparse_plan_costs_less_backward() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    head = build_plan(model, {"2.weight": FULL, "2.bias": FULL, "0.weight": FROZEN})
    mid = build_plan(model, {"1.weight": ParamMask(MaskKind.channels, (0, 1)), "2.weight": FULL})
    assert trained_fractions(mid) == {"1": 0.25, "2": 1.0}
    flops = {"0": 100, "1": 100, "2": 100}
    dense = build_plan(model, {n: FULL for n, _ in model.named_parameters()})
    c_dense, c_mid, c_head = (compute_cost(flops, p) for p in (dense, mid, head))
    assert c_dense.train_flops == 300 + 200 + 300
    assert c_head.train_flops == 300 + 100 < c_mid.train_flops == 300 + 100 + 25 + 100
    assert c_head.backward_share == pytest.approx(100 / 500)


def test_fleet_draws_and_stragglers_are_seeded() -> None:
    cfg = SimConfig(clients=20, memory_mb=(64.0, 512.0))
    a, b = make_fleet(cfg, 20, seed=1), make_fleet(cfg, 20, seed=1)
    assert a == b and a != make_fleet(cfg, 20, seed=2)
    assert all(64 * 2**20 <= d.memory_bytes <= 512 * 2**20 for d in a)
    slow = with_stragglers(a, 0.9, (5.0, 20.0), seed=1)
    assert sum(d.straggler for d in slow) == 18
    assert all(5.0 <= d.slowdown <= 20.0 for d in slow if d.straggler)
    assert slow == with_stragglers(a, 0.9, (5.0, 20.0), seed=1)


def test_default_fleet_is_realistic_device_classes_with_the_runtime_subtracted() -> None:
    fleet = make_fleet(SimConfig(), 40, seed=3, margin_bytes=4 * 2**20)
    counts = {name: sum(d.device_class == name for d in fleet) for name in DEFAULT_MIX}
    assert counts == {"pi-zero-2w": 8, "pi-3b": 6, "pi-4-2gb": 6, "pi-4-4gb": 4,
                      "jetson-nano-4gb": 4, "phone-2gb": 6, "phone-4gb": 6}
    zero = DEVICE_CLASSES["pi-zero-2w"]
    # M_i = 330 MiB free - 260 MiB torch - 50 MiB step overhead - 4 MiB margin = 16 MiB
    assert zero.ram_mb == 512 and zero.usable_bytes(4 * 2**20) == 16 * 2**20
    assert TORCH_RUNTIME_BYTES + STEP_OVERHEAD_BYTES == 310 * 2**20
    assert min(d.memory_bytes for d in fleet) == 16 * 2**20
    assert all(d.memory_bytes == DEVICE_CLASSES[d.device_class].usable_bytes(4 * 2**20)
               for d in fleet if d.device_class)
    assert [d.device_class for d in fleet] != [d.device_class for d in make_fleet(
        SimConfig(), 40, seed=4, margin_bytes=4 * 2**20)]  # shuffled by the seed
    # every class with a share >= 1/N is present, even in a small fleet
    assert sorted(apportion(DEFAULT_MIX, 4)) == ["phone-2gb", "pi-3b", "pi-4-2gb", "pi-zero-2w"]
    with pytest.raises(ConfigError, match="sim.devices: unknown device class 'pi9'"):
        make_fleet(SimConfig(devices={"pi9": 1.0}), 4, seed=1)


def test_profiles_are_cycled_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    good = {"name": "pi4", "mem_available_bytes": 300_000_000, "sec_per_sample_fwd": 0.002,
            "sec_per_sample_bwd": 0.004, "bandwidth_bps": 2e7, "rtt_s": 0.01}
    path.write_text(json.dumps({"devices": [good, {**good, "name": "pi3"}]}))
    fleet = load_profiles(path, 5)
    assert [d.name for d in fleet] == ["pi4#0", "pi3#1", "pi4#2", "pi3#3", "pi4#4"]
    assert fleet[0].memory_bytes == 300_000_000 and fleet[0].latency_s == 0.01
    path.write_text(json.dumps([{**good, "bandwidth_bps": "fast"}]))
    with pytest.raises(ConfigError, match=r"profiles.json: \[0\].bandwidth_bps"):
        load_profiles(path, 1)


def _fingerprint(result: object) -> object:
    return [(r.name, r.summary, [tuple(vars(e).values()) for e in r.metrics.evals])
            for r in result.results]  # type: ignore[attr-defined]


def test_same_seed_gives_identical_results(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, dropout=0.2)
    settings = SimSettings(recipe=recipe, strategies=("fedbuff", "fedasync", "fedavg"),
                           stop_at_target=False)
    first, second = simulate(settings), simulate(settings)
    assert _fingerprint(first) == _fingerprint(second)
    by_name = {r.name: r for r in first.results}
    assert by_name["fedbuff"].summary.versions == 6
    assert by_name["fedbuff"].metrics.jobs_lost > 0  # dropout took some jobs away
    other = simulate(replace(settings, seed=4))
    assert _fingerprint(other) != _fingerprint(first)


def test_server_optimizer_runs_are_bit_identical_per_seed(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    adam = replace(recipe, strategy=replace(
        recipe.strategy, server_optimizer=ServerOptimizerConfig(kind="adam", lr=0.005)))
    settings = SimSettings(recipe=adam, strategies=("ftte", "fedbuff"), stop_at_target=False)
    first, second = simulate(settings), simulate(settings)
    assert _fingerprint(first) == _fingerprint(second)
    plain = simulate(replace(settings, recipe=recipe))
    assert _fingerprint(plain) != _fingerprint(first)  # the optimiser changed the trajectory


def test_ftte_sparse_plan_moves_fewer_bytes_and_trains_in_virtual_time(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, budget="null")
    # 30% of full training: at 60% micro-batches hold every parameter (passes of 4 samples)
    world = prepare(SimSettings(recipe=recipe, budget_fraction=0.3, stop_at_target=False))
    assert world.ftte.method != "dense"
    assert world.ftte.estimated_bytes <= world.budget_bytes  # type: ignore[operator]
    assert world.costs["ftte"].train_flops < world.costs["dense"].train_flops
    ftte = run_strategy(world, "ftte")
    fedbuff = run_strategy(world, "fedbuff")
    assert ftte.summary.versions == fedbuff.summary.versions == 6
    per_job = ftte.metrics.bytes_total / ftte.metrics.jobs_dispatched
    assert per_job < fedbuff.metrics.bytes_total / fedbuff.metrics.jobs_dispatched
    assert ftte.summary.memory_per_device < fedbuff.summary.memory_per_device  # type: ignore[operator]
    assert ftte.summary.best_accuracy > 0.3  # real training happened
    assert ftte.train_cpu_s > 0 and ftte.summary.duration > 0


def test_strict_baseline_memory_excludes_small_clients(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    small = replace(recipe, sim=replace(recipe.sim, memory_mb=(0.5, 5.0)))
    world = prepare(SimSettings(recipe=small, stop_at_target=False))
    full = world.dense.estimated_bytes
    expect = sum(d.memory_bytes < full for d in world.fleet)  # type: ignore[operator]
    assert 0 < expect < len(world.fleet)
    result = run_strategy(world, "fedavg")
    assert result.excluded == expect and result.clients == len(world.fleet) - expect
    assert sorted(r.device for r in result.excluded_clients) == sorted(
        d.name for d in world.fleet if d.memory_bytes < full)  # type: ignore[operator]
    # strict exclusion is FedAvg's alone: the asynchronous baselines keep every client and
    # list the ones full training overflows
    fedbuff = run_strategy(world, "fedbuff")
    assert fedbuff.excluded == 0 and fedbuff.clients == len(world.fleet)
    assert len(fedbuff.over_memory) == expect
