"""An aggregator tier on Ray: device-facing aggregators in front of one coordinator actor.

Lifecycle (docs/SCALING.md, section 3, has the design, the exactness argument and figures):
- `start_tier(spec, tokens, aggregators=2)` builds the run's coordinator inside one Ray actor
  (`CoordinatorActor`, the only place where versions change, as in `server/app.py`) and starts
  `aggregators` `Aggregator` actors. No cluster manager of our own: Ray places the actors and
  moves their messages; `server/tier_http.py` puts Ray Serve's HTTP front before them.
- A device talks to one aggregator with the single server's token scheme (the headers of
  `wire.auth_headers`): `register(headers)` (a re-registration releases any job the device held:
  the coordinator counts it lost, as the single server does), `task(headers)` (its queued job as
  a wire job body, or None), `update(headers, body)` with the wire update body.
- "Scalars first, weights back, sums forward". The aggregator reads the untrusted body (size
  bound and header checked before safetensors reads it), measures the delta (names, shapes,
  dtypes, finiteness, L2 norm) and forwards only those scalars. The coordinator runs its own,
  unchanged checks on a stand-in (`Deferred`: zero-stride tensors of the real names, shapes and
  dtypes, NaN where the delta was not finite, the measured norm), so verdicts, staleness, the
  norm guard and the metrics are the single server's. Before an update can count it takes the
  delta over (`hand_over`, a Ray task whose result the coordinator owns, so it outlives the
  aggregator's process); when the buffer is full it computes every alpha_i over the real buffer
  (n_mean, v_mean) and asks the aggregators for sum(alpha_i * delta_i) in float64 over their own
  updates (`partial`); it adds those and divides, as `aggregate.weighted_mean` / `buffer_mean` do.
- Killing an aggregator loses no accepted update: the deltas it handed over live in the object
  store, owned by the coordinator; the partial sum it would have computed goes to a live
  aggregator (or, with none left, to the coordinator itself). Its devices register at another
  aggregator (or at its restart); the jobs they held are counted lost and dispatched again.

Exactness: only the float64 summation order differs from one server (a relative change of about
1e-16, below float32's 6e-8); tests/server/test_tier_ray.py checks the weights to within 4 float32
ulps (measured: 0 values differ). Limits: strategies with a buffer and a linear reducer (ftte,
fedbuff with guard.aggregator `mean`); no checkpoint of a tier's coordinator yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ftte_cli.client import wire
from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig, Evaluate, Update
from ftte_cli.engine.plan import Plan
from ftte_cli.engine.serialize import tensors_from_own_bytes, tensors_to_bytes
from ftte_cli.engine.strategies import Arrival, Strategy, aggregate, make_strategy
from ftte_cli.engine.strategies.ftte import BufferedStrategy
from ftte_cli.errors import ConfigError
from ftte_cli.server.protocol import authenticate, update_bound

log = logging.getLogger(__name__)
Tensors = Dict[str, Tensor]
AGGREGATOR_GONE = "aggregator_gone"  # a verdict nobody hears: the update is not applied
JOBS_CACHED = 4  # versions of w* an aggregator keeps decoded for job bodies
# dtypes a delta may carry; any other makes the stand-in's dtype differ: shape_mismatch
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


@dataclass(frozen=True)
class Verdict:
    """What a device is told about its update."""

    accepted: bool
    reason: Optional[str]  # RejectReason value, or a ServerReason value decided at the aggregator
    version: int
    staleness: Optional[int] = None


@dataclass(frozen=True)
class UpdateScalars:
    """What an aggregator forwards for one update: everything but the delta's values."""

    job_id: str
    device: str
    version: int  # t_i
    num_samples: int
    grad_variance: float
    spec: Tuple[Tuple[str, Tuple[int, ...], str], ...]  # (name, shape, dtype) per tensor
    finite: bool  # every value finite
    norm: float  # aggregate.l2_norm(delta): the norm guard's figure, computed the same way


