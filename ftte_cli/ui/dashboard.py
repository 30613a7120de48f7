"""The live dashboard of `ftte train`: a pure renderable of a RunSnapshot.

`render(snapshot)` builds the whole screen from one immutable snapshot (device table, global panel,
accuracy sparkline, event log); `Dashboard` pulls a fresh snapshot on every refresh through
`Live(get_renderable=...)` on a terminal, and prints one plain progress line per change otherwise.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ftte_cli.server.snapshot import DeviceRow, DeviceStatus, RunSnapshot
from ftte_cli.units import format_size

SPARK = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {
    DeviceStatus.waiting: "dim",
    DeviceStatus.idle: "cyan",
    DeviceStatus.training: "green",
    DeviceStatus.offline: "yellow",
    DeviceStatus.failed: "bold red",
    DeviceStatus.killed_for_memory: "bold red",
    DeviceStatus.done: "blue",
}


def sparkline(values: list[float], width: int = 40, lo: float = 0.0, hi: float = 1.0) -> str:
    """Values in [lo, hi] as a one-line bar chart of at most `width` cells (latest on the right)."""
    values = values[-width:]
    span = (hi - lo) or 1.0
    cells = []
    for v in values:
        frac = min(max((v - lo) / span, 0.0), 1.0)
        cells.append(SPARK[min(int(frac * len(SPARK)), len(SPARK) - 1)])
    return "".join(cells)


def _ago(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


def _opt(value: Optional[object]) -> str:
    return "-" if value is None else str(value)


def _memory(row: DeviceRow) -> str:
    if row.peak_memory is None:
        return "-"
    peak = row.peak_memory / 2**20
    if not row.memory_budget:
        return f"{peak:.0f} MiB"
    budget = row.memory_budget / 2**20
    return f"{peak:.0f}/{budget:.0f} MiB {100 * peak / budget:.0f}%"


def device_table(snapshot: RunSnapshot) -> Table:
    """One row per device: status, version, staleness, last seen, peak memory, bytes."""
    t = Table(title="Devices", title_justify="left")
    for col in ("device", "status", "ver", "stale", "seen", "peak/budget", "up", "down", "ok",
                "rej"):
        t.add_column(col, no_wrap=True)
    for row in snapshot.devices:
        t.add_row(
            row.name, Text(row.status.value, style=STATUS_STYLE[row.status]), _opt(row.version),
            _opt(row.staleness), _ago(row.last_seen), _memory(row), format_size(row.bytes_up),
            format_size(row.bytes_down), str(row.accepted), str(row.rejected),
        )
    return t


def global_panel(snapshot: RunSnapshot) -> Panel:
    """Version, buffer fill, throughput, staleness, drops, elapsed time."""
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(snapshot.dropped.items())) or "none"
    stale_mean = "-" if snapshot.staleness_mean is None else f"{snapshot.staleness_mean:.2f}"
    lines = [
        f"state {snapshot.state.value}   strategy {snapshot.strategy}   run {snapshot.run_id}",
        f"version {snapshot.version}   buffer {snapshot.buffer_fill}/{snapshot.buffer_size}   "
        f"accepted {snapshot.accepted}   updates/min {snapshot.updates_per_min:.1f}",
        f"staleness mean {stale_mean} max {_opt(snapshot.staleness_max)}   dropped {dropped}",
        f"elapsed {snapshot.elapsed:.0f}s",
    ]
    if snapshot.stop_reason is not None:
        lines.append(f"stopped: {snapshot.stop_reason.value}")
    return Panel("\n".join(lines), title="Run", title_align="left")


def accuracy_panel(snapshot: RunSnapshot) -> Panel:
    """Accuracy over versions as a sparkline, with the latest, best and target figures."""
    accs = [p.accuracy for p in snapshot.accuracy]
    if not accs:
        body = "no evaluation yet"
    else:
        target = "-" if snapshot.target_accuracy is None else f"{snapshot.target_accuracy:.3f}"
        body = (f"{sparkline(accs)}\nlast {accs[-1]:.3f} (v{snapshot.accuracy[-1].version})   "
                f"best {max(accs):.3f}   target {target}")
    return Panel(body, title="Test accuracy", title_align="left")


def event_panel(snapshot: RunSnapshot, lines: int = 8) -> Panel:
    """The most recent events, oldest first."""
    rows = [f"{e.elapsed:7.1f}s {e.kind:<16} {e.device:<12} {e.detail}".rstrip()
            for e in snapshot.events[-lines:]]
    return Panel("\n".join(rows) or "no events yet", title="Events", title_align="left")


def render(snapshot: RunSnapshot) -> RenderableType:
    """The whole dashboard for one snapshot."""
    return Group(device_table(snapshot), global_panel(snapshot), accuracy_panel(snapshot),
                 event_panel(snapshot))


def progress_line(snapshot: RunSnapshot) -> str:
    """One plain line for logs and pipes."""
    acc = snapshot.last_accuracy
    online = sum(d.status in (DeviceStatus.idle, DeviceStatus.training) for d in snapshot.devices)
    dropped = sum(snapshot.dropped.values())
    return (f"[{snapshot.elapsed:6.1f}s] {snapshot.state.value} v{snapshot.version} "
            f"acc {'-' if acc is None else f'{acc:.3f}'} accepted {snapshot.accepted} "
            f"dropped {dropped} devices {online}/{len(snapshot.devices)} online")


def _milestone(snapshot: RunSnapshot) -> tuple:
    """What deserves a new plain line: a new version, state, device status or drop count
    (single accepted updates do not, so long runs do not flood a log)."""
    return (snapshot.state, snapshot.version, sum(snapshot.dropped.values()),
            tuple(d.status for d in snapshot.devices))


class Dashboard:
    """Shows a run while it lasts: Rich Live on a terminal, plain progress lines otherwise.

    Use as a context manager around the run, calling `tick()` from the driving loop; the snapshot
    is pulled from `get_snapshot`, never pushed.
    """

    def __init__(self, get_snapshot: Callable[[], RunSnapshot], *,
                 console: Optional[Console] = None, live: Optional[bool] = None,
                 stream: Optional[TextIO] = None,
                 line_every: float = 5.0, get_time: Callable[[], float] = time.monotonic) -> None:
        self._get_snapshot = get_snapshot
        self._console = console or Console(stderr=True)
        self._live_enabled = self._console.is_terminal if live is None else live
        self._stream = stream
        self._line_every = line_every
        self._get_time = get_time
        self._live: Optional[Live] = None
        self._last_key: tuple = ()
        self._last_line_at = -float("inf")

    def __enter__(self) -> Dashboard:
        if self._live_enabled:
            self._live = Live(get_renderable=lambda: render(self._get_snapshot()),
                              console=self._console, refresh_per_second=2, transient=False)
            self._live.start()
        return self

    def tick(self) -> None:
        """Plain mode: print a progress line when something changed or every `line_every` s."""
        if self._live is not None:
            return
        snap = self._get_snapshot()
        now = self._get_time()
        key = _milestone(snap)
        if key != self._last_key or now - self._last_line_at >= self._line_every:
            self._write(progress_line(snap))
            self._last_key, self._last_line_at = key, now

    def _write(self, line: str) -> None:
        if self._stream is not None:
            self._stream.write(line + "\n")
            self._stream.flush()
        else:
            self._console.print(line, highlight=False, markup=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        else:
            self._write(progress_line(self._get_snapshot()))
