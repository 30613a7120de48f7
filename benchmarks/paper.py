"""The paper's comparison (FTTE.md "Headline claims") on synthetic HAR, in simulation.

    .venv/bin/python benchmarks/paper.py [--clients 100|500] [--stragglers 0,0.5,0.9]
        [--budget-fraction 0.2] [--versions 150] [--recipe recipes/har.yaml] [--seed 1]

Per straggler setting, all strategies share the clients, data and devices. FTTE's memory budget
is `--budget-fraction` x the dense training memory (the paper's "most constrained device"); if
that cannot hold even the classifier head, the next 10% step that can is used and the output
says so. FTTE and FedBuff run `--versions` model versions (so their final accuracies compare at
equal aggregation counts); FedAvg runs until it reaches the target or the recipe's time limit.
Time to target and payload to target come from each run's evaluation timeline.

Printed per setting: FTTE/FedAvg ratios of time to target, memory per device and payload to
target next to the bars we aim past (0.19, 0.20, 0.31 at 90% stragglers), and the accuracy of
FTTE, FedBuff and FedAvg side by side (bar: FTTE final within 1 point of FedBuff).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import Recipe, load_recipe  # noqa: E402
from ftte_cli.errors import BudgetInfeasible  # noqa: E402
from ftte_cli.sim.runner import (  # noqa: E402
    SimSettings,
    StrategyResult,
    World,
    prepare,
    ratio,
    run_strategy,
)
from ftte_cli.units import format_size  # noqa: E402

BARS = {"time": 0.19, "memory": 0.20, "payload": 0.31}


def _world(recipe: Recipe, clients: int, stragglers: float, seed: int,
           fraction: float) -> World:
    """The shared set-up; steps the budget up by 10% while even the head does not fit."""
    while True:
        try:
            world = prepare(SimSettings(recipe=recipe, clients=clients, stragglers=stragglers,
                                        seed=seed, budget_fraction=fraction))
            return world
        except BudgetInfeasible as err:
            print(f"  budget {fraction:.0%} of full training infeasible ({err}); "
                  f"trying {fraction + 0.1:.0%}")
            fraction = round(fraction + 0.1, 2)
            if fraction > 1.0:
                raise


def _run(world: World, name: str, versions: Optional[int]) -> StrategyResult:
    recipe = world.recipe
    if versions is not None:  # a fixed horizon of versions, not stopped at the target
        recipe = replace(recipe, stop=replace(recipe.stop, max_versions=versions))
        world = replace(world, recipe=recipe,
                        settings=replace(world.settings, stop_at_target=False))
    return run_strategy(world, name)


def _fmt(x: Optional[float], spec: str = ".3f") -> str:
    return "-" if x is None else f"{x:{spec}}"


def _row(r: StrategyResult) -> str:
    s = r.summary
    payload = "not reached" if s.payload_to_target is None else format_size(s.payload_to_target)
    return (f"  {r.name:8s} {_fmt(s.time_to_target, '9.1f'):>9s} s  final {_fmt(s.final_accuracy)}"
            f"  best {_fmt(s.best_accuracy)}  versions {s.versions:4d}"
            f"  memory {format_size(s.memory_per_device or 0):>10s}  payload {payload:>11s}"
            f"  stale {_fmt(s.staleness_mean, '.2f')}/{s.staleness_max}"
            f"  cpu {r.cpu_s:5.1f}s")


def setting(recipe: Recipe, clients: int, stragglers: float, seed: int, fraction: float,
            versions: int) -> None:
    """Run and print one straggler setting."""
    start = time.perf_counter()
    print(f"\n== {clients} clients, {stragglers:.0%} stragglers (seed {seed}) ==")
    world = _world(recipe, clients, stragglers, seed, fraction)
    full = world.dense.estimated_bytes or 0
    print(f"  FTTE plan: {world.ftte.method}, budget {format_size(world.budget_bytes)} "
          f"({world.budget_bytes / full:.0%} of full training {format_size(full)}), "
          f"{world.ftte.trainable_params}/{world.ftte.total_params} params trained, "
          f"units {world.ftte.units or ['head only']}")
    results = {
        "ftte": _run(world, "ftte", versions),
        "fedbuff": _run(world, "fedbuff", versions),
        "fedavg": _run(world, "fedavg", None),
    }
    print(f"  target accuracy {recipe.stop.target_accuracy:.2f}")
    for r in results.values():
        print(_row(r))
    f, a, b = (results[k].summary for k in ("ftte", "fedavg", "fedbuff"))
    ratios = {
        "time": ratio(f.time_to_target, a.time_to_target),
        "memory": ratio(f.memory_per_device, a.memory_per_device),
        "payload": ratio(f.payload_to_target, a.payload_to_target),
    }
    parts = []
    for key, value in ratios.items():
        verdict = "" if value is None else (" ok" if value <= BARS[key] else " missed")
        bar = f" (bar {BARS[key]:.2f}{verdict})" if stragglers >= 0.9 else ""
        parts.append(f"{key} {_fmt(value)}{bar}")
    print("  FTTE/FedAvg: " + ", ".join(parts))
    if f.final_accuracy is not None and b.final_accuracy is not None:
        gap = 100 * (f.final_accuracy - b.final_accuracy)
        print(f"  FTTE final - FedBuff final = {gap:+.1f} points (bar >= -1.0: "
              f"{'ok' if gap >= -1.0 else 'missed'})")
    for note in world.notes:
        print(f"  note: {note}")
    print(f"  ({time.perf_counter() - start:.0f} s wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/har.yaml")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--stragglers", default="0,0.5,0.9")
    parser.add_argument("--budget-fraction", type=float, default=0.2)
    parser.add_argument("--versions", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    levels: List[float] = [float(x) for x in args.stragglers.split(",")]
    print(f"paper comparison: {args.recipe}, {args.clients} clients, FTTE budget "
          f"{args.budget_fraction:.0%} of full training memory, FTTE/FedBuff {args.versions} "
          f"versions, FedAvg to target or {recipe.stop.time_limit:.0f} s virtual")
    for p in levels:
        setting(recipe, args.clients, p, args.seed, args.budget_fraction, args.versions)


if __name__ == "__main__":
    main()
