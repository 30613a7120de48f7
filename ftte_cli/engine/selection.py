"""Sparse parameter selection under a memory budget (FTTE.md section 2), once per run on the server.

1. Units: per layer with parameters (the head excepted, it is always trained) its weight at each
   input-channel ratio (the channels of largest L2 norm, TTE's magnitude+; one ratio per layer at
   most), its bias, and a norm layer's affine pair.
2. Scores: contribution analysis (fine-tune head + one unit on the proxy data, score = drop of
   proxy loss against head only) or the gradient-norm fallback.
3. Search: for each earliest trainable layer d the saved activations are fixed, so an exact
   multiple-choice knapsack picks the units of layers >= d; the best d wins. The chosen plan is then
   measured with engine/memory.py and units are dropped until the measurement fits the budget.
4. Micro-batch: steps 3 runs for each micro-batch size (the batch, halved down to 1; train_job
   accumulates gradients over the passes, so activations scale with the micro-batch); the
   largest size whose plan is worth within MICRO_BATCH_TOLERANCE of the best one wins.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.memory import (
    ForwardTrace,
    MemoryEstimate,
    optimizer_slots,
    trace_forward,
    training_memory,
)
from ftte_cli.engine.plan import (
    BYTES_PER_VALUE,
    FULL,
    MaskKind,
    ParamMask,
    Plan,
    build_plan,
    dense_plan,
)
from ftte_cli.engine.train import evaluate, train_job
from ftte_cli.errors import BudgetInfeasible
from ftte_cli.units import format_size

if TYPE_CHECKING:
    from ftte_cli.config.recipe import Recipe
    from ftte_cli.engine.data import Dataset

log = logging.getLogger(__name__)

EVAL_CAP = 256  # proxy samples used to score a unit (scoring cost grows with it)
GRADNORM_BATCHES = 4
# A smaller micro-batch is chosen only when the larger one's plan is worth less than (1 - this)
# of the best: passes of fewer samples make every step slower (har_cnn at batch 16 on one core:
# passes of 4-8 samples take 1.7x the time of the whole batch, passes of 1-2 about 4x).
MICRO_BATCH_TOLERANCE = 0.1
# Relative edge a larger channel set gets over an equally scored smaller one (nested_scores).
NESTED_TIE = 1e-6


# ---------------------------------------------------------------------------------------------
# units


@dataclass(frozen=True)
class Unit:
    """One selectable piece of a layer; units sharing a `group` are mutually exclusive."""

    name: str  # e.g. "features.0.conv.weight@0.25", "features.0.norm.affine", "fc.bias"
    layer: str  # owning module
    layer_index: int  # position of the layer in forward order
    group: str  # weight ratios of one layer share a group
    masks: Dict[str, ParamMask] = field(compare=False)
    values: int = 0  # trainable scalars
    extra_bytes: int = 0  # a channel weight is materialized full size and saved by autograd

    def cost(self, slots_per_value: int) -> int:
        """Bytes this unit adds to training memory (its activations aside)."""
        return self.values * BYTES_PER_VALUE * slots_per_value + self.extra_bytes


def per_value_slots(momentum: float) -> int:
    """Copies of each trainable value during a job: received + trained + gradient + optimizer."""
    return 3 + optimizer_slots(momentum)


def layer_order(model: nn.Module) -> List[str]:
    """Modules that own parameters, in forward (registration) order; the last is the head."""
    return [name for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None]


def head_masks(model: nn.Module) -> Dict[str, ParamMask]:
    """The classifier head's parameters, always trained in full."""
    head = layer_order(model)[-1]
    mod = model.get_submodule(head)
    return {_pname(head, n): FULL for n, _ in mod.named_parameters(recurse=False)}


def _pname(layer: str, param: str) -> str:
    return f"{layer}.{param}" if layer else param


def magnitude_channels(weight: Tensor, k: int) -> Tuple[int, ...]:
    """The k input channels (dim 1) of largest L2 norm, sorted (TTE's magnitude+)."""
    dims = [d for d in range(weight.dim()) if d != 1]
    norms = weight.detach().pow(2).sum(dim=dims)  # (in,)
    top = torch.topk(norms, k).indices
    return tuple(sorted(int(i) for i in top))


