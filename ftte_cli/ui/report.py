"""`ftte report`: read a train or simulate run directory, draw its PNGs, build its summary rows.

A run holds one or more *series* (one per strategy): `ftte train` writes one (manifest.json with
kind "train", metrics.jsonl, events.jsonl, summary.json with per-device rows); `ftte simulate`
writes one per strategy. Series are found by file layout, not by a fixed list of strategies:
`metrics.jsonl` (named by the manifest's strategy), `metrics-<name>.jsonl` or
`metrics_<name>.jsonl`, and `<name>/metrics.jsonl`; a summary is looked up beside each, or in a
top-level summary.json keyed by series name. Metric records need a time (`t`, `time` or
`elapsed`) and may carry `version` and `accuracy`; records without accuracy are skipped in the
accuracy plots.

One pass of loading (`load_run`) feeds the plots (`render_plots`), the Rich table and the JSON
document (`report_rows`), so the three always agree.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from ftte_cli.errors import ConfigError
from ftte_cli.output import table
from ftte_cli.store import read_json, read_jsonl
from ftte_cli.units import format_size

log = logging.getLogger(__name__)

REPORT_DIR = "report"
_METRICS = re.compile(r"^metrics(?:[-_](?P<name>.+))?\.jsonl$")
_TIME_KEYS = ("t", "time", "elapsed")
COLUMNS = ("series", "stop", "target", "time to target", "version at target", "final acc",
           "best acc", "versions", "duration", "payload to target", "memory/device",
           "staleness mean/max", "accepted", "dropped", "energy", "energy/version",
           "energy to target")
DEVICE_COLUMNS = ("device", "status", "accepted", "rejected", "peak memory", "memory cap",
                  "energy")


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


def table_cells(row: dict[str, Any]) -> list[str]:
    """The row as the table's text cells (COLUMNS order)."""
    stale = "-" if row["staleness_mean"] is None else \
        f"{row['staleness_mean']:.2f}/{row['staleness_max']}"
    dropped = ", ".join(f"{k}={v}" for k, v in (row["dropped"] or {}).items()) or "0"
    return [
        row["series"], row["stop_reason"] or "-", _pct(row["target_accuracy"]),
        _secs(row["time_to_target"]), _text(row["version_at_target"]),
        _pct(row["final_accuracy"]), _pct(row["best_accuracy"]), _text(row["versions"]),
        _secs(row["duration"]), _size(row["payload_to_target"]), _size(row["memory_per_device"]),
        stale, _text(row["accepted"]), dropped, *_energy_cells(row),
    ]


def _joules(v: Optional[float], label: Optional[str]) -> str:
    if v is None:
        return "-"
    text = f"{v / 1000:.3g} kJ" if v >= 1000 else f"{v:.3g} J"
    return f"{text} ({label})" if label else text


def _energy_cells(row: dict[str, Any]) -> list[str]:
    label = row.get("energy_label")
    return [_joules(row.get(k), label) for k in ("energy_j", "energy_per_version_j",
                                                 "energy_to_target_j")]


def summary_table(report: RunReport, rows: list[dict[str, Any]]) -> Table:
    """One column per series, one line per figure: stays readable on an 80-column terminal."""
    cells = [table_cells(r) for r in rows]
    header = ["", *(c[0] for c in cells)]
    lines = [[name, *(c[i] for c in cells)] for i, name in enumerate(COLUMNS) if i > 0]
    return table(f"Run {report.path} ({report.kind})", header, lines)


def compare_table(comparison: Any) -> Table:
    """`--compare`: time to target of both sides per strategy and their ratio."""
    a, b = comparison.a, comparison.b

    def side(s: Any, name: str) -> str:
        return f"{name}: {'simulated' if s.simulated else 'measured'}"

    rows = [[r.group, _secs(r.a_time_to_target), _secs(r.b_time_to_target),
             "-" if r.ratio is None else f"{r.ratio:.2f}x"] for r in comparison.rows]
    return table(f"A = {a.path}, B = {b.path}", ("strategy", side(a, "A time to target"),
                                                   side(b, "B time to target"),
                                                   comparison.ratio_label), rows)


