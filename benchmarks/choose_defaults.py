"""Choose recipe defaults by measurement on the training subjects only (issue 10, part 3).

    .venv/bin/python benchmarks/choose_defaults.py [--recipe recipes/har.yaml] [--width 1]
        [--clients 40] [--stragglers 0.9] [--budget-fraction 0.2] [--versions 150] [--seeds 1,2]

Each option is one FTTE simulation on the same world; accuracy is measured on a validation set
made of every client's own held-out part (`data.client_test_fraction`), which holds windows of
the training subjects only: the global test split (unseen subjects) is never looked at, so a
default chosen here is not tuned on the test set. Printed: validation accuracy at the end and its
best, per option, mean over seeds, with the difference to the current default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import Recipe, ServerOptimizerConfig, load_recipe  # noqa: E402
from ftte_cli.engine.data import Dataset  # noqa: E402
from ftte_cli.sim.runner import SimSettings, prepare, run_strategy  # noqa: E402

OPTIONS: Dict[str, Dict[str, object]] = {
    "default (normalizer weights, no server optimiser)": {},
    "normalizer buffer (1/K)": {"normalizer": "buffer"},
    "server momentum 0.9, lr 0.1": {"server_optimizer": ServerOptimizerConfig("momentum", lr=0.1)},
    "server adam, lr 0.01": {"server_optimizer": ServerOptimizerConfig("adam", lr=0.01)},
}


def _validation(world_data: object) -> Dataset:
    """Every client's held-out part pooled: training subjects only."""
    clients = world_data.clients  # type: ignore[attr-defined]
    return Dataset(torch.cat([c.test.x for c in clients]), torch.cat([c.test.y for c in clients]))


def run(recipe: Recipe, args: argparse.Namespace, seed: int, change: Dict[str, object]
        ) -> Tuple[float, float]:
    """(final, best) validation accuracy of FTTE with the strategy fields in `change`."""
    recipe = replace(recipe, strategy=replace(recipe.strategy, **change),  # type: ignore[arg-type]
                     stop=replace(recipe.stop, max_versions=args.versions))
    world = prepare(SimSettings(recipe=recipe, clients=args.clients, stragglers=args.stragglers,
                                seed=seed, budget_fraction=args.budget_fraction,
                                stop_at_target=False, eval_samples=None))
    world.data = replace(world.data, test=_validation(world.data))
    evals = run_strategy(world, "ftte").metrics.evals
    return evals[-1].accuracy, max(e.accuracy for e in evals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/har.yaml")
    parser.add_argument("--width", type=float, default=1.0,
                        help="model width for the measurement (smaller is faster)")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--stragglers", type=float, default=0.9)
    parser.add_argument("--budget-fraction", type=float, default=0.2)
    parser.add_argument("--versions", type=int, default=150)
    parser.add_argument("--seeds", default="1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    recipe = replace(recipe, model=replace(recipe.model, width=args.width))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: List[Tuple[str, float, float]] = []
    for name, change in OPTIONS.items():
        results = [run(recipe, args, s, change) for s in seeds]
        final = statistics.fmean(r[0] for r in results)
        best = statistics.fmean(r[1] for r in results)
        rows.append((name, final, best))
        print(f"  measured: {name}: final {final:.3f}, best {best:.3f}", file=sys.stderr)
    base = rows[0][1]
    print(f"validation accuracy (training subjects' held-out windows), FTTE, {args.clients} "
          f"clients, {args.stragglers:.0%} stragglers, budget {args.budget_fraction:.0%}, "
          f"{args.versions} versions, width {args.width}, seeds {args.seeds}")
    print(f"{'option':52s} {'final':>6s} {'best':>6s} {'vs default':>10s}")
    for name, final, best in rows:
        print(f"{name:52s} {final:6.3f} {best:6.3f} {100 * (final - base):+9.1f}p")


if __name__ == "__main__":
    main()