def enumerate_units(model: nn.Module, ratios: Sequence[float]) -> List[Unit]:
    """Every selectable unit of `model` except the head."""
    units: List[Unit] = []
    layers = layer_order(model)
    for index, layer in enumerate(layers[:-1]):
        params = dict(model.get_submodule(layer).named_parameters(recurse=False))
        weight = params.get("weight")
        if weight is not None and weight.dim() == 1:  # norm: affine pair as one unit
            masks = {_pname(layer, n): FULL for n in params}
            units.append(Unit(f"{layer}.affine", layer, index, f"{layer}.affine", masks,
                              sum(p.numel() for p in params.values())))
            continue
        if weight is not None:
            units += _weight_units(layer, index, weight, ratios)
        if "bias" in params:
            units.append(Unit(f"{layer}.bias", layer, index, f"{layer}.bias",
                              {_pname(layer, "bias"): FULL}, params["bias"].numel()))
    return units


def _weight_units(layer: str, index: int, weight: Tensor, ratios: Sequence[float]) -> List[Unit]:
    name, c_in = _pname(layer, "weight"), int(weight.shape[1])
    out: List[Unit] = []
    seen = set()
    for r in sorted(ratios):
        k = min(c_in, max(1, round(r * c_in)))
        if k in seen:  # e.g. depthwise convs (c_in == 1) have a single full unit
            continue
        seen.add(k)
        per_channel = weight.numel() // c_in
        if k == c_in:
            out.append(Unit(f"{name}@1", layer, index, name, {name: FULL}, weight.numel()))
        else:
            mask = ParamMask(MaskKind.channels, magnitude_channels(weight, k))
            out.append(Unit(f"{name}@{r:g}", layer, index, name, {name: mask}, k * per_channel,
                            extra_bytes=weight.numel() * BYTES_PER_VALUE))
    return out


def plan_masks(model: nn.Module, units: Sequence[Unit]) -> Dict[str, ParamMask]:
    """The masks of head + `units` (every other parameter frozen)."""
    masks = head_masks(model)
    for unit in units:
        masks.update(unit.masks)
    return masks


# ---------------------------------------------------------------------------------------------
# scores


def contribution_scores(model: nn.Module, units: Sequence[Unit], proxy: Dataset,
                        cfg: TrainConfig, steps: int, seed: int) -> Dict[str, float]:
    """Drop in proxy loss from fine-tuning head + unit for `steps` steps, against head only."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    job_cfg = replace(cfg, epochs=max(1, math.ceil(steps * cfg.batch_size / max(1, len(proxy)))),
                      max_steps=steps, device="cpu")
    evalset = _sample(proxy, EVAL_CAP, seed)

    def loss_after(masks: Dict[str, ParamMask]) -> float:
        plan = build_plan(model, masks)
        start = sparse.extract(params, plan)
        res = train_job(model, params, plan, start, proxy, job_cfg, seed)
        trained = sparse.insert(params, plan, {k: start[k] + d for k, d in res.delta.items()})
        return evaluate(model, trained, evalset)[1]

    base = loss_after(head_masks(model))
    return {u.name: base - loss_after(plan_masks(model, [u])) for u in units}


def gradnorm_scores(model: nn.Module, units: Sequence[Unit], data: Optional[Dataset],
                    input_shape: Tuple[int, ...], num_classes: int, batch_size: int,
                    seed: int) -> Dict[str, float]:
    """Squared gradient norm of each unit's values over a few batches of the initial model."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    sq = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(GRADNORM_BATCHES):
        x, y = _batch(data, input_shape, num_classes, batch_size, gen)
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            sq[k] += g.pow(2)
    scores: Dict[str, float] = {}
    for unit in units:
        total = 0.0
        for name, mask in unit.masks.items():
            g2 = sq[name]
            if mask.kind == MaskKind.channels:
                g2 = g2.index_select(1, torch.tensor(mask.channels, dtype=torch.int64))
            total += float(g2.sum())
        scores[unit.name] = total
    return scores


