"""Pool a sweep's runs over seeds (mean and spread per strategy/override group), draw its PNGs,
and lay two sweeps (or runs) side by side: `ftte report --compare MEASURED SIMULATED`.

Spread is the sample standard deviation over the seeds that have the figure (0 for one seed);
time to target pools only the runs that reached the target (`reached` says how many did).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ftte_cli.errors import ConfigError
from ftte_cli.rundir.store import read_json, write_json
from ftte_cli.sweep.records import RunRecord, RunStatus, read_record, read_sweep


@dataclass(frozen=True)
class Stat:
    """Mean and spread of one figure over the seeds that have it."""

    mean: Optional[float]
    spread: Optional[float]  # sample standard deviation; 0.0 for a single value
    n: int  # values pooled


@dataclass(frozen=True)
class GroupStats:
    """One comparison row: a strategy (and its --set values) pooled over seeds."""

    group: str
    strategy: str
    overrides: dict[str, Any]
    runs: int
    failed: int
    reached: int  # runs that reached the target
    time_to_target: Stat
    final_accuracy: Stat
    payload_to_target: Stat
    memory_per_device: Optional[int]  # the plan's estimate
    peak_memory_by_class: dict[str, Stat]  # measured on the devices (fleet sweeps)


def stat(values: Sequence[Optional[float]]) -> Stat:
    """Mean and sample standard deviation of the values that are not None."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs))


def compare(records: Sequence[RunRecord]) -> list[GroupStats]:
    """One row per group, in the order the groups first appear."""
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    return [_group(name, rs) for name, rs in groups.items()]


def _group(name: str, records: list[RunRecord]) -> GroupStats:
    ok = [r for r in records if r.status == RunStatus.ok]
    classes = sorted({c for r in ok for c in r.peak_memory_by_class})
    memory = [r.memory_per_device for r in ok if r.memory_per_device is not None]
    return GroupStats(
        group=name, strategy=records[0].strategy, overrides=dict(records[0].overrides),
        runs=len(records), failed=len(records) - len(ok),
        reached=sum(r.time_to_target is not None for r in ok),
        time_to_target=stat([r.time_to_target for r in ok]),
        final_accuracy=stat([r.final_accuracy for r in ok]),
        payload_to_target=stat([r.payload_to_target for r in ok]),
        memory_per_device=max(memory) if memory else None,
        peak_memory_by_class={c: stat([r.peak_memory_by_class.get(c) for r in ok])
                              for c in classes},
    )


# ---- files ----------------------------------------------------------------------------------


def write_comparison(out: Path, records: Sequence[RunRecord], rows: Sequence[GroupStats],
                     target: float) -> list[Path]:
    """comparison.json plus time_to_target.png and accuracy.png in the sweep folder."""
    write_json(out / "comparison.json", {"target_accuracy": target, "groups": list(rows),
                                         "runs": list(records)})
    return [_time_plot(out / "time_to_target.png", rows), _accuracy_plot(out, records, target)]


def _time_plot(path: Path, rows: Sequence[GroupStats]) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = list(range(len(rows)))
    means = [r.time_to_target.mean or 0.0 for r in rows]
    spreads = [r.time_to_target.spread or 0.0 for r in rows]
    ax.bar(xs, means, yerr=spreads, capsize=4, color="tab:blue")
    for x, r in zip(xs, rows):
        if r.time_to_target.mean is None:
            ax.text(x, 0, "not reached", ha="center", va="bottom", rotation=90, fontsize=8)
    ax.set_xticks(xs, [r.group for r in rows], rotation=20, ha="right")
    ax.set_ylabel("time to target (s), mean +- sd over seeds")
    ax.set_title("Time to target per strategy")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _accuracy_plot(out: Path, records: Sequence[RunRecord], target: float) -> Path:
    """Accuracy against time, one line per run (label group/seed)."""
    from ftte_cli.rundir.reader import load_run
    from ftte_cli.ui.plots import accuracy_plot

    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.status != RunStatus.ok:
            continue
        try:
            run = load_run(Path(r.run_dir))
        except ConfigError:
            continue
        points = [(p.time, p.accuracy) for p in run.series[0].points if p.accuracy is not None]
        series[f"{r.group} seed {r.seed}"] = points
    return accuracy_plot(series, out / "accuracy.png", target=target, xlabel="time (s)",
                         title="Global test accuracy per run")


# ---- two sweeps side by side ----------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its folder, whether it was simulated, time to target by group."""

    path: Path
    simulated: bool
    times: dict[str, Optional[float]]  # group (strategy for a plain run) -> mean time to target


@dataclass(frozen=True)
class CompareRow:
    """One strategy (group) in both runs."""

    group: str
    a_time_to_target: Optional[float]
    b_time_to_target: Optional[float]
    ratio: Optional[float]  # simulated / measured (b / a when neither or both are simulated)


@dataclass(frozen=True)
class Comparison:
    """`ftte report --compare A B`: which side is measured, which simulated, and the ratios."""

    a: Side
    b: Side
    ratio_label: str
    rows: list[CompareRow]


def read_side(path: Path) -> Side:
    """A sweep folder (pooled over seeds) or a single train/simulate run directory."""
    if (path / "sweep.json").exists():
        doc = read_json(path / "sweep.json")
        from ftte_cli.sweep.grid import GridSpec, expand

        grid: GridSpec = read_sweep(path).grid
        records = [r for r in (read_record(path, run) for run in expand(grid)) if r is not None]
        if not records:
            raise ConfigError(f"{path}: the sweep has no finished runs yet")
        return Side(path, bool(doc.get("simulate")),
                    {g.group: g.time_to_target.mean for g in compare(records)})
    from ftte_cli.rundir.reader import load_run, report_rows

    run = load_run(path)
    return Side(path, run.kind == "simulate",
                {row["series"]: row["time_to_target"] for row in report_rows(run)})


def compare_runs(a: Path, b: Path) -> Comparison:
    """Per group present in both: the ratio of simulated to measured time to target."""
    left, right = read_side(a), read_side(b)
    flip = left.simulated and not right.simulated  # ratio is always simulated / measured
    label = "simulated / measured" if left.simulated != right.simulated else "B / A"
    shared = [g for g in left.times if g in right.times]
    if not shared:
        raise ConfigError(f"{a} and {b} share no strategy: {sorted(left.times)} vs "
                          f"{sorted(right.times)}")
    rows = []
    for g in shared:
        ta, tb = left.times[g], right.times[g]
        num, den = (ta, tb) if flip else (tb, ta)
        ratio = num / den if num is not None and den else None
        rows.append(CompareRow(g, ta, tb, ratio))
    return Comparison(left, right, label, rows)
