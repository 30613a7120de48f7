"""`ftte plan`: choose the sparse parameter plan for a recipe under a memory budget and show it.

    ftte plan --recipe recipes/har.yaml --budget 2MB [--format json] [--out DIR]

The budget comes from one place, `resolve_budget` (today: --budget, then the recipe's
plan.memory_budget); the engine builds the plan (engine.selection.plan_for_recipe); this module
only parses, renders and saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftte_cli.config.recipe import Recipe, load_recipe
from ftte_cli.engine.plan import save_plan
from ftte_cli.engine.selection import Selection, plan_for_recipe
from ftte_cli.errors import ConfigError
from ftte_cli.fleet import budget as fleet_budget
from ftte_cli.output import Format, console, handle_errors, print_json, table
from ftte_cli.units import format_size, parse_size


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


def _pct(ratio: Optional[float]) -> str:
    return "" if ratio is None else f"{ratio:.1%}"


def render(report: dict[str, Any]) -> None:
    """The human view: a summary table and the chosen units."""
    mem, pay, par = report["memory"], report["payload"], report["trainable_params"]
    rows = [
        ("budget", format_size(report["budget_bytes"]), "", report["budget_source"]),
        ("training memory", format_size(mem["plan"]), format_size(mem["full"]),
         _pct(mem["ratio"])),
        ("payload per job", format_size(pay["plan"]), format_size(pay["full"]),
         _pct(pay["ratio"])),
        ("trainable params", f"{par['plan']:,}", f"{par['full']:,}", _pct(par["ratio"])),
        ("earliest trainable layer", report["earliest_layer"] or "", "", ""),
        ("method", report["method"], "", ""),
    ]
    console.print(table(f"Plan for {report['model']}", ("", "plan", "full training", "ratio"),
                        rows))
    units = [(u["unit"], f"{u['score']:.4g}") for u in report["units"]] or [("(head only)", "")]
    console.print(table("Trained beside the head", ("unit", "score"), units))
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False)
    if "fleet" in report:
        console.print(table("Fleet headroom (usable M_i minus training memory)",
                            fleet_budget.HEADROOM_COLUMNS,
                            fleet_budget.headroom_rows(report["fleet"])))


def plan(
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="Recipe YAML.")],
    budget: Annotated[Optional[str], typer.Option(
        "--budget", "-b", help="Memory budget per device, e.g. 2MB, 512KiB (default: the "
        "recipe's plan.memory_budget).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table for people, json for scripts.")
                   ] = Format.table,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write plan.json + plan.safetensors into this folder.")] = None,
    inventory: Annotated[Optional[Path], typer.Option(
        "--inventory", "-i", help="Budget from this fleet's cached profiles (`ftte profile`), "
        "plus a per-device headroom table under FTTE and under full training.")] = None,
    limit: Annotated[Optional[str], typer.Option(
        "--limit", "-l", help="Only these groups or hosts of the inventory.")] = None,
) -> None:
    """Choose which parameters FTTE trains under a memory budget, and show memory and payload."""
    with handle_errors(fmt):
        loaded = load_recipe(recipe)
        fleet = (fleet_budget.inventory_budget(inventory, loaded, limit, budget)
                 if inventory is not None else None)
        chosen = resolve_budget(loaded, budget, fleet)
        sel = plan_for_recipe(loaded, chosen.bytes)
        report = plan_report(sel, chosen)
        if fleet is not None:
            rows = fleet_budget.headroom(fleet, sel.plan.estimated_bytes or 0,
                                         sel.plan.full_training_bytes or 0)
            report["fleet"] = fleet_budget.headroom_json(fleet, rows)
        if out is not None:
            report["saved"] = [str(p) for p in save_plan(sel.plan, out)]
        if fmt == Format.json:
            print_json(report)
        else:
            render(report)
            if out is not None:
                console.print(f"saved {', '.join(report['saved'])}", highlight=False)
