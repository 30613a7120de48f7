"""The run state machine both the simulator and the real server drive (FTTE.md sections 3 and 4).

Lifecycle: build a `Coordinator` with the initial parameters, the plan, a strategy and the clients
(id -> n_i); call `next_jobs(now)` whenever something changed to get jobs for idle clients, hand
each job's subset w*_t to its client, and pass every update that comes back to `submit(update,
now)`. The coordinator validates it (a `RejectReason` when it must drop it), lets the strategy
decide whether the model advances, evaluates every `eval_every` versions and keeps the metrics.
It never reads a clock or a global RNG: `now` comes in, and every chance decision (which idle
clients get jobs, job seeds) uses its own seeded `random.Random`, saved in `state()`.

Guards (recipe `strategy.guard`, README "Reliability"): an update whose norm is over the bound
(a multiple of the running median of accepted update norms) is rejected or clipped; every
aggregation result is checked before it is installed (finite values; at evaluated versions a
finite loss not `diverge_factor` x over the last good one), and one that fails is replaced by the
last good model, installed as the next version (versions only go forward), with a `GuardEvent`.

Late updates: a job released because its client went offline is remembered (one per client)
as lost; if its update still arrives it is judged by the staleness rule like any other
(accepted with its weight, or `too_stale` past `max_staleness`), `SubmitResult.late` set.
Synchronous rounds cannot take a late update (its round slot was given up): `too_stale`.

Memory: parameters are never changed in place; a step builds a new dict. Each job refers to the
snapshot w*_t of the version it started from (needed by FedAsync, and to hand out), kept only
while some job in flight refers to it.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
    overload,
)

from torch import Tensor

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.metrics import EvalPoint, RunMetrics
from ftte_cli.engine.plan import Plan
from ftte_cli.engine.strategies import Arrival, Strategy, aggregate
from ftte_cli.engine.strategies.aggregate import nbytes

Tensors = Dict[str, Tensor]
Evaluate = Callable[[Tensors], Tuple[float, float]]  # full params -> (accuracy, loss)


class RejectReason(str, Enum):
    """Why an update was dropped."""

    shape_mismatch = "shape_mismatch"  # a tensor's shape or dtype differs from the plan's w*
    mask_mismatch = "mask_mismatch"  # the tensor names differ from the plan's trainable subset
    non_finite = "non_finite"  # a NaN or Inf value
    too_large = "too_large"  # over the size bound
    duplicate_job = "duplicate_job"  # this job id was already accepted
    too_stale = "too_stale"  # tau > max_staleness
    unknown_job = "unknown_job"  # no such job in flight (or client / version do not match it)
    norm_bound = "norm_bound"  # L2 norm over the guard's bound (strategy.guard.norm_action reject)


class ClientState(str, Enum):
    """Where a client stands."""

    idle = "idle"
    busy = "busy"
    offline = "offline"


@dataclass(frozen=True)
class Update:
    """What a client sends back for a job."""

    job_id: str
    client_id: str
    version: int  # t_i, the version the job started from
    delta: Tensors  # w*_after - w*_{t_i}
    num_samples: int
    grad_variance: float
    peak_memory: Optional[int] = None


@dataclass(frozen=True)
class Job:
    """A unit of work for one client."""

    job_id: str
    client_id: str
    version: int
    subset: Tensors  # w*_t, shared snapshot: read only
    issued_at: float
    seed: int  # for the client's data shuffling, drawn from the coordinator's RNG


@dataclass(frozen=True)
class SubmitResult:
    """The outcome of `submit`; `version` is the model version after it."""

    accepted: bool
    reason: Optional[RejectReason]
    advanced: bool
    version: int
    staleness: Optional[int]
    clipped: bool = False  # accepted after scaling the delta down to the norm bound
    late: bool = False  # the job had been released (its client went offline) before it arrived
    detail: str = ""  # the guard's figures when it acted (norm, bound)


@dataclass(frozen=True)
class GuardEvent:
    """A model check that failed: the candidate was dropped and the last good model restored."""

    kind: str  # "model_rolled_back"
    version: int  # the version installed instead of the candidate
    detail: str


@dataclass(frozen=True)
class CoordinatorConfig:
    """Run settings the coordinator needs besides the strategy's own."""

    strategy: StrategyConfig
    eval_every: int = 2  # evaluate the global model every N versions
    max_update_bytes: Optional[int] = None  # default: the raw bytes of w*