@dataclass(frozen=True)
class CoordinatorSpec:
    """What builds a run's coordinator: the same spec builds the single server's (`build`) and
    the tier's (inside `CoordinatorActor`), so tests compare the two on equal terms."""

    params: Tensors
    plan: Plan
    strategy: StrategyConfig
    clients: Dict[str, int]  # device -> n_i
    config: CoordinatorConfig
    seed: int
    evaluate: Optional[Evaluate] = None

    def build(self) -> Coordinator:
        """The single server's coordinator."""
        return Coordinator(dict(self.params), self.plan, make_strategy(self.strategy),
                           dict(self.clients), self.config, self.seed, self.evaluate)


# ---- partial weighted sums: pure functions -----------------------------------------------------

@torch.no_grad()
def partial_sum(deltas: Dict[str, Tensors], alphas: Dict[str, float]
                ) -> Tuple[Tensors, float]:
    """An aggregator's share of a buffer step: (sum_i alpha_i * delta_i in float64, sum_i
    alpha_i) over the updates it holds (job id -> delta), in the order of `alphas`, with the
    alphas the coordinator computed over the whole buffer (so n_mean and v_mean are exact)."""
    sums: Tensors = {}
    total = 0.0
    for job_id, alpha in alphas.items():
        for name, t in deltas[job_id].items():
            acc = sums.setdefault(name, torch.zeros_like(t, dtype=torch.float64))
            acc.add_(t.to(torch.float64), alpha=alpha)  # as aggregate.weighted_mean does
        total += alpha
    return sums, total


@torch.no_grad()
def combine(partials: List[Tuple[Tensors, float]], like: Tensors,
            divisor: Optional[float] = None) -> Tensors:
    """The coordinator's side: sum of the partial sums / divisor (default: the sum of the
    weights), in `like`'s dtypes: `aggregate.weighted_mean` (or `buffer_mean` with divisor K)
    over all the updates, up to float64 summation order."""
    total = sum(w for _, w in partials) if divisor is None else divisor
    if total <= 0:
        raise ValueError(f"combine: weights sum to {total}")
    out: Tensors = {}
    for name, ref in like.items():
        acc = partials[0][0][name].clone()
        for sums, _ in partials[1:]:
            acc.add_(sums[name])
        out[name] = (acc / total).to(ref.dtype)
    return out


def measure(delta: Tensors) -> Tuple[Tuple[Tuple[str, Tuple[int, ...], str], ...], bool, float]:
    """(spec, finite, norm) of a delta: what `UpdateScalars` carries for it."""
    spec = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in delta.items())
    finite = aggregate.all_finite(delta)
    return spec, finite, aggregate.l2_norm(delta) if finite else float("nan")


@torch.no_grad()
def share_from_bodies(bodies: Sequence[bytes], alphas: Sequence[float],
                      factors: Sequence[float]) -> bytes:
    """sum_i alpha_i * delta_i (float64, as safetensors bytes) over handed-over delta bodies; a
    factor != 1 is the norm guard's clip, applied as the single server applies it."""
    deltas: Dict[str, Tensors] = {}
    weights: Dict[str, float] = {}
    for i, (body, alpha, factor) in enumerate(zip(bodies, alphas, factors)):
        delta = tensors_from_own_bytes(body)
        deltas[str(i)] = delta if factor == 1.0 else aggregate.scale(delta, factor)
        weights[str(i)] = alpha
    return tensors_to_bytes(partial_sum(deltas, weights)[0])


# ---- the coordinator's side ----------------------------------------------------------------------

