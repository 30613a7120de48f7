"""TensorBoard export of a run directory (`--tensorboard DIR` on report, train and simulate).

The run is read with `rundir/reader.load_run` (the same pass the PNGs and the summary use) and
written with torch's `SummaryWriter` into `DIR/<run folder name>/<series>`, one TensorBoard
"run" per strategy, so `tensorboard --logdir DIR` overlays every run exported into DIR. Needs the
`tensorboard` package: `pip install 'ftte-cli[tensorboard]'`; without it every command stops
with exit code 2 and that hint, before any work is done.

Scalars (step = model version where there is one; wall time = seconds since the run started):
- `accuracy/test`, `loss/test` from metrics.jsonl;
- `updates/accepted`, `updates/dropped` (running counts) and `staleness/update` per accepted
  update from events.jsonl (train runs); a simulate run's totals at its last version, and its
  staleness histogram as `staleness/count` over tau;
- `energy/cumulative_j` per update with energy (train), `energy/total_j`, `energy/per_version_j`,
  `energy/to_target_j` (every run that has energy figures);
- per device: `device/<name>/peak_memory_mib`, `device/<name>/energy_j`, `device/<name>/accepted`
  at the run's last version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ftte_cli.errors import ConfigError
from ftte_cli.rundir.reader import RunReport, Series, report_rows
from ftte_cli.rundir.store import read_jsonl

EXTRA_HINT = "pip install 'ftte-cli[tensorboard]'"


def summary_writer_class() -> Any:
    """torch's SummaryWriter; ConfigError (exit 2) naming the extra when tensorboard is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard: needs the tensorboard package: {EXTRA_HINT}") from None
    return SummaryWriter


def export_run(report: RunReport, logdir: Path, run_name: Optional[str] = None) -> list[Path]:
    """Write every series of `report` under `logdir/<run_name>/<series>`; returns the folders."""
    writer_cls = summary_writer_class()
    rows = {r["series"]: r for r in report_rows(report)}
    name = run_name or report.path.name
    folders = []
    for s in report.series:
        folder = Path(logdir) / name / s.name
        writer = writer_cls(log_dir=str(folder))
        try:
            _write_series(writer, s, rows[s.name], report.path)
        finally:
            writer.close()
        folders.append(folder)
    return folders


def _write_series(w: Any, s: Series, row: dict[str, Any], root: Path) -> None:
    last = max([p.version for p in s.points if p.version is not None] or [0])
    for p in s.points:
        step = p.version if p.version is not None else 0
        if p.accuracy is not None:
            w.add_scalar("accuracy/test", p.accuracy, step, walltime=p.time)
        if p.loss is not None:
            w.add_scalar("loss/test", p.loss, step, walltime=p.time)
    events = _events(root, s)
    if events:
        _write_updates(w, events)
    else:
        _write_totals(w, row, s, last)
    for key, tag in (("energy_j", "total_j"), ("energy_per_version_j", "per_version_j"),
                     ("energy_to_target_j", "to_target_j")):
        if isinstance(row.get(key), (int, float)):
            w.add_scalar(f"energy/{tag}", row[key], last)
    for d in s.devices:
        if d.peak_memory is not None:
            w.add_scalar(f"device/{d.name}/peak_memory_mib", d.peak_memory / 2**20, last)
        if d.energy_j is not None:
            w.add_scalar(f"device/{d.name}/energy_j", d.energy_j, last)
        w.add_scalar(f"device/{d.name}/accepted", d.accepted, last)


def _events(root: Path, s: Series) -> list[dict[str, Any]]:
    """The series' update events (train runs keep events.jsonl beside metrics.jsonl)."""
    path = root / "events.jsonl"
    if len(list(root.glob("metrics*.jsonl"))) != 1 or not path.exists():
        return []
    return [e for e in read_jsonl(path) if isinstance(e, dict)
            and e.get("kind") in ("update_accepted", "update_rejected")]


def _write_updates(w: Any, events: list[dict[str, Any]]) -> None:
    """Running counts, staleness and energy, one point per update, stepped by model version."""
    accepted = dropped = 0
    energy = 0.0
    version = 0
    for e in events:
        t = float(e.get("t") or 0.0)
        if isinstance(e.get("version"), int):
            version = e["version"]
        if e["kind"] == "update_accepted":
            accepted += 1
            w.add_scalar("updates/accepted", accepted, version, walltime=t)
            if isinstance(e.get("staleness"), int):
                w.add_scalar("staleness/update", e["staleness"], version, walltime=t)
        else:
            dropped += 1
            w.add_scalar("updates/dropped", dropped, version, walltime=t)
        if isinstance(e.get("energy_j"), (int, float)):
            energy += float(e["energy_j"])
            w.add_scalar("energy/cumulative_j", energy, version, walltime=t)


def _write_totals(w: Any, row: dict[str, Any], s: Series, last: int) -> None:
    """A run without update events (simulate): its totals and staleness histogram."""
    if isinstance(row.get("accepted"), int):
        w.add_scalar("updates/accepted", row["accepted"], last)
    w.add_scalar("updates/dropped", sum((row.get("dropped") or {}).values()), last)
    for tau, count in sorted(s.staleness.items()):
        w.add_scalar("staleness/count", count, tau)
    if isinstance(row.get("staleness_mean"), (int, float)):
        w.add_scalar("staleness/mean", row["staleness_mean"], last)
