"""Sparse plans against full training, per model, side by side (issue 2 acceptance).

For each model: the plan chosen at budgets of 10, 20, 30 and 50% of full-training memory (the
--fractions), its trainable share, micro-batch, training memory and payload per job against full
training, and the proxy accuracy after a short fine-tune with the plan, with full training and
with the head alone.

    .venv/bin/python benchmarks/plans.py [--steps 150] [--fractions 0.1,0.2,0.3,0.5]
                                          [--models har,mobilenet] [--format json]

Models and data: har_cnn on synthetic HAR (recipes/har.yaml); mobilenet_v2 (width 0.5, as in
recipes/cifar10.yaml) on sklearn's digits upscaled to 3x32x32 (real images that ship offline, in
place of CIFAR-10, which needs a local download), through the project's own .npz loader.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ftte_cli.config.recipe import (
    DataConfig,
    ModelConfig,
    PlanConfig,
    Recipe,
    TrainConfig,
    load_recipe,
)
from ftte_cli.engine import sparse
from ftte_cli.engine.data import Dataset, FederatedData, load_federated
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import Plan, build_plan, dense_plan
from ftte_cli.engine.selection import Selection, plan_masks, select
from ftte_cli.engine.train import evaluate, train_job
from ftte_cli.errors import BudgetInfeasible
from ftte_cli.units import format_size

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One model at one budget fraction."""

    model: str
    fraction: float
    plan: Optional[Plan]  # None when the budget is infeasible
    smallest: int  # head-only memory: the smallest feasible budget
    full_memory: int
    acc_plan: float
    acc_full: float
    acc_head: float
    seconds: float


def digits32_npz(folder: Path) -> Path:
    """sklearn digits as 3x32x32 images in [0, 1] (nearest upscaling), saved as .npz."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="nearest").repeat(1, 3, 1, 1)  # (N, 3, 32, 32)
    path = folder / "digits32.npz"
    np.savez(path, X=x.numpy(), y=bunch.target.astype(np.int64))
    return path


def recipes(folder: Path, models: List[str]) -> List[Recipe]:
    """The recipes benchmarked, in order."""
    out: List[Recipe] = []
    if "har" in models:
        out.append(load_recipe(ROOT / "recipes" / "har.yaml"))
    if "mobilenet" in models:
        out.append(Recipe(
            name="digits32-mobilenet", seed=1,
            data=DataConfig(dataset="npz", path=digits32_npz(folder), partition="iid",
                            clients=10, proxy_fraction=0.1),
            model=ModelConfig("mobilenet_v2", 0.5),
            train=TrainConfig(batch_size=32, lr=0.05),
            plan=PlanConfig(method="contribution", proxy_steps=5)))
    return out


def pooled(data: FederatedData) -> Dataset:
    """All clients' training data together (the fine-tune set)."""
    return Dataset(torch.cat([c.train.x for c in data.clients]),
                   torch.cat([c.train.y for c in data.clients]))


def fine_tune(model: torch.nn.Module, params: dict, plan: Plan, train: Dataset, proxy: Dataset,
              cfg: TrainConfig, steps: int, seed: int) -> float:
    """Proxy accuracy after `steps` SGD steps on `train` with `plan`."""
    job = replace(cfg, epochs=10**6, max_steps=steps)
    subset = sparse.extract(params, plan)
    res = train_job(model, params, plan, subset, train, job, seed)
    trained = sparse.insert(params, plan, {k: subset[k] + d for k, d in res.delta.items()})
    return evaluate(model, trained, proxy)[0]


