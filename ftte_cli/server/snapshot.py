"""Immutable views of a running server: what the dashboard, `/v1/status` and the CLI read.

The server changes its private state under one lock and hands out these frozen snapshots, so a
renderer never sees a half-updated run (STYLE.md: dashboards are pure renderables of a snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional


class DeviceStatus(str, Enum):
    """Where a device stands, as the server sees it."""

    waiting = "waiting"  # expected, never registered yet
    idle = "idle"  # registered, no job in hand
    training = "training"  # holds a job
    paused = "paused"  # registered, but the recipe's device rules hold it back (battery, heat)
    offline = "offline"  # not seen for longer than the offline timeout
    failed = "failed"  # its agent died and was not restarted
    killed_for_memory = "killed_for_memory"  # the kernel killed its agent for memory, for good
    done = "done"  # told that the run is over


class RunState(str, Enum):
    """Lifecycle of a run."""

    starting = "starting"
    running = "running"
    stopping = "stopping"
    done = "done"


class StopReason(str, Enum):
    """Why a run ended."""

    target = "target_accuracy"
    max_versions = "max_versions"
    time_limit = "time_limit"
    interrupted = "interrupted"
    no_devices = "no_devices"
    stalled = "stalled"  # the progress watchdog: no new version for too long
    error = "error"


@dataclass(frozen=True)
class DeviceRow:
    """One device in the dashboard's table."""

    name: str
    status: DeviceStatus
    version: Optional[int] = None  # model version of its current or last job
    staleness: Optional[int] = None  # staleness of its last accepted update
    last_seen: Optional[float] = None  # seconds since the server last heard from it
    peak_memory: Optional[int] = None  # bytes, as the agent measured (VmHWM)
    memory_budget: Optional[int] = None  # bytes the device may use (cap), if known
    bytes_up: int = 0  # device -> server payload bytes
    bytes_down: int = 0  # server -> device payload bytes
    accepted: int = 0
    rejected: int = 0
    battery: Optional[float] = None  # fraction of full, as the agent last read it; None: missing
    charging: Optional[bool] = None  # on external power; None: missing
    temperature_c: Optional[float] = None  # hottest thermal zone (or battery); None: missing
    waiting_reason: Optional[str] = None  # why a paused device waits ("on battery 34%")
    energy_j: Optional[float] = None  # joules of every job it sent back; None: none reported
    energy_estimated: bool = False  # some of it from CPU time x class figure, not a sensor


# Events the dashboard keeps in view however many routine ones (update_accepted) follow.
NOTABLE_EVENTS = frozenset({
    "device_offline", "device_rejoined", "device_failed", "agent_restarted", "job_lost",
    "update_rejected", "auth_failed", "model_rolled_back", "run_stalled", "device_busy",
    "deploy_failed", "launch_failed", "run_finished",
})


@dataclass(frozen=True)
class EventLine:
    """One line of the event log."""

    elapsed: float  # seconds since the run started
    kind: str
    device: str = ""
    detail: str = ""


@dataclass(frozen=True)
class AccuracyPoint:
    """The global model's test accuracy at a version."""

    elapsed: float
    version: int
    accuracy: float
    loss: Optional[float] = None  # the global test loss at the same evaluation


@dataclass(frozen=True)
class RunSnapshot:
    """The whole run at one instant."""

    run_id: str
    strategy: str
    state: RunState
    elapsed: float
    version: int
    buffer_fill: int
    buffer_size: int
    updates_per_min: float
    staleness_mean: Optional[float]
    staleness_max: Optional[int]
    accepted: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    accuracy: tuple[AccuracyPoint, ...] = ()
    target_accuracy: Optional[float] = None
    devices: tuple[DeviceRow, ...] = ()
    events: tuple[EventLine, ...] = ()  # most recent last
    stop_reason: Optional[StopReason] = None

    @property
    def best_accuracy(self) -> Optional[float]:
        """Best global test accuracy so far (None before the first evaluation)."""
        return max((p.accuracy for p in self.accuracy), default=None)

    @property
    def last_accuracy(self) -> Optional[float]:
        """Latest global test accuracy (None before the first evaluation)."""
        return self.accuracy[-1].accuracy if self.accuracy else None
