"""The simulated world every strategy shares: data, initial model, fleet, plans, costs.

`prepare(settings)` builds it once: it loads the data, builds the initial model, the fleet, the
dense plan and the FTTE plan. The FTTE memory budget is `fleet.budget.resolve_budget`'s: the
recipe's `plan.memory_budget`; else `budget_fraction` x the dense plan's training memory when
given (the paper's setting: the budget of the most constrained device, ~20% of full training;
benchmarks use it); else the smallest usable memory over the simulated clients. When the budget
holds full training, FTTE trains the dense model (it then differs from FedBuff by its weights
and normaliser); the notes say so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Tuple

from torch import Tensor, nn

from ftte_cli.config.recipe import Recipe
from ftte_cli.engine.data.dataset import FederatedData
from ftte_cli.engine.flops import layer_flops
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.plan import Plan, dense_plan
from ftte_cli.engine.strategies import STRATEGIES
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.budget import Budget, resolve_budget
from ftte_cli.sim.devices import (
    ComputeCost,
    DeviceModel,
    compute_cost,
    load_profiles,
    make_fleet,
    with_stragglers,
)
from ftte_cli.sim.settings import SimSettings
from ftte_cli.startmodel import StartInfo, describe_start, model_params, shape_model, start_model

Tensors = Dict[str, Tensor]


@dataclass
class World:
    """Everything the strategies share: data, initial model, fleet, plans, costs."""

    settings: SimSettings
    recipe: Recipe
    seed: int
    data: FederatedData
    model: nn.Module
    params: Tensors
    fleet: List[DeviceModel]
    dense: Plan
    ftte: Plan  # the dense plan when no strategy of the run trains a sparse one
    costs: Dict[str, ComputeCost]  # plan method key ("dense" / "ftte") -> per-sample cost
    budget_bytes: int
    budget_source: str
    notes: List[str]
    start: StartInfo


def _load_federated(recipe: Recipe, clients: int, seed: int) -> FederatedData:
    from ftte_cli.engine.data import load_federated  # noqa: PLC0415  (engine-core contract)

    return load_federated(replace(recipe.data, clients=clients), clients, seed, recipe.init)


def _fleet(settings: SimSettings, clients: int, seed: int) -> List[DeviceModel]:
    cfg = settings.recipe.sim
    margin = settings.recipe.plan.safety_margin
    base = (load_profiles(settings.fleet, clients) if settings.fleet is not None
            else make_fleet(cfg, clients, seed, margin))
    fraction = cfg.stragglers if settings.stragglers is None else settings.stragglers
    return with_stragglers(base, fraction, cfg.slowdown, seed)


def _with_memory(model: nn.Module, plan: Plan, recipe: Recipe, input_shape: Tuple[int, ...]
                 ) -> Plan:
    est = training_memory(model, plan, recipe.train.batch_size, input_shape,
                          recipe.train.momentum).total
    return replace(plan, estimated_bytes=est, full_training_bytes=plan.full_training_bytes or est)


def _budget(settings: SimSettings, fleet: List[DeviceModel], full: int) -> Tuple[int, str]:
    share = settings.budget_fraction
    fraction = (None if share is None
                else Budget(int(share * full), f"{share:.0%} of full training memory"))
    smallest = Budget(min(d.memory_bytes for d in fleet), "most constrained simulated client")
    chosen = resolve_budget(settings.recipe, fraction=fraction, fleet=smallest)
    assert chosen is not None  # the simulated fleet always has a smallest client
    return chosen.bytes, chosen.source


def _ftte_plan(model: nn.Module, recipe: Recipe, data: FederatedData, budget: int, dense: Plan,
               notes: List[str]) -> Plan:
    assert dense.estimated_bytes is not None
    if budget >= dense.estimated_bytes:
        notes.append(f"budget {budget} B holds full training ({dense.estimated_bytes} B): "
                     "FTTE trains the dense model")
        return replace(dense, budget_bytes=budget)
    from ftte_cli.engine.selection import make_plan  # noqa: PLC0415  (engine-core contract)

    plan = make_plan(model, recipe, data, budget, data.input_shape, data.num_classes)
    if plan.estimated_bytes is None:
        plan = _with_memory(model, plan, recipe, data.input_shape)
    return replace(plan, full_training_bytes=dense.estimated_bytes)


def prepare(settings: SimSettings) -> World:
    """Load data, build the initial model, fleet and plans (shared by every strategy)."""
    recipe = settings.recipe
    for name in settings.strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown {name!r} (known: {', '.join(STRATEGIES)})")
    clients = settings.clients or recipe.data.clients or recipe.sim.clients  # docs/recipes.md
    seed = recipe.seed if settings.seed is None else settings.seed
    data = _load_federated(recipe, clients, seed)
    fleet = _fleet(settings, len(data.clients), seed)
    # memory depends on the architecture alone: an infeasible budget stops before a warm start
    shape_only = shape_model(recipe, data.input_shape, data.num_classes)
    dense = _with_memory(shape_only, dense_plan(shape_only, recipe.model.name), recipe,
                         data.input_shape)
    assert dense.estimated_bytes is not None
    budget, source = _budget(settings, fleet, dense.estimated_bytes)
    if budget < dense.estimated_bytes:
        from ftte_cli.engine.selection import feasible_micro_batches  # noqa: PLC0415

        feasible_micro_batches(shape_only, recipe, budget, data.input_shape)
    model, start = start_model(replace(recipe, seed=seed), data.input_shape, data.num_classes,
                               data)
    params = model_params(model)
    notes: List[str] = [f"FTTE memory budget {budget} B: {source}", describe_start(start)]
    if any(not STRATEGIES[name].dense for name in settings.strategies):
        ftte = _ftte_plan(model, recipe, data, budget, dense, notes)
    else:  # only dense strategies: FTTE's selection (a few CPU seconds) would go unused
        ftte = replace(dense, budget_bytes=budget)
    flops = layer_flops(model, data.input_shape)
    batch = recipe.train.batch_size  # a micro-batched plan's passes are slower per sample
    costs = {"dense": compute_cost(flops, dense, batch), "ftte": compute_cost(flops, ftte, batch)}
    return World(settings, recipe, seed, data, model, params, fleet, dense, ftte, costs, budget,
                 source, notes, start)