def device_tables(report: RunReport) -> list[Table]:
    """Per-device figures of every series that recorded them (train runs)."""
    out = []
    for s in report.series:
        if s.devices:
            rows = [[d.name, d.status or "-", d.accepted, d.rejected, _size(d.peak_memory),
                     _size(d.memory_budget),
                     _joules(d.energy_j, "estimated" if d.energy_estimated else "measured")]
                    for d in s.devices]
            out.append(table(f"Devices ({s.name})", DEVICE_COLUMNS, rows))
    return out


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _secs(v: Optional[float]) -> str:
    return "not reached" if v is None else f"{v:.1f}s"


def _size(v: Optional[int]) -> str:
    return "-" if v is None else format_size(v)


def _text(v: Any) -> str:
    return "-" if v is None else str(v)


# --- plots -----------------------------------------------------------------------------------


def render_plots(report: RunReport, out_dir: Optional[Path] = None) -> list[Path]:
    """Write the PNGs into RUN_DIR/report/ (or `out_dir`); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    out = out_dir or report.path / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _accuracy_plot(plt, report, out / "accuracy_vs_time.png", by="time"),
        _accuracy_plot(plt, report, out / "accuracy_vs_version.png", by="version"),
        _staleness_plot(plt, report, out / "staleness_hist.png"),
    ]
    with_devices = [s for s in report.series if s.devices]
    if with_devices:
        written.append(_devices_plot(plt, with_devices[0], out / "devices.png"))
    return written


def _accuracy_plot(plt: Any, report: RunReport, path: Path, by: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for s in report.series:
        pts = [p for p in s.points if p.accuracy is not None
               and (by == "time" or p.version is not None)]
        xs = [p.time if by == "time" else p.version for p in pts]
        ys = [100 * (p.accuracy or 0.0) for p in pts]
        ax.plot(xs, ys, marker="o", markersize=3, label=s.name)
    if report.target is not None:
        ax.axhline(100 * report.target, color="grey", linestyle="--", linewidth=1,
                   label=f"target {100 * report.target:.0f}%")
    clock = {"simulate": "virtual time (s)", "train": "wall time (s)"}.get(report.kind, "time (s)")
    ax.set_xlabel(clock if by == "time" else "model version")
    if by == "version":
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("global test accuracy (%)")
    ax.set_title(f"Accuracy vs {'time' if by == 'time' else 'version'} - {report.path.name}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(plt, fig, path)


def _staleness_plot(plt: Any, report: RunReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    taus = sorted({t for s in report.series for t in s.staleness})
    n = max(1, len(report.series))
    width = 0.8 / n
    for i, s in enumerate(report.series):
        xs = [t + (i - (n - 1) / 2) * width for t in taus]
        ax.bar(xs, [s.staleness.get(t, 0) for t in taus], width=width, label=s.name)
    if not taus:
        ax.text(0.5, 0.5, "no accepted updates recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("staleness tau (versions behind on arrival)")
    ax.set_xticks(taus)
    ax.set_ylabel("accepted updates")
    ax.set_title(f"Staleness of accepted updates - {report.path.name}")
    ax.grid(alpha=0.3, axis="y")
    if taus:
        ax.legend()
    return _save(plt, fig, path)


def _devices_plot(plt: Any, s: Series, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    names = [d.name for d in s.devices]
    xs = range(len(names))
    left.bar(xs, [d.accepted for d in s.devices], label="accepted", color="tab:green")
    left.bar(xs, [d.rejected for d in s.devices], bottom=[d.accepted for d in s.devices],
             label="rejected", color="tab:red")
    left.set_xticks(list(xs), names, rotation=30, ha="right")
    left.set_ylabel("updates")
    left.yaxis.get_major_locator().set_params(integer=True)
    left.set_title(f"Updates per device ({s.name})")
    left.legend()
    mib = 2**20
    right.bar(xs, [(d.peak_memory or 0) / mib for d in s.devices], label="peak (measured)",
              color="tab:blue")
    budgets = [(i, d.memory_budget / mib) for i, d in enumerate(s.devices) if d.memory_budget]
    if budgets:
        right.scatter([i for i, _ in budgets], [b for _, b in budgets], marker="_", s=900,
                      color="black", label="memory cap", zorder=3)
    right.set_xticks(list(xs), names, rotation=30, ha="right")
    right.set_ylabel("MiB")
    right.set_title("Peak memory per device")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