@dataclass
class _ClientRecord:
    num_samples: int
    state: ClientState = ClientState.idle
    updates: int = 0
    last_staleness: Optional[int] = None


@dataclass(frozen=True)
class _InFlight:
    job_id: str
    client_id: str
    version: int
    issued_at: float


class Coordinator:
    """Global model, version, jobs in flight, client states and metrics of one run."""

    def __init__(self, params: Tensors, plan: Plan, strategy: Strategy, clients: Dict[str, int],
                 config: CoordinatorConfig, seed: int, evaluate: Optional[Evaluate] = None) -> None:
        self.plan = plan
        self.strategy = strategy
        self.config = config
        self.metrics = RunMetrics()
        self._evaluate = evaluate
        self._params: Tensors = dict(params)
        self._subset: Tensors = {k: v.clone() for k, v in sparse.extract(params, plan).items()}
        self._spec = {k: (tuple(v.shape), v.dtype) for k, v in self._subset.items()}
        self._bound = config.max_update_bytes or nbytes(self._subset)
        self._version = 0
        self._snapshots: Dict[int, Tensors] = {}
        self._jobs: Dict[str, _InFlight] = {}
        self._lost: Dict[str, _InFlight] = {}  # client -> its last job released while in flight
        self._clients = {cid: _ClientRecord(n) for cid, n in clients.items()}
        self._idle_set = _IdleSet(list(self._clients))
        self._accepted: Set[str] = set()
        self._rng = random.Random(seed)
        self._counter = 0
        guard = config.strategy.guard
        self._norms: Deque[float] = deque(maxlen=guard.norm_window)  # accepted update norms
        self._client_norms: Dict[str, float] = {}  # each client's last accepted update norm
        self._good: Tensors = self._subset  # the last model that passed an evaluation
        self._weights_norm_at: Tuple[int, float] = (-1, 0.0)  # (version, ||w*||)
        self._good_version = 0
        self._good_loss: Optional[float] = None  # its test loss (computed when first needed)
        self.guard_events: List[GuardEvent] = []  # the server drains and records them

    # -- views -----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """t, incremented at each aggregation."""
        return self._version

    @property
    def params(self) -> Tensors:
        """The full global parameter dict (read only)."""
        return self._params

    @property
    def subset(self) -> Tensors:
        """The current trainable subset w*_t (read only)."""
        return self._subset

    @property
    def in_flight(self) -> int:
        """Number of jobs dispatched and not yet back."""
        return len(self._jobs)

    def client_state(self, client_id: str) -> ClientState:
        """idle, busy or offline."""
        return self._clients[client_id].state

    def client_info(self) -> Dict[str, Dict[str, Any]]:
        """Per client: state, n_i, accepted updates, last staleness (JSON-able)."""
        return {cid: {"state": c.state.value, "num_samples": c.num_samples, "updates": c.updates,
                      "last_staleness": c.last_staleness} for cid, c in self._clients.items()}

    # -- clients ---------------------------------------------------------------------------
    def client_online(self, client_id: str) -> None:
        """An offline client is back and idle."""
        if self._clients[client_id].state == ClientState.offline:
            self._set_state(client_id, ClientState.idle)

    def client_offline(self, client_id: str, now: float) -> bool:
        """A client went away; its jobs in flight are lost. True when that advanced the model."""
        self._set_state(client_id, ClientState.offline)
        advanced = False
        for job in [j for j in self._jobs.values() if j.client_id == client_id]:
            self._lost[client_id] = job  # its update may still arrive, late
            self._finish(job)
            self.metrics.jobs_lost += 1
            advanced = self._apply(self.strategy.job_lost(self._subset), now) or advanced
        return advanced

    # -- dispatch --------------------------------------------------------------------------
    def next_jobs(self, now: float) -> List[Job]:
        """Jobs for idle online clients while fewer than C are in flight (FedAvg: whole rounds)."""
        # Runs after every update: the idle clients are kept in an index (a scan of 1,000
        # client records cost ~0.13 ms per update); sampling reads only the chosen entries.
        if self.strategy.synchronous:
            idle = self._idle_set if not self._jobs else _IdleSet([])
            if not len(idle):
                return []
            m = self.config.strategy.fedavg_clients or len(idle)
            chosen = self._rng.sample(idle, min(m, len(idle)))
            self.strategy.begin_round(len(chosen))
        else:
            slots = self.strategy.concurrency - len(self._jobs)
            idle = self._idle_set
            chosen = self._rng.sample(idle, min(slots, len(idle))) if slots > 0 else []
        return [self._dispatch(cid, now) for cid in chosen]

    def _set_state(self, client_id: str, state: ClientState) -> None:
        """The one place a client's state changes, so the idle index stays in step."""
        self._clients[client_id].state = state
        if state is ClientState.idle:
            self._idle_set.add(client_id)
        else:
            self._idle_set.discard(client_id)

    def _dispatch(self, client_id: str, now: float) -> Job:
        self._counter += 1
        job = _InFlight(f"j{self._counter:07d}", client_id, self._version, now)
        self._jobs[job.job_id] = job
        self._snapshots[self._version] = self._subset
        self._set_state(client_id, ClientState.busy)
        self.metrics.jobs_dispatched += 1
        self.metrics.bytes_down += nbytes(self._subset)
        return Job(job.job_id, client_id, job.version, self._subset, now,
                   self._rng.getrandbits(31))

    # -- arrivals --------------------------------------------------------------------------
    def submit(self, update: Update, now: float) -> SubmitResult:
        """Validate one update, hand it to the strategy, step and evaluate when it advances."""
        self.metrics.bytes_up += nbytes(update.delta)
        if update.job_id in self._accepted:
            return self._reject(RejectReason.duplicate_job, None)
        job = self._jobs.get(update.job_id)
        late = job is None and self._is_lost(update)
        if late:
            job = self._lost.pop(update.client_id)
        if job is None or job.client_id != update.client_id or job.version != update.version:
            return self._reject(RejectReason.unknown_job, None)
        base = self._snapshots.get(job.version)
        if late:
            self._drop_snapshot_if_unused(job.version)
        else:
            self._finish(job)
        staleness = self._version - job.version
        reason, norm = self._check(update, staleness)
        if late and reason is None and (self.strategy.synchronous or
                                        (self.strategy.needs_base and base is None)):
            reason = RejectReason.too_stale  # its round (or base model) is gone
        guarded: Optional[Tensors] = None
        clipped, detail = False, ""
        if reason is None:
            guarded, clipped, detail = self._norm_guard(update.delta, job.client_id, norm)
            reason = RejectReason.norm_bound if guarded is None else None
        if reason is not None or guarded is None:
            reason = reason or RejectReason.norm_bound
            self._reject(reason, staleness)
            # a late job's slot was already given back to the strategy when it was released
            advanced = False if late else self._apply(self.strategy.job_lost(self._subset), now)
            return SubmitResult(False, reason, advanced, self._version, staleness, detail=detail,
                                late=late)
        delta = guarded
        self.metrics.clipped += int(clipped)
        self.metrics.jobs_lost -= int(late)  # it was not lost after all
        self._accepted.add(update.job_id)
        self.metrics.accepted += 1
        self.metrics.staleness[staleness] += 1
        rec = self._clients[update.client_id]
        rec.updates += 1
        rec.last_staleness = staleness
        arrival = Arrival(update.job_id, update.client_id, delta, update.num_samples,
                          update.grad_variance, staleness, base)
        advanced = self._apply(self.strategy.ingest(arrival, self._subset), now)
        return SubmitResult(True, None, advanced, self._version, staleness, clipped=clipped,
                            late=late, detail=detail)

    def _is_lost(self, update: Update) -> bool:
        lost = self._lost.get(update.client_id)
        return lost is not None and lost.job_id == update.job_id

    def _referenced(self, version: int) -> bool:
        """True while a job in flight (or a lost one, for strategies reading the base) needs
        the snapshot of `version`."""
        if any(j.version == version for j in self._jobs.values()):
            return True
        limit = self.config.strategy.max_staleness
        return self.strategy.needs_base and any(
            j.version == version and (limit is None or self._version - j.version <= limit)
            for j in self._lost.values())

    def _drop_snapshot_if_unused(self, version: int) -> None:
        if version != self._version and not self._referenced(version):
            self._snapshots.pop(version, None)

    def _weights_norm(self) -> float:
        """||w*_t||, computed once per version."""
        if self._weights_norm_at[0] != self._version:
            self._weights_norm_at = (self._version, aggregate.l2_norm(self._subset))
        return self._weights_norm_at[1]

    def _norm_guard(self, delta: Tensors, client: str, norm: float
                    ) -> Tuple[Optional[Tensors], bool, str]:
        """(delta to use or None to reject, clipped, detail) under strategy.guard's norm bound;
        `norm` is the delta's L2 norm (`aggregate.l2_norm`, computed once by `_check`).

        The reference is the median over clients of each client's last accepted norm: one
        entry per client, so no single client, honest or hostile, sets the bound. An update is
        refused only over `norm_bound` x max(that median, `norm_floor` x ||w*_t||): when the
        model fits some clients' data and not another's (non-IID, or a client back from an
        outage), the others' updates shrink towards zero while that client's stay ordinary, and
        without the floor its honest updates were refused for good (nothing it sent could move
        the median). `clip` scales an update to `norm_bound` x the median itself, the updates'
        own scale, so a clipped hostile update stays small. Before `norm_warmup` accepted norms
        the reference is ||w*_t|| itself (no honest delta is a multiple of the weights it changes).
        """
        guard = self.config.strategy.guard
        if guard.norm_bound is None:
            return delta, False, ""
        weights = self._weights_norm()
        if len(self._norms) >= max(guard.norm_warmup, 1):
            median = statistics.median(self._client_norms.values())
            floor = guard.norm_floor * weights
            ref, of = ((median, "median accepted norm") if median >= floor
                       else (floor, f"{guard.norm_floor:g} x ||w*||"))
        else:
            median, (ref, of) = weights, (weights, "||w*||")
        limit = guard.norm_bound * ref
        if ref <= 0 or norm <= limit:
            self._norms.append(norm)
            self._client_norms[client] = norm
            return delta, False, ""
        detail = f"norm {norm:.3g} over bound {limit:.3g} ({guard.norm_bound:g} x {of} {ref:.3g})"
        if guard.norm_action == "reject":
            return None, False, detail
        clip_to = guard.norm_bound * median if median > 0 else limit
        self._norms.append(clip_to)
        self._client_norms[client] = clip_to
        return self._clip(delta, clip_to / norm), True, f"clipped: {detail}"

    def _delta_norm(self, delta: Tensors) -> float:
        """||delta||_2 for the norm guard (server/tier.py overrides it: there a delta stays at
        an aggregator, which measures it and forwards the norm)."""
        return aggregate.l2_norm(delta)

    def _clip(self, delta: Tensors, factor: float) -> Tensors:
        """The norm guard's clipped delta (the tier records the factor for the aggregator)."""
        return aggregate.scale(delta, factor)

    def _check(self, update: Update, staleness: int) -> Tuple[Optional[RejectReason], float]:
        """(why the update must be dropped or None, its L2 norm; nan before the norm is known).

        One pass over the values: the float64 norm is finite when every value is (a float32
        square is at most ~1.2e77, so no sum of them overflows float64), so it is both the
        finiteness check and the norm guard's input; only a non-finite norm (a NaN or Inf, or
        float64 values past 1e154) looks at the values again.
        """
        delta = update.delta
        if nbytes(delta) > self._bound:
            return RejectReason.too_large, math.nan
        if set(delta) != set(self._spec):
            return RejectReason.mask_mismatch, math.nan
        if any((tuple(t.shape), t.dtype) != self._spec[k] for k, t in delta.items()):
            return RejectReason.shape_mismatch, math.nan
        norm = self._delta_norm(delta)
        if not math.isfinite(norm) and not aggregate.all_finite(delta):
            return RejectReason.non_finite, norm
        limit = self.config.strategy.max_staleness
        if limit is not None and staleness > limit:
            return RejectReason.too_stale, norm
        return None, norm

    def _reject(self, reason: RejectReason, staleness: Optional[int]) -> SubmitResult:
        self.metrics.dropped[reason.value] += 1
        return SubmitResult(False, reason, False, self._version, staleness)

    def _finish(self, job: _InFlight) -> None:
        """Take a job out of flight, free its client, drop its snapshot when no job needs it."""
        del self._jobs[job.job_id]
        if self._clients[job.client_id].state == ClientState.busy:
            self._set_state(job.client_id, ClientState.idle)
        self._drop_snapshot_if_unused(job.version)

    def _apply(self, new_subset: Optional[Tensors], now: float) -> bool:
        """Install a new w* as the next version (or, when it fails the model check, the last
        good one); evaluate every eval_every versions, the candidate before it is installed."""
        if new_subset is None:
            return False
        version = self._version + 1
        params = sparse.insert(self._params, self.plan, new_subset)
        due = version % self.config.eval_every == 0 and self._evaluate is not None
        scores: Optional[Tuple[float, float]] = None
        problem = None if aggregate.all_finite(new_subset) else "non-finite values"
        if problem is None and due:
            scores = self._score(params)
            problem = self._diverged(scores[1])
        if problem is not None:
            self.metrics.rollbacks += 1
            self.guard_events.append(GuardEvent(
                "model_rolled_back", version,
                f"candidate v{version}: {problem}; installed v{self._good_version}'s model"))
            new_subset = self._good
            params = sparse.insert(self._params, self.plan, new_subset)
            scores = None
        if not self._referenced(self._version):
            self._snapshots.pop(self._version, None)
        self._subset, self._params, self._version = new_subset, params, version
        self._forget_too_stale_lost()
        self.metrics.version_times.append(now)
        if due:
            point = self._record_eval(now, scores)
            if problem is None and point is not None:
                self._good, self._good_version, self._good_loss = new_subset, version, point.loss
        return True

    def _forget_too_stale_lost(self) -> None:
        """A lost job past max_staleness can never be accepted: its base snapshot may go (the
        small record stays, so its late update is still answered `too_stale`)."""
        if self.config.strategy.max_staleness is None or not self.strategy.needs_base:
            return
        for job in list(self._lost.values()):
            self._drop_snapshot_if_unused(job.version)

    def _score(self, params: Tensors) -> Tuple[float, float]:
        assert self._evaluate is not None
        acc, loss = self._evaluate(params)
        return float(acc), float(loss)

    def _diverged(self, loss: float) -> Optional[str]:
        """Why a candidate with this test loss must not be installed (None: it may be)."""
        if loss != loss or loss in (float("inf"), float("-inf")):
            return f"loss {loss}"
        factor = self.config.strategy.guard.diverge_factor
        if factor is None:
            return None
        if self._good_loss is None:  # the initial model's loss, once
            self._good_loss = self._score(sparse.insert(self._params, self.plan, self._good))[1]
        if loss > factor * max(self._good_loss, 1e-6):
            return (f"loss {loss:.4g} over {factor:g} x the last good loss {self._good_loss:.4g}"
                    f" (v{self._good_version})")
        return None

    def _record_eval(self, now: float,
                     scores: Optional[Tuple[float, float]]) -> Optional[EvalPoint]:
        """Record an evaluation of the installed model (`scores` when already computed)."""
        if scores is None:
            return self.evaluate_now(now)
        point = EvalPoint(now, self._version, scores[0], scores[1], self.metrics.bytes_total)
        self.metrics.evals.append(point)
        return point

    def evaluate_now(self, now: float) -> Optional[EvalPoint]:
        """Evaluate the current model (if an evaluate callable was given) and record it."""
        if self._evaluate is None:
            return None
        if self.metrics.evals and self.metrics.evals[-1].version == self._version:
            return self.metrics.evals[-1]
        acc, loss = self._evaluate(self._params)
        point = EvalPoint(now, self._version, float(acc), float(loss), self.metrics.bytes_total)
        self.metrics.evals.append(point)
        if self._version == self._good_version and self._good_loss is None:
            self._good_loss = point.loss  # the divergence check's first reference, for free
        return point

    # -- checkpoint ------------------------------------------------------------------------
    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        """(tensors, JSON-able meta): model, snapshots, buffer, jobs, clients, RNG, metrics."""
        tensors: Tensors = {f"param/{k}": v for k, v in self._params.items()}
        for version, snap in self._snapshots.items():
            tensors.update({f"snap/{version}/{k}": v for k, v in snap.items()})
        tensors.update({f"subset/{k}": v for k, v in self._subset.items()})
        strat_tensors, strat_meta = self.strategy.state()
        tensors.update({f"strategy/{k}": v for k, v in strat_tensors.items()})
        rng_version, rng_internal, rng_gauss = self._rng.getstate()
        meta = {
            "version": self._version, "counter": self._counter,
            "snapshots": sorted(self._snapshots),
            "jobs": [vars(j) for j in self._jobs.values()],
            "lost": [vars(j) for j in self._lost.values()],
            "clients": self.client_info(),
            "accepted": sorted(self._accepted),
            "rng": [rng_version, list(rng_internal), rng_gauss],
            "metrics": self.metrics.to_dict(),
            "strategy": {"name": self.strategy.name, "state": strat_meta},
            "bound": self._bound,
            "guard": {"norms": list(self._norms), "client_norms": dict(self._client_norms),
                      "good_version": self._good_version,
                      "good_loss": self._good_loss},
        }
        tensors.update({f"good/{k}": v for k, v in self._good.items()})
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: Tensors, meta: Dict[str, Any], plan: Plan, strategy: Strategy,
                   config: CoordinatorConfig, evaluate: Optional[Evaluate] = None) -> Coordinator:
        """Rebuild a coordinator saved by `state()`; continuing it equals never having stopped."""
        if meta["strategy"]["name"] != strategy.name:
            raise ValueError(f"checkpoint is of strategy {meta['strategy']['name']!r}, "
                             f"not {strategy.name!r}")
        # safetensors sorts names; model order matters to anything iterating the dicts
        params = _ordered(_prefixed(tensors, "param/"), list(plan.masks))
        names = plan.trainable_names()
        clients = {cid: int(c["num_samples"]) for cid, c in meta["clients"].items()}
        coord = cls(params, plan, strategy, clients, config, seed=0, evaluate=evaluate)
        coord._subset = _ordered(_prefixed(tensors, "subset/"), names)
        coord._version = int(meta["version"])
        coord._counter = int(meta["counter"])
        coord._snapshots = {int(v): _ordered(_prefixed(tensors, f"snap/{v}/"), names)
                            for v in meta["snapshots"]}
        coord._jobs = {j["job_id"]: _InFlight(**j) for j in meta["jobs"]}
        coord._lost = {j["client_id"]: _InFlight(**j) for j in meta.get("lost", [])}
        for cid, c in meta["clients"].items():
            coord._clients[cid] = _ClientRecord(int(c["num_samples"]), ClientState(c["state"]),
                                                int(c["updates"]), c["last_staleness"])
        coord._idle_set = _IdleSet(list(coord._clients),
                                   [cid for cid, c in coord._clients.items()
                                    if c.state is ClientState.idle])
        coord._accepted = set(meta["accepted"])
        rng_version, rng_internal, rng_gauss = meta["rng"]
        coord._rng.setstate((rng_version, tuple(rng_internal), rng_gauss))
        coord.metrics = RunMetrics.from_dict(meta["metrics"])
        coord._bound = int(meta["bound"])
        guard = meta.get("guard")
        if guard is not None:  # checkpoints written before the guards have none
            coord._norms.extend(float(n) for n in guard["norms"])
            coord._client_norms = {str(k): float(v)
                                   for k, v in guard.get("client_norms", {}).items()}
            coord._good = _ordered(_prefixed(tensors, "good/"), names)
            coord._good_version = int(guard["good_version"])
            coord._good_loss = guard["good_loss"]
        else:
            coord._good, coord._good_version = coord._subset, coord._version
        strategy.load_state(_prefixed(tensors, "strategy/"), meta["strategy"]["state"])
        return coord


