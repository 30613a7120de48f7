"""`ftte plan`: choose the sparse parameter plan for a recipe under a memory budget and show it.

    ftte plan --recipe recipes/har.yaml --budget 2MB [--format json] [--out DIR]

The budget comes from one place, `fleet.budget.resolve_budget` (--budget, then the recipe's
plan.memory_budget, then the --inventory fleet's M_min); `api.plan` builds the plan and its
report; this module only parses and renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftte_cli import api
from ftte_cli.commands.options import RecipeOpt, inventory_path
from ftte_cli.fleet import budget as fleet_budget
from ftte_cli.output import Format, console, handle_errors, print_json, table
from ftte_cli.units import format_size


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
        ("micro-batch", str(report["micro_batch"] or "whole batch"), "", ""),
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
    recipe: RecipeOpt,
    budget: Annotated[Optional[str], typer.Option(
        "--budget", "-b", help="Memory budget per device, e.g. 2MB, 512KiB (default: the "
        "recipe's plan.memory_budget).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table for people, json for scripts.")
                   ] = Format.table,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write plan.json + plan.safetensors into this folder.")] = None,
    inventory: Annotated[Optional[Path], typer.Option(
        "--inventory", "-i", callback=inventory_path,
        help="Budget from this fleet's cached profiles (`ftte profile`), "
        "plus a per-device headroom table under FTTE and under full training.")] = None,
    limit: Annotated[Optional[str], typer.Option(
        "--limit", "-l", help="Only these groups or hosts of the inventory.")] = None,
) -> None:
    """Choose which parameters FTTE trains under a memory budget, and show memory and payload."""
    with handle_errors(fmt):
        report = api.plan(recipe, budget=budget, inventory=inventory, limit=limit,
                          out=out).report
        if fmt == Format.json:
            print_json(report)
        else:
            render(report)
            if out is not None:
                console.print(f"saved {', '.join(report['saved'])}", highlight=False)
