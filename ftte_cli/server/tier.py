"""An aggregator tier on Ray: device-facing aggregators in front of one coordinator actor.

Lifecycle (docs/SCALING.md has the measurements and the road beyond):
- `start_tier(coordinator, aggregators=2)` puts the run's `Coordinator` in one Ray actor
  (`CoordinatorActor`, the only place where versions change, as in `server/app.py`) and starts
  `aggregators` `Aggregator` actors. No cluster manager of our own: Ray places, restarts and
  kills the actors.
- A device talks to one aggregator: `register(device)` (which also releases any job the device
  held: the coordinator counts it lost, exactly as a re-registration on the single server does),
  `task(device)` (its queued job, or None), `update(device, body)` with the same safetensors body
  the wire protocol carries (`client/wire.py`).
- The aggregator does the per-update work that does not need the global model: it parses the
  untrusted body (size bound and header checked before safetensors reads it; a malformed body
  never reaches the coordinator) and forwards the delta as safetensors bytes (no pickle of
  anything a device sent), then returns the coordinator's verdict. The coordinator keeps its
  own checks (mask, shape, finiteness, staleness, duplicates), so verdicts are the single
  server's.
- Nothing is acknowledged before the coordinator applied it, so killing an aggregator loses no
  accepted update: its devices register at another aggregator (or at its restart), their jobs in
  flight are released and dispatched again.

Exactness: the coordinator applies every update in the order the aggregators forward it, with
the same `Coordinator.submit`, so FTTE's weights (n_i / n_mean, s_age(tau_i), and s_var with
v_mean over the buffer) are computed once, at the coordinator, over the real buffer: the result
equals single-server aggregation of the same updates in the same order, to the bit
(tests/test_tier.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ftte_cli.client import wire
from ftte_cli.engine.coordinator import Coordinator, Job, Update
from ftte_cli.engine.serialize import tensors_and_metadata_from_bytes, tensors_to_bytes
from ftte_cli.errors import ConfigError
from ftte_cli.server.protocol import update_bound

log = logging.getLogger(__name__)
NO_LIMIT = 1 << 62  # decoding our own bytes inside the cluster (a device's were bounded)


@dataclass(frozen=True)
class Verdict:
    """What a device is told about its update."""

    accepted: bool
    reason: Optional[str]  # RejectReason value, or "malformed" (the aggregator could not parse)
    version: int


# ---- the next stage: partial weighted sums (docs/SCALING.md, "scalars first, weights back") --

def partial_sum(deltas: Dict[str, Dict[str, Any]], alphas: Dict[str, float]
                ) -> Tuple[Dict[str, Any], float]:
    """An aggregator's share of a buffer step: (sum_i alpha_i * delta_i in float64, sum_i
    alpha_i) over the updates it holds (job id -> delta), with the alphas the coordinator
    computed over the whole buffer (so n_mean and v_mean are the buffer's, exactly)."""
    import torch  # noqa: PLC0415

    sums: Dict[str, Any] = {}
    total = 0.0
    for job_id, alpha in alphas.items():
        for name, t in deltas[job_id].items():
            acc = sums.setdefault(name, torch.zeros_like(t, dtype=torch.float64))
            acc.add_(t.to(torch.float64), alpha=alpha)
        total += alpha
    return sums, total


def combine(partials: List[Tuple[Dict[str, Any], float]], like: Dict[str, Any]
            ) -> Dict[str, Any]:
    """The coordinator's side: sum of the partial sums / sum of the weights, in `like`'s dtypes
    (equal to `aggregate.weighted_mean` over all the updates up to float64 summation order)."""
    total = sum(w for _, w in partials)
    if total <= 0:
        raise ValueError(f"combine: weights sum to {total}")
    out: Dict[str, Any] = {}
    for name, ref in like.items():
        acc = partials[0][0][name].clone()
        for sums, _ in partials[1:]:
            acc.add_(sums[name])
        out[name] = (acc / total).to(ref.dtype)
    return out


class CoordinatorActor:
    """Actor body: the run's Coordinator, a queued job per device, updates applied in order."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self.queued: Dict[str, Job] = {}
        self.now = 0.0  # a logical clock: one tick per call (the tier test needs no wall time)

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _dispatch(self, now: float) -> None:
        for job in self.coord.next_jobs(now):
            self.queued[job.client_id] = job

    def register(self, device: str) -> int:
        """(Re)join: any job the device held is lost and its slot freed; returns the version."""
        now = self._tick()
        self.queued.pop(device, None)
        self.coord.client_offline(device, now)
        self.coord.client_online(device)
        self._dispatch(now)
        return self.coord.version

    def take_job(self, device: str) -> Optional[Tuple[str, int, int, bytes]]:
        """(job_id, version, seed, w* as safetensors bytes) queued for `device`, or None."""
        job = self.queued.pop(device, None)
        if job is None:
            return None
        return job.job_id, job.version, job.seed, tensors_to_bytes(job.subset)

    def submit(self, device: str, job_id: str, version: int, delta: bytes, num_samples: int,
               grad_variance: float) -> Verdict:
        """Apply one forwarded update (in the order the aggregators send them)."""
        now = self._tick()
        tensors = tensors_and_metadata_from_bytes(delta, NO_LIMIT)[0] if delta else {}
        res = self.coord.submit(Update(job_id, device, version, tensors, num_samples,
                                       grad_variance), now)
        self._dispatch(now)
        return Verdict(res.accepted, None if res.reason is None else res.reason.value,
                       res.version)

    def summary(self) -> Dict[str, Any]:
        """Version, metrics and w* (as safetensors bytes) for tests and reports."""
        return {"version": self.coord.version, "metrics": self.coord.metrics.to_dict(),
                "subset": tensors_to_bytes(self.coord.subset)}


class Aggregator:
    """Actor body: parses and checks its devices' updates, forwards them to the coordinator."""

    def __init__(self, coordinator: Any, bound: int) -> None:
        self.coordinator = coordinator
        self.bound = bound
        self.forwarded = 0

    def register(self, device: str) -> int:
        import ray  # noqa: PLC0415  (inside the actor)

        return int(ray.get(self.coordinator.register.remote(device)))

    def task(self, device: str) -> Optional[Tuple[str, int, int, bytes]]:
        import ray  # noqa: PLC0415

        job: Optional[Tuple[str, int, int, bytes]] = ray.get(
            self.coordinator.take_job.remote(device))
        return job

    def update(self, device: str, body: bytes) -> Verdict:
        """Parse and check one update body, forward it, return the coordinator's verdict."""
        import ray  # noqa: PLC0415

        try:
            msg = wire.decode_update(body, self.bound)
        except wire.WireError:
            return Verdict(False, "malformed", -1)
        payload = tensors_to_bytes(msg.delta) if msg.delta else b""
        self.forwarded += 1
        verdict: Verdict = ray.get(self.coordinator.submit.remote(
            device, msg.job_id, msg.version, payload, msg.num_samples, msg.grad_variance))
        return verdict

    def ready(self) -> bool:
        return True


@dataclass
class Tier:
    """Handles of a started tier (Ray actor handles)."""

    coordinator: Any
    aggregators: List[Any]

    def aggregator_for(self, device: str) -> Any:
        """Devices are spread over the aggregators by a stable hash of their name."""
        return self.aggregators[sum(device.encode()) % len(self.aggregators)]


def _ray() -> Any:
    try:
        import ray  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise ConfigError("aggregator tier: Ray is not installed; pip install 'ftte-cli[ray]'"
                          ) from None
    return ray


def start_aggregator(ray: Any, coordinator: Any, bound: int) -> Any:
    """One aggregator actor (also how a killed one is replaced)."""
    actor = ray.remote(num_cpus=0)(Aggregator).remote(coordinator, bound)
    ray.get(actor.ready.remote())
    return actor


def start_tier(coordinator: Coordinator, aggregators: int = 2) -> Tier:
    """Put `coordinator` in an actor and start `aggregators` aggregators (Ray must be up)."""
    ray = _ray()
    bound = update_bound(coordinator.subset)
    coord = ray.remote(num_cpus=0)(CoordinatorActor).remote(coordinator)
    aggs = [start_aggregator(ray, coord, bound) for _ in range(aggregators)]
    return Tier(coord, aggs)
