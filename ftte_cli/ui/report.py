"""`ftte report`'s tables and PNGs, drawn from one `RunReport` (read by `rundir/reader.py`).

The Rich tables (`summary_table`, `device_tables`, `compare_table`) format the rows that
`report_rows` builds for the JSON document, and `render_plots` draws the same loaded run, so the
three always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from ftte_cli.output import table
from ftte_cli.rundir.reader import RunReport, Series
from ftte_cli.units import format_size

REPORT_DIR = "report"
COLUMNS = ("series", "stop", "target", "time to target", "version at target", "final acc",
           "best acc", "versions", "duration", "payload to target", "memory/device",
           "staleness mean/max", "accepted", "dropped", "energy", "energy/version",
           "energy to target")
DEVICE_COLUMNS = ("device", "status", "accepted", "rejected", "peak memory", "memory cap",
                  "energy")



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
