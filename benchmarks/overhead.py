"""Simulator overhead: total process CPU of a simulation / CPU spent inside local training.

    .venv/bin/python benchmarks/overhead.py [--clients 100] [--stragglers 0.9]
        [--strategies ftte,fedbuff,fedavg] [--recipe recipes/har.yaml] [--budget-fraction F]

Everything that is not `train_job` (data set-up, plan selection, the coordinator, aggregation,
evaluation, the event loop) is overhead; the aim is a ratio <= 1.15. torch runs on one thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import load_recipe  # noqa: E402
from ftte_cli.sim.runner import SimSettings, prepare, run_strategy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/har.yaml")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--stragglers", type=float, default=0.9)
    parser.add_argument("--strategies", default="ftte,fedbuff,fedavg")
    parser.add_argument("--budget-fraction", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = SimSettings(recipe=load_recipe(args.recipe),
                           strategies=tuple(args.strategies.split(",")), clients=args.clients,
                           stragglers=args.stragglers, seed=args.seed,
                           budget_fraction=args.budget_fraction)
    wall, cpu = time.perf_counter(), time.process_time()
    world = prepare(settings)
    setup = time.process_time() - cpu
    train = run_cpu = 0.0
    print(f"{args.clients} clients, {args.stragglers:.0%} stragglers; set-up {setup:.1f} s CPU")
    for name in settings.strategies:
        res = run_strategy(world, name)
        train += res.train_cpu_s
        run_cpu += res.cpu_s
        jobs = res.metrics.jobs_dispatched
        print(f"  {name:9s} versions {res.summary.versions:4d}  jobs {jobs:5d}"
              f"  cpu {res.cpu_s:6.1f} s  in train_job {res.train_cpu_s:6.1f} s"
              f"  ratio {res.cpu_s / max(res.train_cpu_s, 1e-9):.3f}")
    total = time.process_time() - cpu
    print(f"wall {time.perf_counter() - wall:.1f} s, process CPU {total:.1f} s, "
          f"inside train_job {train:.1f} s")
    print(f"CPU ratio (runs only) {run_cpu / max(train, 1e-9):.3f}")
    print(f"CPU ratio (total, incl. set-up) {total / max(train, 1e-9):.3f}  (aim <= 1.15)")


if __name__ == "__main__":
    main()
