"""`ftte simulate --backend threads`: client jobs train in trainer threads of this process; the
virtual clock, the coordinator and the evaluations stay on the calling (main) thread.

Why threads: a job's time is torch ops (har_cnn at width 3: ~85% convolutions), and torch
releases the GIL inside every op and inside autograd's backward, so N threads can train N jobs
on N cores at once with ONE process's memory (torch, the data and the model counted once; the
processes backend counts them once per worker in the RSS sum). How far that holds is measured
in docs/SCALING.md section 4: on the shared 2-core machine two threads did not beat one.

Lifecycle: `start(world)` checks the model, gives every trainer thread its own copy of the model
object (see "Thread safety") and starts `workers` daemon threads (default: the CPUs this process
may use). `submit` queues a job; a free trainer takes the oldest queued job at once, so jobs
train while the main thread runs the clock, aggregates and evaluates. `result`, called when the
job's arrival is the next event on the virtual clock, moves the job to the front of the queue if
no trainer holds it yet, waits for it and returns it: results are applied in virtual-time order,
exactly as in-process. `close()` sets the stop flag, drops queued jobs and joins the threads
(each finishes at most the job it is training).

Thread safety (what `engine.train.train_job` shares, and how each is handled):
- The nn.Module: `functional_call` swaps tensors into the module's parameter dicts for the
  duration of a call and `train()` flips its mode, so two threads on one module would run with
  each other's weights. Each trainer gets a private copy of the module objects; the parameter
  and buffer tensors are shared, read only (train_job passes every weight in explicitly).
- torch's global RNG: one per process. train_job's per-job `fork_rng` + `manual_seed` would
  interleave across threads, so trainers run with `seed_global_rng=False` and a model whose
  training forward draws random numbers (dropout and the like) is refused at start with a
  ConfigError suggesting `--backend processes`. Batch order comes from the job's own seeded
  generator either way. Buffers are shared too: a model whose training forward changes one
  (BatchNorm's running statistics) is refused the same way (the shipped models have none).
- The peak-RSS mark (VmHWM) is one per process: trainers run with `measure_memory=False`, so
  `peak_memory` is None (not measured) rather than another job's or the evaluation's peak. The
  simulator does not use it; `benchmarks/sim_speed.py` samples the process from outside.
- torch's intra-op thread count is process-wide: it stays at `--threads` (default 1, so each op
  runs in its calling thread); every trainer sets the same count on itself at start.
- Read only and shared: the frozen parameters, each version's w* (the coordinator never changes
  a dispatched w* in place), the clients' shards, the plans.

Equality with in-process: each job runs train_job on the same inputs with the same thread count,
a single-threaded sequence of the same ops, so deltas, and hence every metric, virtual time,
staleness and the event order, are bit for bit those of `--backend inprocess`. What differs:
`peak_memory` (None), `train_cpu_s` (each job's own thread CPU time, `time.thread_time`; with
`--threads` > 1 the intra-op pool's threads are not counted) and wall time.

Failure: a job that raises ends the run with a one-line RunError naming the trainer and the
error when its result is needed; the trainer goes on with the next job. Ctrl-C (a
KeyboardInterrupt in the main thread) reaches `close()` through `simulate`'s `finally`.

Jobs queued when a strategy stops early may still be trained (their results are dropped with
their handles); at most `max_concurrency` jobs per strategy.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Tuple

import torch
from torch import nn

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.train import JobResult, train_job
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.sim.backend_common import error_line, on_accelerator, worker_count

log = logging.getLogger(__name__)
WAIT_S = 0.5  # result() re-checks that the trainers live this often while it waits
JOIN_S = 60.0  # close() waits this long for a trainer to finish its current job
NAME = "ftte-sim-trainer"  # thread names: f"{NAME}-{i}" (tests look for them)


@dataclass(eq=False)  # identity: deque.remove must find this very handle
class _Handle:
    """One submitted job; filled in by the trainer that trains it."""

    plan_key: str
    job: Job
    device: int
    cfg: TrainConfig
    trainer: Optional[int] = None  # index of the trainer that took it
    done: bool = False
    result: Optional[JobResult] = None
    cpu_s: float = 0.0
    error: Optional[str] = None  # one line, when the job raised


def private_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module objects (its own parameter dicts and train/eval flags) that
    shares every parameter and buffer tensor with it: no weights are copied."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def draws_random(model: nn.Module, input_shape: Tuple[int, ...]) -> Optional[str]:
    """None when a training-mode forward of `model` leaves torch's global RNG and the model's
    buffers untouched, else a one-line reason naming the model (and the modules concerned).
    Trainer threads share both: dropout-like layers would draw from one RNG in whatever order
    the threads run, and BatchNorm-like layers would update one set of running statistics."""
    probe = copy.deepcopy(model)  # a full copy: the forward below changes nothing shared
    probe.train()
    buffers = {n: b.clone() for n, b in probe.named_buffers()}
    state = torch.get_rng_state()
    try:
        with torch.no_grad():
            probe(torch.zeros((2, *input_shape), dtype=torch.float32))
        moved = not torch.equal(state, torch.get_rng_state())
    finally:
        torch.set_rng_state(state)
    changed = [n for n, b in probe.named_buffers() if not torch.equal(b, buffers[n])]
    name = type(model).__name__
    if changed:
        return f"model {name} updates buffers in training: {', '.join(changed[:3])}"
    if not moved:
        return None
    random_kinds = (nn.modules.dropout._DropoutNd, nn.RReLU)
    named = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
             if isinstance(m, random_kinds)]
    where = ": " + ", ".join(named[:3]) if named else " in its forward"
    return f"model {name} draws random numbers in training{where}"


class ThreadBackend:
    """Client jobs trained by trainer threads of this process; see the module docstring."""

    def __init__(self, workers: Optional[int] = None) -> None:
        self.workers = worker_count(workers)
        self.world: Any = None
        self.threads: List[threading.Thread] = []
        self.queue: Deque[_Handle] = deque()
        self.cond = threading.Condition()  # guards queue, stopping and every handle's fields
        self.stopping = False
        self.torch_threads = 1
        self.jobs_trained = 0  # tests read it

    # lifecycle -------------------------------------------------------------------------------

    def start(self, world: Any) -> None:
        """Check the model and the device, then start the trainers (see the module docstring)."""
        device = world.recipe.train.device
        if on_accelerator(device):
            raise ConfigError(f"--backend threads: train.device {device} means an accelerator; "
                              "trainer threads train on the CPU (use train.device: cpu, or "
                              "--backend inprocess)")
        problem = draws_random(world.model, world.data.input_shape)
        if problem is not None:
            raise ConfigError(f"--backend threads: {problem}; trainer threads share that "
                              "state, so jobs would not be reproducible (use --backend "
                              "processes)")
        self.world = world
        self.stopping = False
        self.torch_threads = torch.get_num_threads()
        for i in range(self.workers):
            t = threading.Thread(target=self._trainer, args=(i, private_copy(world.model)),
                                 name=f"{NAME}-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        log.info("threads backend: %d trainer threads, %d torch thread(s)", self.workers,
                 self.torch_threads)

    def close(self) -> None:
        """Stop the trainers: queued jobs are dropped, a job in training finishes first."""
        with self.cond:
            self.stopping = True
            self.queue.clear()
            self.cond.notify_all()
        for t in self.threads:
            t.join(timeout=JOIN_S)
            if t.is_alive():  # a daemon: it cannot keep the interpreter from exiting
                log.warning("threads backend: %s still training after %.0f s", t.name, JOIN_S)
        self.threads = []
        self.world = None

    # jobs ------------------------------------------------------------------------------------

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        assert self.threads, "start(world) first"
        handle = _Handle(plan_key, job, device, cfg)
        with self.cond:
            self.queue.append(handle)
            self.cond.notify_all()
        return handle

    def result(self, handle: Any) -> Tuple[JobResult, float]:
        assert isinstance(handle, _Handle)
        with self.cond:
            if not handle.done and handle.trainer is None:  # needed now: next to go
                self.queue.remove(handle)
                self.queue.appendleft(handle)
                self.cond.notify_all()
            while not handle.done:
                self._check_trainers()
                self.cond.wait(WAIT_S)
        if handle.error is not None:
            raise RunError(f"threads backend: a client job failed in trainer thread "
                           f"{handle.trainer}: {handle.error}")
        res, handle.result = handle.result, None  # the backend keeps nothing once delivered
        assert res is not None
        return res, handle.cpu_s

    def _check_trainers(self) -> None:
        dead = [t.name for t in self.threads if not t.is_alive()]
        if dead:
            raise RunError(f"threads backend: {dead[0]} stopped unexpectedly; the run cannot "
                           "continue")

    # the trainer threads ---------------------------------------------------------------------

    def _next(self, index: int) -> Optional[_Handle]:
        """The oldest queued job, now this trainer's; None once stopping."""
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return None
            handle = self.queue.popleft()
            handle.trainer = index
            return handle

    def _trainer(self, index: int, model: nn.Module) -> None:
        torch.set_num_threads(self.torch_threads)  # the main thread's count: same bits
        world = self.world
        while True:
            handle = self._next(index)
            if handle is None:
                return
            res: Optional[JobResult] = None
            error: Optional[str] = None
            start = time.thread_time()
            try:
                plan = world.dense if handle.plan_key == "dense" else world.ftte
                res = train_job(model, world.params, plan, handle.job.subset,
                                world.data.clients[handle.device].train, handle.cfg,
                                handle.job.seed, seed_global_rng=False, measure_memory=False)
            except Exception as err:  # noqa: BLE001  (reported by result(), which raises)
                error = error_line(err)
            with self.cond:
                handle.result, handle.error = res, error
                handle.cpu_s = time.thread_time() - start
                handle.done = True
                self.jobs_trained += 1
                self.cond.notify_all()
