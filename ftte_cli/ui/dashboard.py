"""The live dashboard of `ftte train`: a pure renderable of a RunSnapshot.

`render(snapshot)` builds the whole screen from one immutable snapshot (device table, global panel,
accuracy sparkline, event log); `Dashboard` pulls a fresh snapshot on every refresh through
`Live(get_renderable=...)` on a terminal, and prints one plain progress line per change otherwise.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ftte_cli.server.snapshot import NOTABLE_EVENTS, DeviceRow, DeviceStatus, RunSnapshot
from ftte_cli.units import format_size

SPARK = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {
    DeviceStatus.waiting: "dim",
    DeviceStatus.idle: "cyan",
    DeviceStatus.training: "green",
    DeviceStatus.paused: "magenta",
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


WIDE = 100  # below this many columns the device table drops last-seen and byte counts
NARROW_DROP = ("seen", "up", "down")


def _status(row: DeviceRow) -> Text:
    """The status cell; a paused device says why it waits ("waiting: on battery 34%")."""
    if row.status == DeviceStatus.paused:
        return Text(f"waiting: {row.waiting_reason or 'device conditions'}",
                    style=STATUS_STYLE[row.status])
    return Text(row.status.value, style=STATUS_STYLE[row.status])


def _battery(row: DeviceRow) -> str:
    """`34%`, `80% charging`, `charging` (no level), or `-` when the device reports neither."""
    level = None if row.battery is None else f"{100 * row.battery:.0f}%"
    plug = {True: "charging", False: "on battery", None: None}[row.charging]
    if level and plug == "charging":
        return f"{level} charging"
    return level or plug or "-"


def _has_power(snapshot: RunSnapshot) -> bool:
    """Battery/temperature columns only when some device reports them."""
    return any(r.battery is not None or r.charging is not None or r.temperature_c is not None
               or r.status == DeviceStatus.paused for r in snapshot.devices)


def device_table(snapshot: RunSnapshot, width: int = WIDE) -> Table:
    """One row per device: status, version, staleness, last seen, peak memory, bytes (and
    battery and temperature when devices report them); on a narrow terminal the least needed
    columns go first, so none is cut to nothing."""
    power = _has_power(snapshot)
    columns = ("device", "status", "ver", "stale", "seen", "peak/budget", "up", "down", "ok",
               "rej") + (("battery", "temp") if power else ())
    keep = [c for c in columns if width >= WIDE or c not in NARROW_DROP]
    t = Table(title="Devices", title_justify="left", pad_edge=width >= WIDE)
    for col in keep:
        t.add_column(col, no_wrap=True, min_width=8 if col == "status" else None)
    for row in snapshot.devices:
        temp = "-" if row.temperature_c is None else f"{row.temperature_c:.0f}C"
        cells: dict[str, RenderableType] = {
            "device": row.name, "status": _status(row),
            "ver": _opt(row.version), "stale": _opt(row.staleness), "seen": _ago(row.last_seen),
            "peak/budget": _memory(row), "up": format_size(row.bytes_up),
            "down": format_size(row.bytes_down), "ok": str(row.accepted),
            "rej": str(row.rejected), "battery": _battery(row), "temp": temp,
        }
        t.add_row(*(cells[c] for c in keep))
    return t


def target_text(target: Optional[float]) -> str:
    """The target as the recipe gave it (0.9999 stays 0.9999, 0.9 is 0.9)."""
    return "-" if target is None else f"{target:.10g}"


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


def accuracy_panel(snapshot: RunSnapshot, width: int = 40) -> Panel:
    """Accuracy over versions as a sparkline on a 0..1 axis with its version range, and the
    latest accuracy and loss, the best accuracy and the target as given."""
    points = snapshot.accuracy
    if not points:
        body = "no evaluation yet"
    else:
        shown = points[-width:]
        last, best = points[-1], max(p.accuracy for p in points)
        loss = "-" if last.loss is None else f"{last.loss:.4g}"
        body = (f"0 {sparkline([p.accuracy for p in shown], width)} 1   "
                f"v{shown[0].version}..v{last.version}\n"
                f"acc {last.accuracy:.3f}  loss {loss}  (v{last.version})   best {best:.3f}   "
                f"target {target_text(snapshot.target_accuracy)}")
    return Panel(body, title="Test accuracy", title_align="left")


def pick_events(events: tuple, lines: int) -> list:
    """The last `lines` events, notable ones (offline, rejected, ...) kept before routine ones
    (update_accepted), in time order."""
    notable = [e for e in events if e.kind in NOTABLE_EVENTS][-lines:]
    routine = [e for e in events if e.kind not in NOTABLE_EVENTS][-(lines - len(notable)):] \
        if len(notable) < lines else []
    return sorted(notable + routine, key=lambda e: e.elapsed)


def event_panel(snapshot: RunSnapshot, lines: int = 8) -> Panel:
    """Recent events, oldest first, notable ones pinned."""
    rows = [f"{e.elapsed:7.1f}s {e.kind:<16} {e.device:<12} {e.detail}".rstrip()
            for e in pick_events(snapshot.events, lines)]
    return Panel("\n".join(rows) or "no events yet", title="Events", title_align="left")


def render(snapshot: RunSnapshot, width: int = WIDE, height: int = 50) -> RenderableType:
    """The whole dashboard for one snapshot, fitted to a width x height terminal (at 80x24 the
    narrow device table and fewer event lines; every panel stays)."""
    fixed = 4 + 2 * len(snapshot.devices) + 8 + 4 + 2  # table, run panel, accuracy, event frame
    lines = max(3, min(8, height - fixed))
    spark = max(10, min(40, width - 30))
    return Group(device_table(snapshot, width), global_panel(snapshot),
                 accuracy_panel(snapshot, spark), event_panel(snapshot, lines))


def progress_line(snapshot: RunSnapshot) -> str:
    """One plain line for logs and pipes."""
    acc = snapshot.last_accuracy
    online = sum(d.status in (DeviceStatus.idle, DeviceStatus.training) for d in snapshot.devices)
    dropped = sum(snapshot.dropped.values())
    paused = sum(d.status == DeviceStatus.paused for d in snapshot.devices)
    return (f"[{snapshot.elapsed:6.1f}s] {snapshot.state.value} v{snapshot.version} "
            f"acc {'-' if acc is None else f'{acc:.3f}'} accepted {snapshot.accepted} "
            f"dropped {dropped} devices {online}/{len(snapshot.devices)} online"
            + (f", {paused} waiting" if paused else ""))


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
            self._live = Live(get_renderable=lambda: render(self._get_snapshot(),
                                                            *self._console.size),
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


class Phases:
    """What `ftte train` is doing before the dashboard can show a run (profile, plan, deploy
    per device, agents): a Rich spinner line on a terminal, one plain line per step otherwise.

    `update(message)` from any thread; `close()` (idempotent) before the dashboard starts, since
    Rich shows one live display at a time.
    """

    def __init__(self, console: Optional[Console] = None, live: Optional[bool] = None,
                 get_time: Callable[[], float] = time.monotonic) -> None:
        self._console = console or Console(stderr=True)
        self._live = self._console.is_terminal if live is None else live
        self._get_time = get_time
        self._t0 = get_time()
        self._status: Optional[Any] = None
        self.lines: list[str] = []  # every step shown, for the record

    def update(self, message: str) -> None:
        """Show the current step (with the seconds since the first one)."""
        line = f"[{self._get_time() - self._t0:5.1f}s] {message}"
        self.lines.append(line)
        if not self._live:
            self._console.print(line, highlight=False, markup=False, soft_wrap=True)
        elif self._status is None:
            self._status = self._console.status(line)
            self._status.start()
        else:
            self._status.update(line)

    def close(self) -> None:
        """Stop the spinner (the dashboard takes the screen next)."""
        if self._status is not None:
            self._status.stop()
            self._status = None
