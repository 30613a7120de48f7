"""The search-time cost model of a plan and the search under a budget (FTTE.md section 2, step 3).

For each earliest trainable layer d the saved activations are fixed, so an exact multiple-choice
knapsack picks the units of layers >= d; the best d wins. The chosen plan is then measured with
engine/memory.py and units are dropped until the measurement fits the budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from ftte_cli.engine.knapsack import Item, knapsack_exact, knapsack_value
from ftte_cli.engine.memory import (
    ForwardTrace,
    MemoryEstimate,
    optimizer_slots,
    trace_forward,
    training_memory,
)
from ftte_cli.engine.plan import BYTES_PER_VALUE, build_plan, dense_plan
from ftte_cli.engine.scoring import Unit, plan_masks
from ftte_cli.units import format_size

log = logging.getLogger(__name__)


def per_value_slots(momentum: float) -> int:
    """Copies of each trainable value during a job: received + trained + gradient + optimizer."""
    return 3 + optimizer_slots(momentum)


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
