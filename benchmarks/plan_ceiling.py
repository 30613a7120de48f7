"""The FTTE plan's central ceiling against dense training, on training subjects only (issue 10).

    .venv/bin/python benchmarks/plan_ceiling.py [--recipe recipes/har.yaml] [--seed 3]
        [--clients 40] [--epochs 4] [--folds 3] [--late] [--optimisers sgd,adam]
        [--format table|json]

Builds the world `ftte simulate` builds (same warm start, same fleet budget, same plan), pools
every client's windows and trains centrally: the plan's trainable subset (the same sparse
materialisation as a client job) and, for reference, the dense model, each with SGD at the
recipe's lr and with Adam (lr 1e-3, the well-conditioned optimiser). Validation leaves out a
fold of the training subjects (every `folds`-th in sorted order, rotated), so the figure is
accuracy on people the training never saw, as the test split measures, without looking at the
test subjects. Printed: per optimiser and epoch, the mean over folds, plan and dense side by
side, and the ratio plan / dense. If the plan's ceiling is close to dense training's, the plan's
capacity is not what holds FTTE back; its federated training is. `--late` adds the other way to
spend the budget: the last feature block whole and the head, the early layers frozen (its
estimated training memory is printed next to the budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import load_recipe  # noqa: E402
from ftte_cli.engine import sparse  # noqa: E402
from ftte_cli.engine.data import Dataset  # noqa: E402
from ftte_cli.engine.memory import training_memory  # noqa: E402
from ftte_cli.engine.plan import FULL, Plan, build_plan  # noqa: E402
from ftte_cli.engine.train import evaluate  # noqa: E402
from ftte_cli.sim.runner import SimSettings, World, prepare  # noqa: E402

ADAM_LR = 1e-3


def folds(world: World, k: int) -> List[Tuple[Dataset, Dataset]]:
    """(train, validation) per fold: validation = every k-th training subject, rotated."""
    parts = [c.train for c in world.data.clients] + [c.test for c in world.data.clients]
    x, y = torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])
    groups = torch.cat([p.groups for p in parts if p.groups is not None])
    if groups.shape != y.shape:
        raise SystemExit("plan_ceiling: the data set has no subjects (groups)")
    subjects = sorted(set(groups.tolist()))
    out = []
    for f in range(k):
        held = torch.isin(groups, torch.tensor(subjects[f::k]))
        out.append((Dataset(x[~held], y[~held]), Dataset(x[held], y[held])))
    return out


def late_plan(world: World) -> Plan:
    """The last `features.<i>` block whole and the head trainable, everything earlier frozen."""
    names = list(world.params)
    blocks = sorted({int(n.split(".")[1]) for n in names if n.startswith("features.")})
    last = f"features.{blocks[-1]}."
    head = [n for n in names if not n.startswith("features.")]
    masks = {n: FULL for n in names if n.startswith(last) or n in head}
    return build_plan(world.model, masks, model_name=world.ftte.model)


def central(world: World, plan: Plan, optimiser: str, lr: float, epochs: int, batch: int,
            train: Dataset, val: Dataset) -> List[float]:
    """Validation accuracy after each epoch of training `plan`'s subset on `train`."""
    index = sparse.channel_index(plan)
    leaves = {k: v.clone().requires_grad_(True)
              for k, v in sparse.extract(world.params, plan, index).items()}
    opt: torch.optim.Optimizer = (torch.optim.SGD(leaves.values(), lr=lr) if optimiser == "sgd"
                                  else torch.optim.Adam(leaves.values(), lr=lr))
    gen = torch.Generator().manual_seed(world.seed)
    accs = []
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), batch):
            idx = order[i:i + batch]
            params = sparse.materialize(world.params, plan, leaves, index)
            logits = functional_call(world.model, params, (train.x[idx],))
            loss = F.cross_entropy(logits, train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        accs.append(evaluate(world.model, sparse.insert(world.params, plan, leaves, index),
                             val)[0])
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/har.yaml")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--late", action="store_true",
                        help="also the last feature block + head (early layers frozen)")
    parser.add_argument("--optimisers", default="sgd,adam")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    world = prepare(SimSettings(recipe=recipe, clients=args.clients, seed=args.seed,
                                strategies=("ftte",)))
    lr, batch = recipe.train.lr, recipe.train.batch_size
    splits = folds(world, args.folds)
    rows: Dict[str, List[float]] = {}
    plans = [("plan", world.ftte), ("dense", world.dense)]
    if args.late:
        late = late_plan(world)
        est = training_memory(world.model, late, batch, world.data.input_shape,
                              recipe.train.momentum).total
        print(f"  late plan: {late.trainable_params / late.total_params:.1%} trainable, "
              f"{est} B estimated against the budget {world.budget_bytes} B", file=sys.stderr)
        plans.append(("late", late))
    optimisers = [o for o in (("sgd", lr), ("adam", ADAM_LR)) if o[0] in args.optimisers]
    for opt, opt_lr in optimisers:
        for name, plan in plans:
            runs = [central(world, plan, opt, opt_lr, args.epochs, batch, tr, va)
                    for tr, va in splits]
            rows[f"{name} {opt}"] = [statistics.fmean(r[e] for r in runs)
                                     for e in range(args.epochs)]
            print(f"  measured: {name} {opt}: {rows[f'{name} {opt}']}", file=sys.stderr)
    plan = world.ftte
    doc = {"seed": world.seed, "budget_bytes": world.budget_bytes, "plan_units": plan.units,
           "micro_batch": plan.micro_batch, "trainable": plan.trainable_params,
           "total": plan.total_params, "folds": args.folds, "accuracy": rows}
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return
    print(f"central ceiling on held-out training subjects ({args.folds} folds), seed "
          f"{world.seed}, plan {', '.join(plan.units or [])}, micro-batch {plan.micro_batch}")
    extra = " late/dense" if args.late else ""
    print(f"{'optimiser':10s} {'epoch':>5s} {'plan':>6s} {'dense':>6s} {'plan/dense':>10s}"
          + (f" {'late':>6s}{extra}" if args.late else ""))
    for opt, _ in optimisers:
        for e in range(args.epochs):
            p, d = rows[f"plan {opt}"][e], rows[f"dense {opt}"][e]
            line = f"{opt:10s} {e + 1:5d} {p:6.3f} {d:6.3f} {p / d:10.3f}"
            if args.late:
                q = rows[f"late {opt}"][e]
                line += f" {q:6.3f} {q / d:10.3f}"
            print(line)


if __name__ == "__main__":
    main()