class Deferred(Dict[str, Tensor]):
    """A delta that stays at an aggregator, as the coordinator sees it: zero-stride tensors of
    the real names, shapes and dtypes (so the byte count, mask and shape checks are the real
    ones; NaN when the delta was not finite), its measured norm and the guard's clip factor."""

    def __init__(self, tensors: Tensors, norm: float, factor: float = 1.0) -> None:
        super().__init__(tensors)
        self.norm = norm
        self.factor = factor

    @classmethod
    def of(cls, s: UpdateScalars) -> Deferred:
        fill = 0.0 if s.finite else float("nan")
        tensors = {}
        for name, shape, dtype in s.spec:
            kind = _DTYPES.get(dtype, torch.uint8)  # unknown dtype: a mismatch, never a value
            value = fill if kind.is_floating_point else 0
            tensors[name] = torch.full((), value, dtype=kind).expand(shape)
        return cls(tensors, s.norm)


class TierCoordinator(Coordinator):
    """The Coordinator, unchanged, except that a `Deferred` delta's norm and clip are taken
    from the aggregator's measurement instead of values it does not hold."""

    def _delta_norm(self, delta: Tensors) -> float:
        if isinstance(delta, Deferred):
            return delta.norm
        return super()._delta_norm(delta)

    def _clip(self, delta: Tensors, factor: float) -> Tensors:
        if isinstance(delta, Deferred):
            return Deferred(delta, delta.norm * factor, delta.factor * factor)
        return super()._clip(delta, factor)


@dataclass
class _Held:
    """A buffered update's delta: the coordinator-owned Ray object and where it came from."""

    ref: Any  # ray.ObjectRef of the delta's safetensors bytes
    origin: str  # the aggregator's actor id
    factor: float = 1.0


class DeferredStrategy(Strategy):
    """A buffered strategy whose deltas stay at the aggregators: the same buffer, weights and
    server optimiser; the weighted sum is gathered as partial sums (`CoordinatorActor.gather`)."""

    name = "tier"

    def __init__(self, inner: BufferedStrategy, actor: CoordinatorActor) -> None:
        super().__init__(inner.cfg)
        self.inner = inner
        self.optimizer = inner.optimizer
        self.actor = actor

    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        self.actor.keep(arrival)
        buffer = self.inner.buffer
        buffer.add(arrival)
        if not buffer.full:
            return None
        items = buffer.drain()
        alphas = self.inner.weights(items)  # over the real buffer: n_mean, v_mean exact
        # the divisor of weighted_mean (sum of the weights) or buffer_mean (K), computed alike
        divisor = (float(max(buffer.capacity, len(items))) if self.inner.normalizer == "buffer"
                   else float(sum(alphas)))
        if divisor <= 0:
            raise ValueError(f"aggregator tier: weights sum to {divisor}")
        sums = self.actor.gather(items, alphas)
        grad = {name: (sums[name] / divisor).to(t.dtype) for name, t in current.items()}
        return self.optimizer.step(current, grad)

    def pending(self) -> int:
        return self.inner.pending()

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        raise ConfigError("aggregator tier: no checkpoint of a tier's coordinator yet")


def tier_strategy(cfg: StrategyConfig) -> BufferedStrategy:
    """The run's strategy, if the tier can split its step; ConfigError naming the field if not."""
    strategy = make_strategy(cfg)
    # DeferredStrategy re-does BufferedStrategy's plain ingest (a step when K are in): only
    # strategies that keep it (ftte, fedbuff; not fedavg's rounds nor fedasync) can be split
    if (not isinstance(strategy, BufferedStrategy) or strategy.synchronous
            or type(strategy).ingest is not BufferedStrategy.ingest):
        raise ConfigError(f"aggregator tier: strategy.name: {cfg.name!r} is not a buffered "
                          "asynchronous strategy (the tier runs ftte or fedbuff)")
    if cfg.guard.aggregator != "mean":
        raise ConfigError(f"aggregator tier: strategy.guard.aggregator: "
                          f"{cfg.guard.aggregator!r} is not a weighted sum of the updates, so "
                          "it cannot be split over aggregators (use mean)")
    return strategy


