"""Choose recipe defaults by measurement on the training subjects only (issue 10, part 3).

    .venv/bin/python benchmarks/choose_defaults.py [--recipe recipes/har.yaml] [--width 1]
        [--clients 40] [--stragglers 0.9] [--budget-fraction 0.2 | --fleet-budget]
        [--validation windows|subjects] [--versions 150 | --horizon SECONDS] [--seeds 1,2]
        [--options a,b] [--curves out.json]

Each option is one FTTE simulation on the same world. The global test split (unseen subjects) is
never looked at, so a default chosen here is not tuned on the test set. Validation:
- `windows`: every client's own held-out part (`data.client_test_fraction`): windows of the
  people who train, so it measures fit, not generalisation to new people;
- `subjects`: a third of the training subjects (every third in sorted order) leave the
  federation, their clients with them, and all their windows are the validation set: accuracy on
  people the federation never saw, as the test split measures, from training subjects only.
Besides FTTE's options, two references decompose a gap: FTTE's aggregation on the dense plan,
and FedBuff as published (same world, same validation). Printed: validation accuracy at the
end, its best and the mean of the last five evaluations, per option, mean over seeds, with the
difference to the first option run. `--horizon` judges at a
fixed virtual time instead of a version count: an option whose versions take longer (a
micro-batched plan's slower passes) gets fewer of them, as on a real fleet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import Recipe, ServerOptimizerConfig, load_recipe  # noqa: E402
from ftte_cli.engine import selection  # noqa: E402
from ftte_cli.engine.data import Dataset  # noqa: E402
from ftte_cli.sim.runner import SimSettings, World, prepare, run_strategy  # noqa: E402

TOLERANCE = "micro_batch_tolerance"  # an option key that sets selection's, not the strategy's
RUN_AS = "run_as"  # an option key: run another strategy (a reference), not FTTE
DENSE_PLAN = "dense_plan"  # an option key: FTTE's aggregation on the dense plan (no budget)
OPTIONS: Dict[str, Dict[str, object]] = {
    "default (normalizer weights, no server optimiser)": {},
    "normalizer buffer (1/K)": {"normalizer": "buffer"},
    "variance_beta 0 (age weight only)": {"variance_beta": 0.0},
    "server lr 0.5": {"server_lr": 0.5},
    "server momentum 0.9, lr 0.1": {"server_optimizer": ServerOptimizerConfig("momentum", lr=0.1)},
    "server adam, lr 0.01": {"server_optimizer": ServerOptimizerConfig("adam", lr=0.01)},
    # the plan, not the strategy: selection's micro-batch tolerance (0: the highest-value plan)
    "micro-batch tolerance 0 (highest-value plan)": {TOLERANCE: 0.0},
    "server lr half-life 100 versions": {"server_lr_halflife": 100.0},
    "server lr half-life 200 versions": {"server_lr_halflife": 200.0},
    "server lr constant (half-life 0)": {"server_lr_halflife": 0.0},
    # references for decomposing a gap (issue 10): the plan's share against the aggregation's
    "FTTE aggregation on the dense plan": {DENSE_PLAN: True},
    "FedBuff (dense, published; reference)": {RUN_AS: "fedbuff"},
}
VALIDATION_CAP = 1200  # validation windows per evaluation (a seeded subset): evaluations stay cheap


def _pool(parts: List[Dataset]) -> Dataset:
    return Dataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _cap(data: Dataset, n: int) -> Dataset:
    if len(data) <= n:
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    return Dataset(data.x[idx], data.y[idx])


def held_out_subjects(subjects: List[int], folds: int = 3) -> List[int]:
    """Every `folds`-th training subject in sorted order: the people left out of the federation."""
    return sorted(subjects)[::folds]


def validate_on(world: World, how: str) -> None:
    """Point `world`'s test set at a validation set of training subjects (see the docstring)."""
    clients = world.data.clients
    if how == "windows":
        world.data = replace(world.data, test=_cap(_pool([c.test for c in clients]),
                                                   VALIDATION_CAP))
        return
    groups = [set() if c.train.groups is None else set(c.train.groups.tolist()) for c in clients]
    held = set(held_out_subjects(sorted(set().union(*groups))))
    keep = [i for i, g in enumerate(groups) if not g & held]
    out = [c for i, c in enumerate(clients) if i not in keep]
    if not out:
        raise SystemExit("--validation subjects: the data set has no subjects (groups)")
    val = _pool([c.train for c in out] + [c.test for c in out])
    world.data = replace(world.data, clients=[clients[i] for i in keep],
                         test=_cap(val, VALIDATION_CAP))
    world.fleet = [world.fleet[i] for i in keep]


CURVES: Dict[str, List[Tuple[float, int, float]]] = {}  # "option / seed" -> (s, version, acc)


