"""Read a train or simulate run directory into one `RunReport`, and its summary rows.

A run holds one or more *series* (one per strategy): `ftte train` writes one (manifest.json with
kind "train", metrics.jsonl, events.jsonl, summary.json with per-device rows); `ftte simulate`
writes one per strategy. Series are found by file layout, not by a fixed list of strategies:
`metrics.jsonl` (named by the manifest's strategy), `metrics-<name>.jsonl` or
`metrics_<name>.jsonl`, and `<name>/metrics.jsonl`; a summary is looked up beside each, or in a
top-level summary.json keyed by series name. Metric records need a time (`t`, `time` or
`elapsed`) and may carry `version` and `accuracy`; records without accuracy are skipped in the
accuracy plots.

One pass of loading (`load_run`) feeds the plots and tables (`ui/report.py`), the JSON document
(`report_rows`), `ftte sweep`'s comparison and the TensorBoard export, so they always agree.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ftte_cli.errors import ConfigError
from ftte_cli.rundir.store import read_json, read_jsonl

_METRICS = re.compile(r"^metrics(?:[-_](?P<name>.+))?\.jsonl$")
_TIME_KEYS = ("t", "time", "elapsed")


@dataclass(frozen=True)
class Point:
    """One metrics record reduced to what the plots need."""

    time: float
    version: Optional[int]
    accuracy: Optional[float]
    loss: Optional[float] = None


@dataclass(frozen=True)
class DeviceStats:
    """One device's share of a run (train runs; simulate runs when they record it)."""

    name: str
    accepted: int
    rejected: int
    peak_memory: Optional[int]  # bytes, measured on the device
    memory_budget: Optional[int]  # bytes the device may use, if known
    status: str = ""
    energy_j: Optional[float] = None  # joules of its jobs (None: not reported)
    energy_estimated: bool = False  # from CPU time x its class's figure, not a sensor


@dataclass(frozen=True)
class Series:
    """One strategy's run: its metric points, summary figures and staleness histogram."""

    name: str
    points: list[Point]
    summary: dict[str, Any]
    staleness: dict[int, int]  # tau -> accepted updates
    devices: list[DeviceStats] = field(default_factory=list)
    energy: list[tuple[float, Optional[int], float, str]] = field(default_factory=list)
    """(time, version, joules, "measured" | "estimated") per update that reported energy."""


@dataclass(frozen=True)
class RunReport:
    """Everything `ftte report` shows about one run directory."""

    path: Path
    kind: str  # "train" | "simulate" | "run"
    target: Optional[float]
    series: list[Series]
    init: Optional[dict[str, Any]] = None  # the initial model: method, accuracy, cost


# --- loading ---------------------------------------------------------------------------------


def load_run(path: Path) -> RunReport:
    """Read a run directory; ConfigError naming the folder when it holds no metrics."""
    if not path.is_dir():
        raise ConfigError(f"{path}: not a run directory")
    manifest = _read_optional(path / "manifest.json")
    top_summary = _read_optional(path / "summary.json")
    kind = str(manifest.get("kind") or ("simulate" if "strategies" in manifest else "run"))
    series = [_series(name, metrics, path, manifest, top_summary)
              for name, metrics in _metric_files(path, manifest)]
    if not series and (path / "sweep.json").exists():
        raise ConfigError(f"{path}: a sweep folder: report one of its runs ({path}/runs/<run>), "
                          f"see {path}/comparison.json, or use --compare {path} OTHER")
    if not series:
        raise ConfigError(f"{path}: no metrics.jsonl found (is this a train or simulate run?)")
    init = manifest.get("init") or top_summary.get("init")
    return RunReport(path, kind, _target(manifest, series), series,
                     init if isinstance(init, dict) else None)


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {"items": data}


