"""Run metrics of FTTE.md section 7, defined once for simulate, train, benchmarks and reports.

`RunMetrics` is the accumulator the coordinator feeds (dispatches, arrivals, rejections,
evaluations); `summarize` turns it into a `RunSummary`. Times are whatever clock the caller passes:
virtual seconds in the simulator, wall seconds on a real fleet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of the global model."""

    time: float  # seconds since the run started (virtual or wall)
    version: int  # model version evaluated
    accuracy: float  # global test accuracy in [0, 1]
    loss: float  # global test loss
    bytes_total: int  # bytes sent + received by all clients so far (bundles excluded)


@dataclass
class RunMetrics:
    """Mutable counters of one run; `to_dict` / `from_dict` round-trip through JSON."""

    bytes_down: int = 0  # server -> clients (w* per job)
    bytes_up: int = 0  # clients -> server (every delta received, accepted or not)
    jobs_dispatched: int = 0
    jobs_lost: int = 0  # dispatched, never arrived (client went offline)
    accepted: int = 0
    clipped: int = 0  # accepted after scaling down to the norm bound (guard norm_action clip)
    rollbacks: int = 0  # aggregations whose result failed the model check and was not installed
    staleness: Counter = field(default_factory=Counter)  # tau -> accepted updates
    dropped: Counter = field(default_factory=Counter)  # reject reason -> updates
    evals: List[EvalPoint] = field(default_factory=list)
    version_times: List[float] = field(default_factory=list)  # time at which version i+1 appeared

    @property
    def bytes_total(self) -> int:
        """Bytes sent plus received by all clients so far."""
        return self.bytes_down + self.bytes_up

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON data (checkpoints, metrics files)."""
        return {
            "bytes_down": self.bytes_down, "bytes_up": self.bytes_up,
            "jobs_dispatched": self.jobs_dispatched, "jobs_lost": self.jobs_lost,
            "accepted": self.accepted, "clipped": self.clipped, "rollbacks": self.rollbacks,
            "staleness": {str(k): v for k, v in sorted(self.staleness.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "evals": [vars(e) for e in self.evals],
            "version_times": list(self.version_times),
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> RunMetrics:
        """Inverse of `to_dict`."""
        return cls(
            bytes_down=int(data["bytes_down"]), bytes_up=int(data["bytes_up"]),
            jobs_dispatched=int(data["jobs_dispatched"]), jobs_lost=int(data["jobs_lost"]),
            accepted=int(data["accepted"]), clipped=int(data.get("clipped", 0)),
            rollbacks=int(data.get("rollbacks", 0)),
            staleness=Counter({int(k): int(v) for k, v in data["staleness"].items()}),
            dropped=Counter({str(k): int(v) for k, v in data["dropped"].items()}),
            evals=[EvalPoint(**e) for e in data["evals"]],
            version_times=[float(t) for t in data["version_times"]],
        )


@dataclass(frozen=True)
class RunSummary:
    """The figures a run is compared by (FTTE.md section 7)."""

    strategy: str
    target_accuracy: float
    time_to_target: Optional[float]  # None: target never reached
    version_at_target: Optional[int]
    payload_to_target: Optional[int]  # bytes sent + received by all clients until the target
    final_accuracy: Optional[float]
    best_accuracy: Optional[float]
    versions: int
    duration: float  # time of the last event of the run
    payload_total: int
    memory_per_device: Optional[int]  # the plan's training memory estimate, bytes
    bundle_bytes: Optional[int]  # one-time bundle per device, reported apart from payload
    staleness_mean: Optional[float]
    staleness_max: Optional[int]
    staleness_hist: Dict[str, int]
    dropped: Dict[str, int]
    jobs_dispatched: int
    jobs_lost: int
    accepted: int


def first_at_target(evals: List[EvalPoint], target: float) -> Optional[EvalPoint]:
    """The first evaluation whose accuracy reaches `target`, if any."""
    return next((e for e in evals if e.accuracy >= target), None)


def staleness_stats(hist: Counter) -> tuple:
    """(mean, max) of a tau -> count histogram; (None, None) when empty."""
    n = sum(hist.values())
    if n == 0:
        return None, None
    return sum(k * v for k, v in hist.items()) / n, max(hist)


def summarize(metrics: RunMetrics, *, strategy: str, target: float, duration: float,
              versions: int, memory_per_device: Optional[int] = None,
              bundle_bytes: Optional[int] = None) -> RunSummary:
    """The RunSummary of a finished (or interrupted) run."""
    hit = first_at_target(metrics.evals, target)
    mean, top = staleness_stats(metrics.staleness)
    accs = [e.accuracy for e in metrics.evals]
    return RunSummary(
        strategy=strategy, target_accuracy=target,
        time_to_target=hit.time if hit else None,
        version_at_target=hit.version if hit else None,
        payload_to_target=hit.bytes_total if hit else None,
        final_accuracy=accs[-1] if accs else None,
        best_accuracy=max(accs) if accs else None,
        versions=versions, duration=duration, payload_total=metrics.bytes_total,
        memory_per_device=memory_per_device, bundle_bytes=bundle_bytes,
        staleness_mean=mean, staleness_max=top,
        staleness_hist={str(k): v for k, v in sorted(metrics.staleness.items())},
        dropped=dict(sorted(metrics.dropped.items())),
        jobs_dispatched=metrics.jobs_dispatched, jobs_lost=metrics.jobs_lost,
        accepted=metrics.accepted,
    )