class CoordinatorActor:
    """Actor body: the run's coordinator, a queued job per device, updates applied in the order
    the aggregators forward them, partial sums gathered when the buffer is full."""

    def __init__(self, spec: CoordinatorSpec) -> None:
        strategy = DeferredStrategy(tier_strategy(spec.strategy), self)
        self.coord = TierCoordinator(dict(spec.params), spec.plan, strategy, dict(spec.clients),
                                     spec.config, spec.seed, spec.evaluate)
        self.queued: Dict[str, Any] = {}  # device -> Job
        self.now = 0.0  # a logical clock: one tick per call (the tier's tests need no wall time)
        self.aggregators: Dict[str, Any] = {}  # actor id -> handle, live as far as we know
        self.held: Dict[str, _Held] = {}  # job id -> delta, for the updates in the buffer
        self._claimed: Optional[_Held] = None  # the delta of the update being submitted
        self._w_bytes: Tuple[int, bytes] = (-1, b"")  # (version, w* as safetensors)
        self.partials = 0  # partial sums received (tests and figures)
        self.partial_bytes = 0  # their size: what reaches this process per version
        for device in spec.clients:  # nobody is connected yet: idle once registered (app.py)
            self.coord.client_offline(device, self.now)

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _dispatch(self, now: float) -> None:
        for job in self.coord.next_jobs(now):
            self.queued[job.client_id] = job

    def attach(self, actor_id: str, handle: Any) -> None:
        """An aggregator (or its replacement) joins the tier."""
        self.aggregators[actor_id] = handle

    def detach(self, actor_id: str) -> None:
        """An aggregator is gone (a front saw it die): no partial sum goes to it."""
        self.aggregators.pop(actor_id, None)

    def live_aggregators(self) -> List[Tuple[str, Any]]:
        """(actor id, handle) of the aggregators, in a stable order (the fronts route by it)."""
        return sorted(self.aggregators.items())

    def version(self) -> int:
        return self.coord.version

    def register(self, device: str) -> int:
        """(Re)join: any job the device held is lost and its slot freed; returns the version."""
        now = self._tick()
        self.queued.pop(device, None)
        self.coord.client_offline(device, now)
        self.coord.client_online(device)
        self._dispatch(now)
        return self.coord.version

    def take_job(self, device: str) -> Optional[Tuple[str, int, int, bytes]]:
        """(job_id, version, seed, w* as safetensors) queued for `device`, or None. w* is
        encoded once per version, not per job (the aggregator builds the job body)."""
        job = self.queued.pop(device, None)
        if job is None:
            return None
        if self._w_bytes[0] != job.version:
            self._w_bytes = (job.version, tensors_to_bytes(job.subset))
        return job.job_id, job.version, job.seed, self._w_bytes[1]

    def submit(self, origin: str, s: UpdateScalars) -> Verdict:
        """Apply one update's scalars (in the order the aggregators send them); its delta is
        taken over from `origin` first, so an accepted update never depends on that process."""
        import ray  # noqa: PLC0415  (inside the actor)

        now = self._tick()
        if s.finite:  # a non-finite delta is refused whatever else: nothing to take over
            # two results: a small flag read here (did the handover happen?) and the delta,
            # created in the store and owned by this actor from now on, never read here
            handle = self.aggregators.get(origin)
            try:
                if handle is None:
                    raise ray.exceptions.ActorDiedError()
                flag, ref = handle.hand_over.options(num_returns=2).remote(s.job_id)
                ray.get(flag)
            except ray.exceptions.RayActorError:  # died mid-update: its device hears nothing
                return Verdict(False, AGGREGATOR_GONE, self.coord.version)
            self._claimed = _Held(ref, origin)
        try:
            res = self.coord.submit(Update(s.job_id, s.device, s.version, Deferred.of(s),
                                           s.num_samples, s.grad_variance), now)
        finally:
            self._claimed = None  # refused: the object goes with its last reference
        self._dispatch(now)
        return Verdict(res.accepted, None if res.reason is None else res.reason.value,
                       res.version, res.staleness)

    def keep(self, arrival: Arrival) -> None:
        """The strategy buffered `arrival`: hold its delta (and the guard's clip factor)."""
        assert self._claimed is not None, "an update was accepted without its delta"
        held, self._claimed = self._claimed, None
        if isinstance(arrival.delta, Deferred):
            held.factor = arrival.delta.factor
        self.held[arrival.job_id] = held

    def gather(self, items: List[Arrival], alphas: List[float]) -> Tensors:
        """sum_i alpha_i * delta_i over the buffer (float64): one partial sum per aggregator
        that holds some of the deltas, computed there; a dead one's share goes elsewhere."""
        groups: Dict[str, List[Tuple[_Held, float]]] = {}
        for a, alpha in zip(items, alphas):
            held = self.held.pop(a.job_id)
            groups.setdefault(held.origin, []).append((held, alpha))
        shares = [self._share(origin, group) for origin, group in groups.items()]
        self.partials += len(shares)
        total = shares[0]
        for share in shares[1:]:
            for name, t in share.items():
                total[name].add_(t)
        return total

    def _share(self, origin: str, group: List[Tuple[_Held, float]]) -> Tensors:
        import ray  # noqa: PLC0415

        refs = [h.ref for h, _ in group]
        alphas = [a for _, a in group]
        factors = [h.factor for h, _ in group]
        for actor_id in [origin, *[a for a in self.aggregators if a != origin]]:
            handle = self.aggregators.get(actor_id)
            if handle is None:
                continue
            try:
                body = ray.get(handle.partial.remote(alphas, factors, *refs))
                self.partial_bytes += len(body)
                return tensors_from_own_bytes(body)
            except ray.exceptions.RayActorError:
                log.warning("aggregator %s is gone; its partial sum goes elsewhere", actor_id)
                self.aggregators.pop(actor_id, None)
        # no aggregator left: the coordinator sums the deltas itself (they are in the store)
        body = share_from_bodies(ray.get(refs), alphas, factors)
        return tensors_from_own_bytes(body)

    def summary(self) -> Dict[str, Any]:
        """Version, metrics, partial sums received, where the buffered deltas came from
        (aggregator id -> count) and w* (safetensors bytes)."""
        origins: Dict[str, int] = {}
        for held in self.held.values():
            origins[held.origin] = origins.get(held.origin, 0) + 1
        return {"version": self.coord.version, "metrics": self.coord.metrics.to_dict(),
                "partials": self.partials, "partial_bytes": self.partial_bytes,
                "buffered_from": origins,
                "subset": tensors_to_bytes(self.coord.subset)}