def nested_scores(units: Sequence[Unit], scores: Mapping[str, float]) -> Dict[str, float]:
    """Scores made monotone in a weight's channel ratio, ties going to the larger ratio.

    Magnitude+ channel sets are nested (the top k of a layer are inside its top 2k), so a unit
    that trains more channels can reach whatever the smaller one reaches: it is worth at least
    as much. A short proxy fine-tune is noisy and can rank the smaller set higher (har_cnn
    width 3, warm start: features.0.conv 0.226 at half its 9 input channels, 0.209 at all of
    them), and the knapsack then trains the half, which federates far worse (docs/
    synthetic_har.md). Each ratio's score is raised to the best score of the ratios below it,
    plus NESTED_TIE of its size when raised, so that among equally scored sets the larger one, when
    it fits, is chosen. Units of other groups and unscored units are left as they are.
    """
    out = dict(scores)
    groups: Dict[str, List[Unit]] = {}
    for unit in units:
        if unit.name in scores:
            groups.setdefault(unit.group, []).append(unit)
    for members in groups.values():
        best = -math.inf
        for unit in sorted(members, key=lambda u: u.values):
            own = scores[unit.name]
            out[unit.name] = own if own > best else best + abs(best) * NESTED_TIE
            best = max(best, out[unit.name])
    return out