def _metric_files(path: Path, manifest: dict[str, Any]) -> list[tuple[str, Path]]:
    """(series name, metrics file) in a stable order."""
    found: list[tuple[str, Path]] = []
    for file in sorted(path.glob("metrics*.jsonl")):
        m = _METRICS.match(file.name)
        if m:
            default = str(manifest.get("strategy") or manifest.get("recipe", {}).get(
                "strategy", {}).get("name") or "run")
            found.append((m.group("name") or default, file))
    for file in sorted(path.glob("*/metrics.jsonl")):
        found.append((file.parent.name, file))
    order = manifest.get("strategies")
    if isinstance(order, list):  # simulate: the order the strategies were asked for
        rank = {str(n): i for i, n in enumerate(order)}
        found.sort(key=lambda item: rank.get(item[0], len(rank)))
    return found


def _series(name: str, metrics: Path, root: Path, manifest: dict[str, Any],
            top_summary: dict[str, Any]) -> Series:
    points = [p for p in (_point(r) for r in read_jsonl(metrics)) if p is not None]
    summary = _summary_for(name, metrics, root, top_summary)
    events = _events_for(metrics, root)
    staleness = _staleness(summary, events)
    return Series(name, points, summary, staleness, _devices(summary, events),
                  _energy_events(events))


def _energy_events(events: list[dict[str, Any]]) -> list[tuple[float, Optional[int], float, str]]:
    """Every update's energy from events.jsonl (accepted or not: the device spent it)."""
    out = []
    for e in events:
        if e.get("kind") in ("update_accepted", "update_rejected") and isinstance(
                e.get("energy_j"), (int, float)):
            version = e.get("version")
            out.append((float(e.get("t") or 0.0), version if isinstance(version, int) else None,
                        float(e["energy_j"]), str(e.get("energy_source") or "estimated")))
    return out


def _point(record: Any) -> Optional[Point]:
    if not isinstance(record, dict):
        return None
    t = next((record[k] for k in _TIME_KEYS if isinstance(record.get(k), (int, float))), None)
    if t is None:
        return None
    acc = record.get("accuracy")
    version = record.get("version")
    loss = record.get("loss")
    return Point(float(t), int(version) if isinstance(version, int) else None,
                 float(acc) if isinstance(acc, (int, float)) else None,
                 float(loss) if isinstance(loss, (int, float)) else None)


def _summary_for(name: str, metrics: Path, root: Path, top: dict[str, Any]) -> dict[str, Any]:
    """The series' summary: beside its metrics file, then keyed in the top summary, then top."""
    beside = metrics.parent / "summary.json"
    m = _METRICS.match(metrics.name)
    if m and m.group("name"):
        beside = metrics.with_name(f"summary-{m.group('name')}.json")
    if beside != root / "summary.json" and beside.exists():
        return _read_optional(beside)
    for key in ("strategies", "results", "summaries"):
        nested = top.get(key)
        if isinstance(nested, dict) and isinstance(nested.get(name), dict):
            return dict(nested[name])
        if isinstance(nested, list):
            for item in nested:
                if isinstance(item, dict) and item.get("strategy") == name:
                    return dict(item)
    if isinstance(top.get(name), dict):
        return dict(top[name])
    return top if top.get("strategy") in (None, name) else {}


def _events_for(metrics: Path, root: Path) -> list[dict[str, Any]]:
    m = _METRICS.match(metrics.name)
    candidates = [metrics.parent / "events.jsonl"]
    if m and m.group("name"):
        candidates.insert(0, metrics.with_name(f"events-{m.group('name')}.jsonl"))
    for path in candidates:
        if path.exists():
            return [e for e in read_jsonl(path) if isinstance(e, dict)]
    return []


def _staleness(summary: dict[str, Any], events: list[dict[str, Any]]) -> dict[int, int]:
    hist = summary.get("staleness_hist")
    if isinstance(hist, dict) and hist:
        return {int(k): int(v) for k, v in sorted(hist.items(), key=lambda kv: int(kv[0]))}
    counts = Counter(int(e["staleness"]) for e in events
                     if e.get("kind") == "update_accepted" and isinstance(e.get("staleness"), int))
    return dict(sorted(counts.items()))


