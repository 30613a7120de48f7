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
from ftte_cli.rundir.store import JsonlWriter, write_json
from ftte_cli.sim.runner import SimResult, SimSettings, ratio
from ftte_cli.units import format_size

# the human table fits 80 columns; versions, clients and more are in the JSON / summary.json
COLUMNS = ("strategy", "to target", "final", "best", "memory", "payload", "stale",
           "dropped", "energy (est.)")
# the second table: each strategy's plan, who strict FedAvg left out, ratios against FedAvg
PLAN_COLUMNS = ("strategy", "trained", "vs full", "left out", "time", "memory", "payload")
BASELINE = "fedavg"  # ratios are against this strategy when it ran


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
        "notes": result.notes, "init": result.start,
    }


def summary_doc(result: SimResult) -> Dict[str, Any]:
    """The JSON document of `--format json` and summary.json."""
    return {
        "seed": result.seed, "clients": result.clients, "stragglers": result.stragglers,
        "target_accuracy": result.target_accuracy, "budget_bytes": result.budget_bytes,
        "budget_source": result.budget_source, "full_training_bytes": result.full_training_bytes,
        "notes": result.notes, "fleet": result.fleet, "init": result.start,
        "strategies": with_ratios([summary_row(r) for r in result.results],
                                  result.full_training_bytes),
    }


def with_ratios(rows: List[Dict[str, Any]], full_bytes: int) -> List[Dict[str, Any]]:
    """Each row plus its plan share, memory vs full training and ratios against FedAvg (None
    where FedAvg did not run or a figure is missing, e.g. a target never reached)."""
    base = next((r for r in rows if r["strategy"] == BASELINE), None)
    out = []
    for r in rows:
        plan = r["plan"]
        extra: Dict[str, Any] = {
            "trainable_fraction": plan.trainable_params / plan.total_params
            if plan.total_params else None,
            "memory_vs_full": ratio(r["memory_per_device"], full_bytes),
            "vs_fedavg": None if base is None else {
                key: ratio(r[key], base[key])
                for key in ("time_to_target", "memory_per_device", "payload_to_target")},
        }
        out.append({**r, **extra})
    return out


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
        "excluded_clients": r.excluded, "excluded": r.excluded_clients,
        "over_memory": r.over_memory, "plan": r.plan,
        "wall_s": r.wall_s, "cpu_s": r.cpu_s, "train_cpu_s": r.train_cpu_s,
        "energy": r.energy,
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


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100.0 * x


def plan_rows(doc: Dict[str, Any]) -> List[List[str]]:
    """The plan table's rows (PLAN_COLUMNS): trainable share, memory vs full training, clients
    left out, and time / memory / payload to target as ratios against FedAvg ('-' where FedAvg
    did not run or a strategy never reached the target)."""
    rows = []
    for s in doc["strategies"]:
        vs = s.get("vs_fedavg") or {}
        rows.append([
            s["strategy"], _fmt(_pct(s.get("trainable_fraction")), ".1f", "%"),
            _fmt(s.get("memory_vs_full"), ".2f", "x"), str(s["excluded_clients"]),
            *(_fmt(vs.get(k), ".2f", "x") for k in ("time_to_target", "memory_per_device",
                                                    "payload_to_target")),
        ])
    return rows


def excluded_note(row: Dict[str, Any]) -> Optional[str]:
    """One line naming who strict FedAvg left out (by device class), or None."""
    refs = row.get("excluded") or []
    if not refs:
        return None
    return (f"{row['strategy']}: {len(refs)} clients cannot hold full training and were left "
            f"out (baseline_memory strict): {_by_class(refs)}")


def over_memory_note(row: Dict[str, Any]) -> Optional[str]:
    """One line naming the clients a strategy kept although its plan overflows them, or None."""
    refs = row.get("over_memory") or []
    if not refs:
        return None
    return (f"{row['strategy']}: {len(refs)} clients train although its plan needs more than "
            f"they have (assumed to fit): {_by_class(refs)}")


def _by_class(refs: List[Any]) -> str:
    by_class: Dict[str, List[Any]] = {}
    for ref in refs:
        by_class.setdefault(_get(ref, "device_class") or "profile", []).append(ref)
    return ", ".join(f"{len(v)} {k} ({format_size(min(_get(x, 'memory_bytes') for x in v))} "
                     "usable)" for k, v in by_class.items())


def _get(ref: Any, key: str) -> Any:
    return ref[key] if isinstance(ref, dict) else getattr(ref, key)