class Aggregator:
    """Async actor body: authenticates its devices, reads and measures their updates, forwards
    the scalars, hands deltas over and computes partial sums when the coordinator asks."""

    def __init__(self, coordinator: Any, tokens: Mapping[str, str], bound: int) -> None:
        self.coordinator = coordinator
        self.tokens = dict(tokens)
        self.bound = bound
        self.held: Dict[str, bytes] = {}  # job id -> checked delta, until the verdict
        self.jobs: Dict[int, Tensors] = {}  # w* version -> decoded w*, for job bodies
        self.forwarded = 0
        self.actor_id = ""

    async def ready(self) -> str:
        """Join the tier (the coordinator learns this actor's handle); returns its id."""
        import ray  # noqa: PLC0415

        ctx = ray.get_runtime_context()
        self.actor_id = str(ctx.get_actor_id())
        await self.coordinator.attach.remote(self.actor_id, ctx.current_actor)
        return self.actor_id

    def ident(self) -> str:
        """This aggregator's actor id (what the coordinator's figures name it by)."""
        return self.actor_id

    def _auth(self, headers: Mapping[str, str]) -> str:
        device = authenticate(self.tokens, headers)
        if device is None:
            claimed = headers.get(wire.DEVICE_HEADER, "")[:64]
            raise PermissionError(f"{claimed!r}: unknown device or wrong token")
        return device

    async def register(self, headers: Mapping[str, str]) -> int:
        device = self._auth(headers)
        version: int = await self.coordinator.register.remote(device)
        return version

    async def task(self, headers: Mapping[str, str]) -> Optional[bytes]:
        """The device's queued job as a wire job body, or None."""
        device = self._auth(headers)
        job = await self.coordinator.take_job.remote(device)
        if job is None:
            return None
        job_id, version, seed, w_bytes = job
        if version not in self.jobs:
            self.jobs[version] = tensors_from_own_bytes(w_bytes)
            for old in sorted(self.jobs)[:-JOBS_CACHED]:
                del self.jobs[old]
        return wire.encode_job(wire.JobMessage(job_id, version, seed, self.jobs[version]))

    async def update(self, headers: Mapping[str, str], body: bytes) -> Verdict:
        """Read and measure one update body, forward its scalars, return the verdict."""
        device = self._auth(headers)
        if len(body) > self.bound:
            return Verdict(False, "too_large", -1)
        try:
            msg = wire.decode_update(body, self.bound)
        except wire.WireError:
            return Verdict(False, "malformed", -1)
        spec, finite, norm = measure(msg.delta)
        scalars = UpdateScalars(msg.job_id, device, msg.version, msg.num_samples,
                                msg.grad_variance, spec, finite, norm)
        # our own encoding of the checked tensors, never the device's bytes
        self.held[msg.job_id] = tensors_to_bytes(msg.delta)
        self.forwarded += 1
        try:
            verdict: Verdict = await self.coordinator.submit.remote(self.actor_id, scalars)
        finally:
            self.held.pop(msg.job_id, None)
        return verdict

    async def heartbeat(self, headers: Mapping[str, str]) -> int:
        """An authenticated device is alive; returns the model version."""
        self._auth(headers)
        version: int = await self.coordinator.version.remote()
        return version

    async def hand_over(self, job_id: str) -> Tuple[bool, bytes]:
        """(True, the delta) of an update being submitted, as two results (the coordinator
        calls it with num_returns=2 and owns both objects)."""
        return True, self.held[job_id]

    def partial(self, alphas: List[float], factors: List[float], *bodies: bytes) -> bytes:
        """sum_i alpha_i * delta_i (float64 safetensors) over deltas handed over earlier."""
        return share_from_bodies(bodies, alphas, factors)