def run(recipe: Recipe, args: argparse.Namespace, seed: int, change: Dict[str, object]
        ) -> Tuple[float, float, float]:
    """(final, best, mean of the last 5) validation accuracy of FTTE with `change` applied."""
    change = dict(change)
    tolerance = change.pop(TOLERANCE, selection.MICRO_BATCH_TOLERANCE)
    name = str(change.pop(RUN_AS, "ftte"))
    dense = bool(change.pop(DENSE_PLAN, False))
    assert isinstance(tolerance, float)
    stop = (replace(recipe.stop, max_versions=args.versions, eval_every=4) if args.horizon is None
            else replace(recipe.stop, max_versions=10**6, time_limit=args.horizon, eval_every=4))
    recipe = replace(recipe, strategy=replace(recipe.strategy, **change),  # type: ignore[arg-type]
                     stop=stop)
    fraction = None if args.fleet_budget else args.budget_fraction
    default, selection.MICRO_BATCH_TOLERANCE = selection.MICRO_BATCH_TOLERANCE, tolerance
    try:
        world = prepare(SimSettings(recipe=recipe, clients=args.clients,
                                    stragglers=args.stragglers, seed=seed,
                                    budget_fraction=fraction, strategies=("ftte",),
                                    stop_at_target=False, eval_samples=None))
    finally:
        selection.MICRO_BATCH_TOLERANCE = default
    validate_on(world, args.validation)
    if dense:  # the same world, every client trains the whole model with FTTE's aggregation
        world.ftte, world.costs["ftte"] = world.dense, world.costs["dense"]
    plan = world.dense if name != "ftte" else world.ftte
    share = plan.trainable_params / plan.total_params
    print(f"  seed {seed}: plan {share:.1%}, micro-batch {plan.micro_batch}, "
          f"{plan.estimated_bytes} B, x{world.costs['ftte'].pass_slowdown:.2f} per sample",
          file=sys.stderr)
    result = run_strategy(world, name).metrics
    evals = result.evals
    label = f"{name}{' dense plan' if dense else ''} {change} tolerance {tolerance} / seed {seed}"
    CURVES[label] = [(e.time, e.version, e.accuracy) for e in evals]
    marks = ", ".join(f"{e.time:.0f}s v{e.version} {e.accuracy:.3f}" for e in evals[3::4])
    print(f"  seed {seed}: {len(result.version_times)} versions; {marks}", file=sys.stderr)
    last = [e.accuracy for e in evals[-5:]]
    return evals[-1].accuracy, max(e.accuracy for e in evals), statistics.fmean(last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/har.yaml")
    parser.add_argument("--width", type=float, default=None,
                        help="model width for the measurement (default: the recipe's)")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--stragglers", type=float, default=0.9)
    parser.add_argument("--budget-fraction", type=float, default=0.2)
    parser.add_argument("--fleet-budget", action="store_true",
                        help="FTTE's budget from the simulated fleet, as `ftte simulate` has it")
    parser.add_argument("--validation", choices=("windows", "subjects"), default="subjects")
    parser.add_argument("--versions", type=int, default=150)
    parser.add_argument("--horizon", type=float, default=None,
                        help="virtual seconds to judge at (instead of --versions)")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--curves", default=None,
                        help="write every evaluation (time, version, accuracy) per run as JSON")
    parser.add_argument("--options", default="",
                        help="comma-separated option numbers (0 = default) to run; default all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    if args.width is not None:
        recipe = replace(recipe, model=replace(recipe.model, width=args.width))
    seeds = [int(s) for s in args.seeds.split(",")]
    names = list(OPTIONS)
    picked = [names[int(i)] for i in args.options.split(",")] if args.options else names
    rows: List[Tuple[str, float, float, float]] = []
    for name in picked:
        results = [run(recipe, args, s, OPTIONS[name]) for s in seeds]
        final, best, last5 = (statistics.fmean(r[k] for r in results) for k in range(3))
        rows.append((name, final, best, last5))
        print(f"  measured: {name}: final {final:.3f}, best {best:.3f}, last 5 {last5:.3f}",
              file=sys.stderr)
    if args.curves:
        Path(args.curves).write_text(json.dumps(CURVES, indent=1))
    budget = "fleet" if args.fleet_budget else f"{args.budget_fraction:.0%}"
    length = (f"{args.versions} versions" if args.horizon is None
              else f"{args.horizon:.0f} virtual s")
    where = {"subjects": "held-out training subjects",
             "windows": "the training subjects' held-out windows"}[args.validation]
    print(f"validation accuracy ({where}), FTTE, "
          f"{args.clients} clients, {args.stragglers:.0%} stragglers, budget {budget}, "
          f"{length}, width {recipe.model.width}, seeds {args.seeds}")
    base = rows[0][3]
    print(f"{'option':52s} {'final':>6s} {'best':>6s} {'last 5':>6s} {'vs first':>9s}")
    for name, final, best, last5 in rows:
        print(f"{name:52s} {final:6.3f} {best:6.3f} {last5:6.3f} {100 * (last5 - base):+8.1f}p")


if __name__ == "__main__":
    main()
