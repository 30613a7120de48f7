"""The run directory of `ftte simulate` and the rows its table and JSON are rendered from.

    <run>/manifest.json            settings, recipe, seed, budget, plans, notes
    <run>/<strategy>/metrics.jsonl one line per evaluation (time, version, accuracy, loss, bytes)
    <run>/summary.json             every strategy's RunSummary, plan and CPU figures
    <run>/accuracy.png             accuracy against virtual time, all strategies
    <run>/staleness.png            staleness histograms
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from ftte_cli.config.recipe import recipe_to_dict
from ftte_cli.engine.metrics import EvalPoint
from ftte_cli.sim.runner import SimResult, SimSettings
from ftte_cli.store import JsonlWriter, write_json
from ftte_cli.units import format_size

# the human table fits 80 columns; versions, clients and more are in the JSON / summary.json
COLUMNS = ("strategy", "to target", "final", "best", "memory", "payload", "stale",
           "dropped", "energy (est.)")


class RunWriter:
    """Streams per-strategy metrics.jsonl while strategies run, then writes the summary files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writers: Dict[str, JsonlWriter] = {}

    def on_eval(self, strategy: str, point: EvalPoint) -> None:
        """Append one evaluation to <strategy>/metrics.jsonl."""
        if strategy not in self._writers:
            self._writers[strategy] = JsonlWriter(self.folder / strategy / "metrics.jsonl")
        self._writers[strategy].write(point)

    def finish(self, settings: SimSettings, result: SimResult) -> None:
        """Close the streams; write manifest.json, summary.json and the plots."""
        from ftte_cli.ui.plots import accuracy_plot, staleness_plot

        for writer in self._writers.values():
            writer.close()
        write_json(self.folder / "manifest.json", manifest(settings, result))
        write_json(self.folder / "summary.json", summary_doc(result))
        accuracy_plot({r.name: [(e.time, e.accuracy) for e in r.metrics.evals]
                       for r in result.results}, self.folder / "accuracy.png",
                      target=result.target_accuracy)
        staleness_plot({r.name: dict(r.metrics.staleness) for r in result.results},
                       self.folder / "staleness.png")


def manifest(settings: SimSettings, result: SimResult) -> Dict[str, Any]:
    """What was simulated, enough to run it again."""
    return {
        "kind": "simulate", "seed": result.seed, "clients": result.clients,
        "stragglers": result.stragglers, "strategies": list(settings.strategies),
        "fleet": str(settings.fleet) if settings.fleet else None,
        "budget_bytes": result.budget_bytes, "budget_source": result.budget_source,
        "full_training_bytes": result.full_training_bytes,
        "stop_at_target": settings.stop_at_target, "eval_samples": settings.eval_samples,
        "recipe_file": str(settings.recipe.source) if settings.recipe.source else None,
        "recipe": recipe_to_dict(settings.recipe),
        "plans": {r.name: r.plan for r in result.results},
        "notes": result.notes,
    }


def summary_doc(result: SimResult) -> Dict[str, Any]:
    """The JSON document of `--format json` and summary.json."""
    return {
        "seed": result.seed, "clients": result.clients, "stragglers": result.stragglers,
        "target_accuracy": result.target_accuracy, "budget_bytes": result.budget_bytes,
        "budget_source": result.budget_source, "full_training_bytes": result.full_training_bytes,
        "notes": result.notes,
        "strategies": [summary_row(r) for r in result.results],
    }


def summary_row(r: Any) -> Dict[str, Any]:
    """One strategy's figures as plain data (StrategyResult -> dict)."""
    s = r.summary
    return {
        "strategy": r.name, "time_to_target": s.time_to_target,
        "version_at_target": s.version_at_target, "final_accuracy": s.final_accuracy,
        "best_accuracy": s.best_accuracy, "memory_per_device": s.memory_per_device,
        "payload_to_target": s.payload_to_target, "payload_total": s.payload_total,
        "bundle_bytes": s.bundle_bytes, "staleness_mean": s.staleness_mean,
        "staleness_max": s.staleness_max, "staleness_hist": s.staleness_hist,
        "dropped": s.dropped, "dropped_total": sum(s.dropped.values()),
        "jobs_dispatched": s.jobs_dispatched, "jobs_lost": s.jobs_lost, "accepted": s.accepted,
        "versions": s.versions, "duration": s.duration, "clients": r.clients,
        "excluded_clients": r.excluded, "plan": r.plan,
        "wall_s": r.wall_s, "cpu_s": r.cpu_s, "train_cpu_s": r.train_cpu_s,
        "energy": getattr(r, "energy", None),
    }


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _energy_cell(energy: Optional[Dict[str, Any]]) -> str:
    """Estimated joules to target (else in total): `12.3 J`, `-` without figures."""
    if not energy:
        return "-"
    value = energy.get("to_target_j")
    value = energy.get("total_j") if value is None else value
    return "-" if value is None else (f"{value / 1000:.3g} kJ" if value >= 1000 else
                                      f"{value:.3g} J")


def table_rows(doc: Dict[str, Any]) -> List[List[str]]:
    """The human table's rows, from the same document the JSON output prints."""
    rows = []
    for s in doc["strategies"]:
        mem = s["memory_per_device"]
        payload = s["payload_to_target"]
        rows.append([
            s["strategy"], _fmt(s["time_to_target"], ".1f", " s"),
            _fmt(s["final_accuracy"], ".3f"), _fmt(s["best_accuracy"], ".3f"),
            format_size(mem) if mem is not None else "-",
            format_size(payload) if payload is not None else "-",
            f"{_fmt(s['staleness_mean'], '.1f')}/{_fmt(s['staleness_max'], 'd')}",
            str(s["dropped_total"]), _energy_cell(s.get("energy")),
        ])
    return rows