def _devices(summary: dict[str, Any], events: list[dict[str, Any]]) -> list[DeviceStats]:
    rows = summary.get("devices")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return [DeviceStats(str(r.get("name")), int(r.get("accepted") or 0),
                            int(r.get("rejected") or 0), _opt_int(r.get("peak_memory")),
                            _opt_int(r.get("memory_budget")), str(r.get("status") or ""),
                            _opt_float(r.get("energy_j")), bool(r.get("energy_estimated")))
                for r in rows]
    accepted = Counter(e.get("device") for e in events if e.get("kind") == "update_accepted")
    rejected = Counter(e.get("device") for e in events if e.get("kind") == "update_rejected")
    names = sorted({str(n) for n in (*accepted, *rejected) if n})
    return [DeviceStats(n, accepted[n], rejected[n], None, None) for n in names]


def _opt_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) else None


def _opt_float(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) else None


def _target(manifest: dict[str, Any], series: list[Series]) -> Optional[float]:
    for s in series:
        if isinstance(s.summary.get("target_accuracy"), (int, float)):
            return float(s.summary["target_accuracy"])
    target = manifest.get("recipe", {}).get("stop", {}).get("target_accuracy")
    return float(target) if isinstance(target, (int, float)) else None


# --- rows ------------------------------------------------------------------------------------


def report_rows(report: RunReport) -> list[dict[str, Any]]:
    """One JSON-able row per series (the table shows the same values, formatted)."""
    return [_row(s, report.target) for s in report.series]


def _row(s: Series, target: Optional[float]) -> dict[str, Any]:
    accs = [p.accuracy for p in s.points if p.accuracy is not None]
    versions = [p.version for p in s.points if p.version is not None]
    hit = next((p for p in s.points if target is not None and p.accuracy is not None
                and p.accuracy >= target), None)
    get = s.summary.get
    total = sum(s.staleness.values())
    mean = sum(k * v for k, v in s.staleness.items()) / total if total else None
    return {
        "series": s.name,
        "stop_reason": get("stop_reason"),
        "target_accuracy": target,
        "time_to_target": get("time_to_target", hit.time if hit else None),
        "version_at_target": get("version_at_target", hit.version if hit else None),
        "final_accuracy": get("final_accuracy", accs[-1] if accs else None),
        "best_accuracy": get("best_accuracy", max(accs) if accs else None),
        "versions": get("versions", max(versions) if versions else None),
        "duration": get("duration", s.points[-1].time if s.points else None),
        "payload_to_target": get("payload_to_target"),
        "memory_per_device": get("memory_per_device"),
        "staleness_mean": get("staleness_mean", mean),
        "staleness_max": get("staleness_max", max(s.staleness) if s.staleness else None),
        "accepted": get("accepted", total or None),
        "dropped": get("dropped", {}),
        **_energy_row(s, get("time_to_target", hit.time if hit else None),
                      get("versions", max(versions) if versions else None)),
        "devices": [vars(d) for d in s.devices],
    }


def _energy_row(s: Series, to_target: Optional[float], versions: Optional[int]
                ) -> dict[str, Any]:
    """Joules in total, per model version and until the target, and whether estimated.

    A simulate summary carries its own `energy` figures; a train run's come from the energy
    each device reported with its updates (events.jsonl). `energy_label` is "estimated" when any
    part was estimated from CPU time (no power sensor), "measured" otherwise, None without data.
    """
    own = s.summary.get("energy")
    if isinstance(own, dict):
        return {"energy_j": own.get("total_j"), "energy_per_version_j": own.get("per_version_j"),
                "energy_to_target_j": own.get("to_target_j"), "energy_label": own.get("label")}
    if not s.energy:
        return {"energy_j": None, "energy_per_version_j": None, "energy_to_target_j": None,
                "energy_label": None}
    total = sum(e[2] for e in s.energy)
    estimated = any(e[3] != "measured" for e in s.energy)
    return {
        "energy_j": total,
        "energy_per_version_j": total / versions if versions else None,
        "energy_to_target_j": None if to_target is None else sum(
            e[2] for e in s.energy if e[0] <= to_target),
        "energy_label": "estimated" if estimated else "measured",
    }
