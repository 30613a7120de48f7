"""`ftte simulate`'s loop: every strategy on the same clients, data and devices, virtual time.

Lifecycle: `prepare(settings)` (sim/world.py) loads the data, builds the initial model, the fleet,
the dense plan and the FTTE plan once; `run_strategy(world, name)` drives a fresh `Coordinator`
on a `VirtualClock`; `simulate(settings)` does both for every strategy and returns a `SimResult`
(sim/settings.py). Local training is real (`engine/train.train_job`), on a `JobBackend`; only
time is virtual. The same seed gives the same result bit for bit: every chance decision draws
from seeded generators, events tie-break in scheduling order, and each job trains with its own
seed. Baselines train the dense model; under `baseline_memory: strict` clients whose memory
cannot hold full training are left out of FedAvg (the asynchronous baselines keep every client,
as on the fleet), under `lenient` they are assumed to fit; results list both.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple, Union

import torch

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig, Job, Update
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.evaluation import PlanEvaluator
from ftte_cli.engine.metrics import EvalPoint, summarize
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.engine.strategies.aggregate import nbytes
from ftte_cli.engine.train import JobResult, train_job
from ftte_cli.errors import RunError
from ftte_cli.sim.clock import VirtualClock
from ftte_cli.sim.devices import DeviceModel, compute_seconds, job_seconds
from ftte_cli.sim.settings import (
    ClientRef,
    PlanInfo,
    Progress,
    SimResult,
    SimSettings,
    StrategyResult,
    ratio,
)
from ftte_cli.sim.world import Tensors, World, prepare

log = logging.getLogger(__name__)


class JobBackend(Protocol):
    """Where client jobs train; the clock and the coordinator always stay in this process.

    `start(world)` once per world (place the model, plans and data shards); `submit` when a job
    is dispatched (a backend may start it then); `result` when its arrival is the next event
    (returns the JobResult and the CPU seconds it took); `close()` at the end.
    """

    def start(self, world: World) -> None: ...

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any: ...

    def result(self, handle: Any) -> Tuple[JobResult, float]: ...

    def close(self) -> None: ...


class InProcessBackend:
    """The default: train in this process, lazily when the arrival is handled."""

    def __init__(self) -> None:
        self.world: Optional[World] = None

    def start(self, world: World) -> None:
        self.world = world

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        return (plan_key, job, device, cfg)

    def result(self, handle: Any) -> Tuple[JobResult, float]:
        plan_key, job, device, cfg = handle
        world = self.world
        assert world is not None, "start(world) first"
        plan = world.dense if plan_key == "dense" else world.ftte
        start = time.process_time()
        res = train_job(world.model, world.params, plan, job.subset,
                        world.data.clients[device].train, cfg, job.seed)
        return res, time.process_time() - start

    def close(self) -> None:
        self.world = None


# Backend used by simulate() when none is passed (the CLI sets it around api.simulate).
_BACKEND: contextvars.ContextVar[Optional[Callable[[], JobBackend]]] = contextvars.ContextVar(
    "ftte_sim_backend", default=None)


@contextlib.contextmanager
def using_backend(factory: Callable[[], JobBackend]) -> Iterator[None]:
    """Within the block, simulate() trains jobs on backends made by `factory`."""
    token = _BACKEND.set(factory)
    try:
        yield
    finally:
        _BACKEND.reset(token)


@dataclass(frozen=True)
class _Arrive:
    job: Job
    device: int
    handle: Any = None  # the backend's handle of the job's training


@dataclass(frozen=True)
class _Offline:
    client: str
    job_id: str


@dataclass(frozen=True)
class _Online:
    client: str


Event = Union[_Arrive, _Offline, _Online]


class _StrategyRun:
    """One strategy driven on a virtual clock."""

    def __init__(self, world: World, name: str, progress: Optional[Progress],
                 on_eval: Optional[Callable[[EvalPoint], None]], backend: JobBackend) -> None:
        self.world = world
        self.name = name
        self.backend = backend
        recipe = world.recipe.with_strategy(name)
        self.recipe = recipe
        self.strategy = make_strategy(recipe.strategy)
        dense = self.strategy.dense
        self.plan = world.dense if dense else world.ftte
        self.cost = world.costs["dense" if dense else "ftte"]
        self.progress = progress
        self.on_eval = on_eval
        full = world.dense.estimated_bytes or 0
        # FTTE.md section 5: strict exclusion is FedAvg's (the synchronous baseline) alone
        strict = self.strategy.synchronous and recipe.strategy.baseline_memory == "strict"
        self.members = [i for i, d in enumerate(world.fleet)
                        if not strict or d.memory_bytes >= full]
        self.excluded = len(world.fleet) - len(self.members)
        need = self.plan.estimated_bytes or 0  # clients kept although the plan overflows them
        self.over_memory = [i for i in self.members if world.fleet[i].memory_bytes < need]
        if not self.members:
            raise RunError(f"{name}: no simulated client can hold full training ({full} B) "
                           "under baseline_memory strict; use lenient")
        self.test = _eval_set(world)
        self.evaluator = PlanEvaluator(world.model, self.plan, self.test)  # frozen prefix once
        self.train_cpu = 0.0
        self.energy: List[Tuple[float, float]] = []  # (arrival time, joules) per trained job
        self.rng = random.Random(f"availability:{world.seed}:{name}")
        self.clock: VirtualClock[Event] = VirtualClock()
        self.coord = Coordinator(
            world.params, self.plan, self.strategy,
            {self._cid(i): len(world.data.clients[i].train) for i in self.members},
            CoordinatorConfig(strategy=recipe.strategy, eval_every=recipe.stop.eval_every),
            seed=world.seed, evaluate=self._evaluate)

    @staticmethod
    def _cid(i: int) -> str:
        return f"c{i:04d}"

    def _evaluate(self, params: Tensors) -> Tuple[float, float]:
        return self.evaluator(params)

    def _dispatch(self, now: float) -> None:
        cfg = self.recipe.sim
        for job in self.coord.next_jobs(now):
            i = int(job.client_id[1:])
            n = len(self.world.data.clients[i].train)
            samples = n * self.recipe.train.epochs
            if self.recipe.train.max_steps is not None:
                samples = min(samples, self.recipe.train.max_steps * self.recipe.train.batch_size)
            size = nbytes(job.subset)
            duration = job_seconds(self.world.fleet[i], self.cost, samples, size, size)
            if cfg.dropout_rate > 0 and self.rng.random() < cfg.dropout_rate:
                self.clock.schedule(now + self.rng.random() * duration,
                                    _Offline(job.client_id, job.job_id))
            else:
                key = "dense" if self.strategy.dense else "ftte"
                handle = self.backend.submit(key, job, i, self.recipe.train)
                self.clock.schedule(now + duration, _Arrive(job, i, handle))
                device = self.world.fleet[i]
                self.energy.append((now + duration, device.watts_per_cpu * compute_seconds(
                    device, self.cost, samples)))

    def _arrive(self, ev: _Arrive, now: float) -> None:
        res, cpu = self.backend.result(ev.handle)
        self.train_cpu += cpu
        self.coord.submit(Update(ev.job.job_id, ev.job.client_id, ev.job.version, res.delta,
                                 res.num_samples, res.grad_variance, res.peak_memory), now)

    def _handle(self, ev: Event, now: float) -> None:
        if isinstance(ev, _Arrive):
            self._arrive(ev, now)
        elif isinstance(ev, _Offline):
            self.coord.client_offline(ev.client, now)
            back = self.rng.expovariate(1.0 / max(self.recipe.sim.return_after, 1e-9))
            self.clock.schedule(now + back, _Online(ev.client))
        else:
            self.coord.client_online(ev.client)

    def _done(self, now: float) -> bool:
        stop = self.recipe.stop
        if self.coord.version >= stop.max_versions or now > stop.time_limit:
            return True
        evals = self.coord.metrics.evals
        return (self.world.settings.stop_at_target and bool(evals)
                and evals[-1].accuracy >= stop.target_accuracy)

    def run(self) -> StrategyResult:
        wall, cpu = time.perf_counter(), time.process_time()
        seen = 0
        self.coord.evaluate_now(0.0)
        now = 0.0
        while True:
            seen = self._report(seen, now)
            if self._done(now):
                break
            self._dispatch(now)
            if not len(self.clock) or (self.clock.peek_time() or 0.0) > self.recipe.stop.time_limit:
                now = min(self.clock.peek_time() or now, self.recipe.stop.time_limit)
                break
            now, ev = self.clock.pop()
            self._handle(ev, now)
        self.coord.evaluate_now(now)
        self._report(seen, now)
        return self._result(now, time.perf_counter() - wall, time.process_time() - cpu)

    def _report(self, seen: int, now: float) -> int:
        evals = self.coord.metrics.evals
        for point in evals[seen:]:
            if self.on_eval is not None:
                self.on_eval(point)
        if self.progress is not None and len(evals) > seen:
            self.progress(self.name, now, self.coord.version, evals[-1].accuracy)
        return len(evals)

    def _result(self, now: float, wall: float, cpu: float) -> StrategyResult:
        plan = self.plan
        summary = summarize(self.coord.metrics, strategy=self.name,
                            target=self.recipe.stop.target_accuracy, duration=now,
                            versions=self.coord.version, memory_per_device=plan.estimated_bytes,
                            bundle_bytes=4 * plan.total_params)
        info = PlanInfo(plan.method, plan.trainable_params, plan.total_params,
                        plan.estimated_bytes or 0, plan.payload_bytes, plan.earliest_layer,
                        list(plan.units))
        members = set(self.members)
        excluded = [_client_ref(self.world.fleet, i) for i in range(len(self.world.fleet))
                    if i not in members]
        return StrategyResult(self.name, summary, self.coord.metrics, info, len(self.members),
                              self.excluded, wall, cpu, self.train_cpu, excluded,
                              [_client_ref(self.world.fleet, i) for i in self.over_memory],
                              sim_energy(self.energy, now, summary.time_to_target,
                                         self.coord.version))


def sim_energy(jobs: List[Tuple[float, float]], end: float, to_target: Optional[float],
               versions: int) -> Dict[str, Any]:
    """Estimated energy of a simulated run, charged like a device without a power sensor:
    each job's virtual compute seconds x its device class's watts per CPU (client/power.py).
    Jobs that arrived by `end` count; `to_target_j` sums those that arrived by the target."""
    done = [j for t, j in jobs if t <= end]
    total = sum(done)
    return {"total_j": total, "per_version_j": total / versions if versions else None,
            "to_target_j": None if to_target is None else sum(
                j for t, j in jobs if t <= to_target),
            "jobs": len(done), "label": "estimated"}


def _client_ref(fleet: List[DeviceModel], i: int) -> ClientRef:
    d = fleet[i]
    return ClientRef(_StrategyRun._cid(i), d.name, d.device_class, d.memory_bytes)


def _eval_set(world: World) -> Dataset:
    """The global test set, or a seeded random subset of `eval_samples` of it (cheap evals)."""
    test, cap = world.data.test, world.settings.eval_samples
    if cap is None or len(test) <= cap:
        return test
    gen = torch.Generator().manual_seed(world.seed)
    return test.subset(torch.randperm(len(test), generator=gen)[:cap].sort().values)


def run_strategy(world: World, name: str, progress: Optional[Progress] = None,
                 on_eval: Optional[Callable[[EvalPoint], None]] = None,
                 backend: Optional[JobBackend] = None) -> StrategyResult:
    """Run one strategy on the shared world (a fresh coordinator, clock and RNGs); `backend`
    must have been started on `world` (default: in-process)."""
    if backend is None:
        backend = InProcessBackend()
        backend.start(world)
    return _StrategyRun(world, name, progress, on_eval, backend).run()


def simulate(settings: SimSettings, progress: Optional[Progress] = None,
             on_eval: Optional[Callable[[str, EvalPoint], None]] = None,
             backend: Optional[JobBackend] = None) -> SimResult:
    """Every strategy of `settings` on the same world, one after the other; jobs train on
    `backend` (default: the one `using_backend` set, else in-process)."""
    if backend is None:
        factory = _BACKEND.get()
        backend = factory() if factory is not None else InProcessBackend()
    world = prepare(settings)
    results = []
    backend.start(world)
    try:
        for name in settings.strategies:
            hook = None if on_eval is None else (lambda p, n=name: on_eval(n, p))
            results.append(run_strategy(world, name, progress, hook, backend))
    finally:
        backend.close()
    stragglers = sum(d.straggler for d in world.fleet) / max(len(world.fleet), 1)
    return SimResult(world.seed, len(world.fleet), stragglers, world.budget_bytes,
                     world.budget_source, world.dense.estimated_bytes or 0,
                     world.recipe.stop.target_accuracy, results, world.notes,
                     _class_counts(world.fleet), world.start)


def _class_counts(fleet: List[DeviceModel]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for d in fleet:
        key = d.device_class or "profile"
        counts[key] = counts.get(key, 0) + 1
    return counts


# Settings, results and the world live in sim/settings.py and sim/world.py; these names stay
# importable from here, where the API, tests and benchmarks look.
__all__ = [
    "ClientRef", "InProcessBackend", "JobBackend", "PlanInfo", "Progress", "SimResult",
    "SimSettings", "StrategyResult", "World", "prepare", "ratio", "run_strategy", "sim_energy",
    "simulate", "using_backend",
]