def _prefixed(tensors: Tensors, prefix: str) -> Tensors:
    """The entries under `prefix`, with the prefix stripped (insertion order kept)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _ordered(tensors: Tensors, names: List[str]) -> Tensors:
    """`tensors` in the order of `names` (all of them must be there)."""
    return {n: tensors[n] for n in names}


class _IdleSet(Sequence[str]):
    """The idle clients in registration order, as a sequence `random.sample` can draw from.

    Sampling from it draws exactly what sampling from the list of idle clients in registration
    order drew (the same length, the same entry at each index), so seeded runs are unchanged;
    adding or removing a client is a bisect in a list of registration positions, and a draw of
    k clients reads k entries instead of scanning every client's record.
    """

    def __init__(self, order: List[str], idle: Optional[List[str]] = None) -> None:
        self._names = order  # registration position -> client id
        self._position = {cid: i for i, cid in enumerate(order)}
        chosen = order if idle is None else idle
        self._idle: List[int] = sorted(self._position[cid] for cid in chosen)

    def add(self, client_id: str) -> None:
        pos = self._position[client_id]
        i = bisect.bisect_left(self._idle, pos)
        if i == len(self._idle) or self._idle[i] != pos:
            self._idle.insert(i, pos)

    def discard(self, client_id: str) -> None:
        pos = self._position[client_id]
        i = bisect.bisect_left(self._idle, pos)
        if i < len(self._idle) and self._idle[i] == pos:
            del self._idle[i]

    def __len__(self) -> int:
        return len(self._idle)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: Union[int, slice]) -> Union[str, Sequence[str]]:
        if isinstance(i, slice):
            return [self._names[p] for p in self._idle[i]]
        return self._names[self._idle[i]]