@dataclass
class Tier:
    """Handles of a started tier (Ray actor handles)."""

    coordinator: Any
    aggregators: List[Any]
    tokens: Mapping[str, str] = field(repr=False, default_factory=dict)
    bound: int = 0

    def aggregator_for(self, device: str) -> Any:
        """Devices are spread over the aggregators by a stable hash of their name."""
        return self.aggregators[sum(device.encode()) % len(self.aggregators)]


def import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise ConfigError("aggregator tier: Ray is not installed; pip install 'ftte-cli[ray]'"
                          ) from None
    return ray


def start_aggregator(tier: Tier) -> Any:
    """One aggregator actor joined to the tier (also how a killed one is replaced)."""
    ray = import_ray()
    actor = ray.remote(num_cpus=0)(Aggregator).remote(tier.coordinator, tier.tokens, tier.bound)
    ray.get(actor.ready.remote())
    return actor


def start_tier(spec: CoordinatorSpec, tokens: Mapping[str, str], aggregators: int = 2) -> Tier:
    """The coordinator actor and `aggregators` aggregators (Ray must be up)."""
    ray = import_ray()
    tier_strategy(spec.strategy)  # a ConfigError here, not inside an actor
    coordinator = ray.remote(num_cpus=0)(CoordinatorActor).remote(spec)
    bound = update_bound(sparse.extract(spec.params, spec.plan))
    tier = Tier(coordinator, [], dict(tokens), bound)
    tier.aggregators = [start_aggregator(tier) for _ in range(aggregators)]
    return tier