def bench(recipe: Recipe, fractions: List[float], steps: int) -> List[Row]:
    """Rows for one recipe."""
    data = load_federated(recipe.data, recipe.data.clients or 10, recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model, data.input_shape, data.num_classes)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    train = pooled(data)
    shape, classes = data.input_shape, data.num_classes
    dense = dense_plan(model, recipe.model.name)
    head = build_plan(model, plan_masks(model, []), model_name=recipe.model.name)
    tiniest = replace(head, micro_batch=1)  # the smallest plan: head only, one sample per pass
    acc_full = fine_tune(model, params, dense, train, data.proxy, recipe.train, steps, 0)
    acc_head = fine_tune(model, params, head, train, data.proxy, recipe.train, steps, 0)
    full_mem = training_memory(model, dense, recipe.train.batch_size, shape,
                               recipe.train.momentum).total
    smallest = training_memory(model, tiniest, recipe.train.batch_size, shape,
                               recipe.train.momentum).total
    rows: List[Row] = []
    scored: Optional[Selection] = None
    for fraction in fractions:
        t0 = time.perf_counter()
        plan: Optional[Plan] = None
        acc = float("nan")
        try:
            scored = select(model, recipe, data, int(fraction * full_mem), shape, classes,
                            reuse=scored)
            plan = scored.plan
            acc = fine_tune(model, params, plan, train, data.proxy, recipe.train, steps, 0)
        except BudgetInfeasible as err:
            assert err.smallest_bytes == smallest
        rows.append(Row(recipe.model.name, fraction, plan, smallest, full_mem, acc, acc_full,
                        acc_head, time.perf_counter() - t0))
    return rows


def _fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def print_rows(rows: List[Row], steps: int) -> None:
    """One table, one line per model and budget."""
    head = (f"{'model':<13}{'budget':>7}  {'memory plan/full':>24}  {'payload plan/full':>26}  "
            f"{'trainable':>15}  {'micro':>6}  "
            f"{f'proxy acc, {steps} steps: plan | full | head':>44}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.plan is None:
            print(f"{r.model:<13}{r.fraction:>6.0%}   infeasible: even head-only training needs "
                  f"{format_size(r.smallest)} = {r.smallest / r.full_memory:.0%} of full "
                  f"({format_size(r.full_memory)})")
            continue
        p = r.plan
        mem = (f"{format_size(p.estimated_bytes)}/{format_size(r.full_memory)} "
               f"{_fmt_ratio(p.estimated_bytes, r.full_memory)}")
        pay = (f"{format_size(p.payload_bytes)}/{format_size(p.full_payload_bytes)} "
               f"{_fmt_ratio(p.payload_bytes, p.full_payload_bytes)}")
        par = f"{p.trainable_params / p.total_params:.1%} ({len(p.units)}u)"
        micro = str(p.micro_batch or "-")
        acc = f"{r.acc_plan:.3f} | {r.acc_full:.3f} | {r.acc_head:.3f}"
        print(f"{r.model:<13}{r.fraction:>6.0%}  {mem:>24}  {pay:>26}  {par:>15}  {micro:>6}  "
              f"{acc:>44}")
    for r in rows:
        if r.plan is not None:
            print(f"\n{r.model} at {r.fraction:.0%} ({r.plan.method}, {r.seconds:.0f} s, head-only "
                  f"needs {r.smallest / r.full_memory:.0%} of full): earliest layer "
                  f"{r.plan.earliest_layer}; units: {', '.join(r.plan.units)}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="fine-tune steps per arm")
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.5",
                        help="budgets as fractions of full-training memory")
    parser.add_argument("--models", default="har,mobilenet")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fractions = [float(f) for f in args.fractions.split(",")]
    rows: List[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes(Path(tmp), args.models.split(",")):
            rows += bench(recipe, fractions, args.steps)
    if args.format == "json":
        print(json.dumps([row_json(r) for r in rows], indent=1))
    else:
        print_rows(rows, args.steps)
    return 0


def row_json(r: Row) -> dict:
    """The figures of one table line."""
    p = r.plan
    return {"model": r.model, "fraction": r.fraction, "feasible": p is not None,
            "smallest_bytes": r.smallest, "full_bytes": r.full_memory,
            "estimated_bytes": p.estimated_bytes if p else None,
            "trainable_share": p.trainable_params / p.total_params if p else None,
            "micro_batch": p.micro_batch if p else None, "units": p.units if p else [],
            "payload_bytes": p.payload_bytes if p else None,
            "acc_plan": r.acc_plan if p else None, "acc_full": r.acc_full,
            "acc_head": r.acc_head}


if __name__ == "__main__":
    sys.exit(main())
