"""The plan's report rows: what `ftte plan` prints, as a table or as JSON (`api.plan`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ftte_cli.fleet.budget import Budget

if TYPE_CHECKING:  # the engine (torch) is imported only by whoever builds a Selection
    from ftte_cli.engine.selection import Selection


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