def _batch(data: Optional[Dataset], input_shape: Tuple[int, ...], num_classes: int,
           batch_size: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    if data is not None and len(data) > 0:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        return data.x[idx], data.y[idx]
    x = torch.randn((batch_size, *input_shape), generator=gen)
    return x, torch.randint(num_classes, (batch_size,), generator=gen)


def _sample(data: Dataset, n: int, seed: int) -> Dataset:
    """At most n samples of `data`, drawn without replacement by a seeded generator."""
    if len(data) <= n:
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return type(data)(data.x[idx], data.y[idx])


# ---------------------------------------------------------------------------------------------
# knapsack


@dataclass(frozen=True)
class Item:
    """A knapsack option: a unit's cost in bytes and its value; one per group at most."""

    key: str
    group: str
    cost: int
    value: float


def knapsack_exact(items: Sequence[Item], capacity: int, max_states: int = 20000) -> List[str]:
    """Multiple-choice 0/1 knapsack by dynamic programming over cost.

    Costs are counted in quanta of ceil(capacity / max_states) bytes, rounded up, so the answer
    never exceeds `capacity`; it is exact whenever every cost is a multiple of the quantum.
    """
    if capacity <= 0:
        return []
    quantum = max(1, math.ceil(capacity / max_states))
    states = capacity // quantum
    groups: Dict[str, List[Item]] = {}
    for it in items:
        if it.value > 0 and it.cost <= capacity:
            groups.setdefault(it.group, []).append(it)
    best = np.zeros(states + 1)  # best[c]: best value with total cost <= c quanta
    choice: List[Tuple[List[Item], np.ndarray]] = []
    for options in groups.values():
        new, pick = best.copy(), np.full(states + 1, -1, dtype=np.int16)
        for j, it in enumerate(options):
            q = math.ceil(it.cost / quantum)
            if q > states:
                continue
            cand = np.full(states + 1, -np.inf)
            cand[q:] = best[: states + 1 - q] + it.value
            better = cand > new
            new[better], pick[better] = cand[better], j
        choice.append((options, pick))
        best = new
    chosen: List[str] = []
    c = states
    for options, pick in reversed(choice):
        j = int(pick[c])
        if j >= 0:
            chosen.append(options[j].key)
            c -= math.ceil(options[j].cost / quantum)
    return chosen[::-1]


def knapsack_greedy(items: Sequence[Item], capacity: int) -> List[str]:
    """Value-per-byte greedy; a later option of a taken group replaces it when that pays."""
    taken: Dict[str, Item] = {}
    used = 0
    for it in sorted(items, key=lambda i: i.value / max(1, i.cost), reverse=True):
        if it.value <= 0:
            continue
        old = taken.get(it.group)
        extra = it.cost - (old.cost if old else 0)
        if used + extra <= capacity and (old is None or it.value > old.value):
            taken[it.group], used = it, used + extra
    return [it.key for it in taken.values()]


def knapsack_value(items: Sequence[Item], keys: Sequence[str]) -> float:
    """Total value of the chosen keys."""
    by_key = {it.key: it for it in items}
    return sum(by_key[k].value for k in keys)


# ---------------------------------------------------------------------------------------------
# search


@dataclass(frozen=True)
class Selection:
    """A plan with how it was found: every unit's score and the plan's memory breakdown."""

    plan: Plan
    scores: Dict[str, float]
    memory: MemoryEstimate
    full_memory: MemoryEstimate


@dataclass(frozen=True)
class CostModel:
    """Search-time memory of candidate plans: fixed part plus one dense trace of activations."""

    fixed: int  # every parameter held once + the head's trainable copies
    slots: int  # copies per trainable value (see per_value_slots)
    trace: ForwardTrace

    @staticmethod
    def of(model: nn.Module, batch_size: int, input_shape: Tuple[int, ...],
           momentum: float) -> CostModel:
        """Trace `model` once (dense) at the recipe's batch size."""
        slots = per_value_slots(momentum)
        fixed = BYTES_PER_VALUE * sum(p.numel() for p in model.parameters())
        fixed += sum(BYTES_PER_VALUE * slots * model.get_parameter(n).numel()
                     for n in plan_masks(model, []))
        return CostModel(fixed, slots, trace_forward(model, dense_plan(model), batch_size,
                                                     input_shape))

    def base(self, d: int) -> int:
        """Memory with earliest trainable layer d before any unit's own cost."""
        return self.fixed + sum(self.trace.cost_from(d))

    def may_fit(self, units: Sequence[Unit], budget: int, slack: float = 0.05) -> List[Unit]:
        """Units that fit beside the head at some earliest layer d <= theirs (with `slack`)."""
        floor: Dict[int, int] = {}
        best = None
        for d in sorted({u.layer_index for u in units}):
            here = self.base(d)
            best = here if best is None else min(best, here)
            floor[d] = best
        return [u for u in units
                if floor[u.layer_index] + u.cost(self.slots) <= budget * (1 + slack)]


def search(units: Sequence[Unit], scores: Mapping[str, float], budget: int,
           costs: CostModel) -> List[Unit]:
    """Best units under `budget`, iterating the earliest trainable layer d (before measuring)."""
    by_name = {u.name: u for u in units}
    best: Tuple[float, List[str]] = (0.0, [])
    for d in sorted({u.layer_index for u in units}):
        capacity = budget - costs.base(d)
        if capacity <= 0:
            continue
        items = [Item(u.name, u.group, u.cost(costs.slots), float(scores.get(u.name, 0.0)))
                 for u in units if u.layer_index >= d]
        keys = knapsack_exact(items, capacity)
        value = knapsack_value(items, keys)
        if value > best[0]:
            best = (value, keys)
    return [by_name[k] for k in best[1]]


def fit_to_budget(model: nn.Module, chosen: List[Unit], scores: Mapping[str, float], budget: int,
                  batch_size: int, input_shape: Tuple[int, ...], momentum: float,
                  micro_batch: Optional[int] = None) -> Tuple[List[Unit], MemoryEstimate]:
    """Measure the plan; while it exceeds the budget drop the least valuable unit per byte."""
    slots = per_value_slots(momentum)
    chosen = list(chosen)
    while True:
        plan = build_plan(model, plan_masks(model, chosen), micro_batch=micro_batch)
        est = training_memory(model, plan, batch_size, input_shape, momentum)
        if est.total <= budget or not chosen:
            return chosen, est
        worst = min(chosen, key=lambda u: scores.get(u.name, 0.0) / max(1, u.cost(slots)))
        log.debug("plan %s over budget by %d B: dropping %s", format_size(est.total),
                  est.total - budget, worst.name)
        chosen.remove(worst)


def micro_batches(batch_size: int) -> List[int]:
    """Micro-batch sizes the search tries, largest first: the batch, halved down to 1."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def _micro(m: int, batch_size: int) -> Optional[int]:
    """The plan's micro_batch field: None when a step is one pass over the whole batch."""
    return None if m >= batch_size else m


@dataclass(frozen=True)
class _Candidate:
    """The units chosen, and measured, for one micro-batch size."""

    micro_batch: int
    units: List[Unit]
    memory: MemoryEstimate
    value: float


def _best_candidate(candidates: Sequence[_Candidate]) -> _Candidate:
    """The largest micro-batch whose plan is worth within MICRO_BATCH_TOLERANCE of the best:
    smaller passes are slower (less parallel work per call), so they must buy real value."""
    best = max(c.value for c in candidates)
    return next(c for c in candidates if c.value >= best * (1 - MICRO_BATCH_TOLERANCE))


def search_micro_batches(model: nn.Module, units: Sequence[Unit], scores: Mapping[str, float],
                         budget: int, batch: int, shape: Tuple[int, ...], momentum: float,
                         sizes: Sequence[int]) -> _Candidate:
    """Units and micro-batch chosen together: the search and fit_to_budget run once per size."""
    out = []
    for m in sizes:
        costs = CostModel.of(model, m, shape, momentum)
        chosen = search(units, scores, budget, costs)
        chosen, est = fit_to_budget(model, chosen, scores, budget, batch, shape, momentum,
                                    _micro(m, batch))
        out.append(_Candidate(m, chosen, est, sum(scores.get(u.name, 0.0) for u in chosen)))
    return _best_candidate(out)


def select(model: nn.Module, recipe: Recipe, data: object, budget_bytes: int,
           input_shape: Tuple[int, ...], num_classes: int,
           reuse: Optional[Selection] = None) -> Selection:
    """Choose the plan for `model` under `budget_bytes` (see the module docstring).

    `reuse`: a Selection of the same model and recipe whose unit scores are kept (another
    budget: only units not scored yet are fine-tuned).
    """
    cfg, batch, momentum = recipe.train, recipe.train.batch_size, recipe.train.momentum
    shape = tuple(input_shape)
    name = recipe.model.name
    full = training_memory(model, dense_plan(model, name), batch, shape, momentum)
    sizes = feasible_micro_batches(model, recipe, budget_bytes, shape)
    units = enumerate_units(model, recipe.plan.ratios)
    # the smallest micro-batch is the most permissive: a unit that cannot fit there never fits
    costs = CostModel.of(model, sizes[-1], shape, momentum)
    proxy, fallback_data = _proxy_and_fallback(data)
    notes: List[str] = []
    scores: Dict[str, float] = dict(reuse.scores) if reuse is not None else {}
    if recipe.plan.method == "contribution" and proxy is not None:
        method = "contribution"
        # only units that can fit are worth a fine-tune; the others keep no score
        todo = [u for u in costs.may_fit(units, budget_bytes) if u.name not in scores]
        if todo or reuse is None:
            scores.update(contribution_scores(model, todo, proxy, cfg, recipe.plan.proxy_steps,
                                              recipe.seed))
        notes.append(f"contribution: proxy-loss drop after {recipe.plan.proxy_steps} steps per "
                     f"unit on {len(proxy)} proxy samples ({len(scores)} of {len(units)} units "
                     "could fit and were scored)")
    else:
        method = "gradnorm"
        if not scores:
            scores = gradnorm_scores(model, units, fallback_data, shape, num_classes, batch,
                                     recipe.seed)
        why = ("requested by plan.method" if recipe.plan.method == "gradnorm"
               else "fallback: no proxy data")
        source = "synthetic inputs" if fallback_data is None else f"{len(fallback_data)} samples"
        notes.append(f"gradnorm ({why}): gradient norm per byte on {source}")
    values = nested_scores(units, scores)  # the search's values; the raw scores are kept
    best = search_micro_batches(model, units, values, budget_bytes, batch, shape, momentum, sizes)
    chosen, est = best.units, best.memory
    if not chosen:
        notes.append("no unit fits beside the head (or none helps): head only")
    if best.micro_batch < batch:
        notes.append(f"micro-batch {best.micro_batch}: each step of {batch} samples runs in "
                     f"passes of {best.micro_batch}, gradients accumulated")
    plan = build_plan(
        model, plan_masks(model, chosen), model_name=name,
        units=[u.name for u in sorted(chosen, key=lambda u: (u.layer_index, u.name))],
        budget_bytes=budget_bytes, estimated_bytes=est.total, full_training_bytes=full.total,
        method=method, notes=notes, micro_batch=_micro(best.micro_batch, batch))
    return Selection(plan, dict(scores), est, full)


def _head_memory(model: nn.Module, name: str, batch: int, micro: Optional[int],
                 shape: Tuple[int, ...], momentum: float) -> int:
    plan = build_plan(model, plan_masks(model, []), model_name=name, micro_batch=micro)
    return training_memory(model, plan, batch, shape, momentum).total


def make_plan(model: nn.Module, recipe: Recipe, data_or_proxy: object, budget_bytes: int,
              input_shape: Tuple[int, ...], num_classes: int) -> Plan:
    """The FTTE plan; `data_or_proxy` is a FederatedData, a proxy Dataset, or None (fallback)."""
    return select(model, recipe, data_or_proxy, budget_bytes, input_shape, num_classes).plan


def _proxy_and_fallback(data: object) -> Tuple[Optional[Dataset], Optional[Dataset]]:
    """(proxy for contribution analysis, data for the gradnorm fallback), either may be None."""
    from ftte_cli.engine.data import Dataset, FederatedData

    if isinstance(data, FederatedData):
        if len(data.proxy) > 0:
            return data.proxy, data.proxy
        first = next((c.train for c in data.clients if len(c.train) > 0), None)
        return None, first
    if isinstance(data, Dataset) and len(data) > 0:
        return data, data
    return None, None


def feasible_micro_batches(model: nn.Module, recipe: Recipe, budget_bytes: int,
                           input_shape: Tuple[int, ...]) -> List[int]:
    """Micro-batch sizes at which the head alone fits, largest first; BudgetInfeasible (with the
    smallest budget that works) when none does. Depends on the architecture only, not on the
    weights, so callers check it before an expensive warm start."""
    batch, momentum, name = recipe.train.batch_size, recipe.train.momentum, recipe.model.name
    shape = tuple(input_shape)
    sizes = [m for m in micro_batches(batch) if _head_memory(
        model, name, batch, _micro(m, batch), shape, momentum) <= budget_bytes]
    if not sizes:
        smallest = _head_memory(model, name, batch, _micro(1, batch), shape, momentum)
        raise BudgetInfeasible(
            f"memory budget {format_size(budget_bytes)} ({budget_bytes} B) cannot hold even the "
            f"classifier head of {name} at batch size {batch}, micro-batch 1: the smallest "
            f"budget that works is {format_size(smallest)} ({smallest} B)", smallest)
    return sizes


def plan_for_recipe(recipe: Recipe, budget_bytes: int,
                    num_clients: Optional[int] = None) -> Selection:
    """Load the recipe's data and initial model (seeded by the recipe) and select its plan."""
    from ftte_cli.engine.data import load_federated
    from ftte_cli.engine.models import build_model
    from ftte_cli.startmodel import initial_model

    clients = num_clients or recipe.data.clients or recipe.sim.clients
    data = load_federated(recipe.data, clients, recipe.seed, recipe.init)
    # an infeasible budget is known from the architecture: say so before any warm start
    shape_only = build_model(recipe.model, data.input_shape, data.num_classes)
    feasible_micro_batches(shape_only, recipe, budget_bytes, data.input_shape)
    model = initial_model(recipe, data.input_shape, data.num_classes, data)
    return select(model, recipe, data, budget_bytes, data.input_shape, data.num_classes)
