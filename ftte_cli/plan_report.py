"""Budget resolution and the plan's report rows, shared by `ftte plan` and the Python API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ftte_cli.config.recipe import Recipe
from ftte_cli.errors import ConfigError
from ftte_cli.fleet import budget as fleet_budget
from ftte_cli.units import parse_size

if TYPE_CHECKING:  # the engine (torch) is imported only by whoever builds a Selection
    from ftte_cli.engine.selection import Selection


@dataclass(frozen=True)
class Budget:
    """The memory budget a plan is chosen for, and where it came from."""

    bytes: int
    source: str


def resolve_budget(recipe: Recipe, budget: Optional[str],
                   fleet: Optional[fleet_budget.FleetBudget] = None) -> Budget:
    """--budget, else the recipe's plan.memory_budget, else the fleet's M_min (--inventory)."""
    if budget is not None:
        return Budget(parse_size(budget, "--budget"), "--budget")
    if recipe.plan.memory_budget is not None:
        where = f"{recipe.source}: plan.memory_budget"
        return Budget(parse_size(recipe.plan.memory_budget, where), "recipe plan.memory_budget")
    if fleet is not None:
        return Budget(fleet.m_min, f"fleet M_min (most constrained: {fleet.bound_by})")
    raise ConfigError(f"{recipe.source}: no memory budget: pass --budget (e.g. 2MB) or "
                      "--inventory (profiled fleet), or set plan.memory_budget in the recipe")


def _ratio(part: float, whole: Optional[float]) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def plan_report(sel: Selection, budget: Budget) -> dict[str, Any]:
    """The rows both outputs are rendered from."""
    plan = sel.plan
    units = [{"unit": u, "score": round(sel.scores.get(u, 0.0), 6)} for u in plan.units]
    return {
        "model": plan.model,
        "budget_bytes": budget.bytes,
        "budget_source": budget.source,
        "method": plan.method,
        "earliest_layer": plan.earliest_layer,
        "micro_batch": plan.micro_batch,
        "units": units,
        "memory": {"plan": plan.estimated_bytes, "full": plan.full_training_bytes,
                   "ratio": _ratio(plan.estimated_bytes or 0, plan.full_training_bytes),
                   "breakdown": {k: v for k, v in vars(sel.memory).items()}},
        "payload": {"plan": plan.payload_bytes, "full": plan.full_payload_bytes,
                    "ratio": _ratio(plan.payload_bytes, plan.full_payload_bytes)},
        "trainable_params": {"plan": plan.trainable_params, "full": plan.total_params,
                             "ratio": _ratio(plan.trainable_params, plan.total_params)},
        "notes": list(plan.notes),
    }
