"""`ftte simulate --backend batched`: jobs of one model version train together in this process.

Lifecycle: `submit` (at dispatch) only records a job, grouped by (plan, the version's w* object,
train config): jobs the coordinator dispatched at the same model version with the same plan.
`result` for a job not trained yet trains its whole group as it stands at that moment (every job
of the group dispatched so far) with `engine.batched.train_jobs`, keeps the other results for
their own arrivals, and returns this one. Jobs dispatched later at the same version form a new
group. The clock, the coordinator and the order in which results are applied are untouched: only
where and when the arithmetic happens moves, so virtual time, staleness and the event order are
those of the in-process backend, and results equal its results up to float rounding (see
`engine/batched.py` for the tolerance).

Costs: a job that never arrives (the run stopped first) may have been trained with its group;
`train_cpu_s` splits a group's CPU time evenly over its jobs. `peak_memory` is None (the
simulator does not use it). Same seed, same groups, same bits: grouping depends only on the
dispatch order, which the seed fixes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine.batched import MAX_GROUP, train_jobs, unsupported
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.train import JobResult, resolve_device
from ftte_cli.errors import ConfigError

GroupKey = Tuple[str, int, TrainConfig]  # plan key, id of the version's w* dict, config


@dataclass
class _Handle:
    """One submitted job; `result` is filled when its group trains."""

    plan_key: str
    job: Job
    device: int
    cfg: TrainConfig
    result: Optional[JobResult] = None
    cpu_s: float = 0.0


@dataclass
class BatchedBackend:
    """Client jobs trained in batches of the same version; see the module docstring."""

    max_group: int = MAX_GROUP
    world: Any = None
    pending: Dict[GroupKey, List[_Handle]] = field(default_factory=dict)
    groups_trained: int = 0  # tests and benchmarks read these
    jobs_trained: int = 0

    def start(self, world: Any) -> None:
        problem = unsupported(world.model)
        if problem is not None:
            raise ConfigError(f"--backend batched: {problem}; use --backend inprocess")
        device = world.recipe.train.device
        if device == "cuda" or (device == "auto" and resolve_device(device).type != "cpu"):
            raise ConfigError(f"--backend batched: train.device {device} means an accelerator; "
                              "batched jobs run on the CPU (use train.device: cpu)")
        self.world = world

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        handle = _Handle(plan_key, job, device, cfg)
        # the key holds id(job.subset); the handles hold the dict, so the id stays unique
        self.pending.setdefault((plan_key, id(job.subset), cfg), []).append(handle)
        return handle

    def result(self, handle: Any) -> Tuple[JobResult, float]:
        assert isinstance(handle, _Handle)
        if handle.result is None:
            self._train(self.pending.pop((handle.plan_key, id(handle.job.subset), handle.cfg)))
        assert handle.result is not None
        res, handle.result = handle.result, None  # the backend keeps nothing once delivered
        return res, handle.cpu_s

    def _train(self, group: List[_Handle]) -> None:
        world = self.world
        assert world is not None, "start(world) first"
        first = group[0]
        plan = world.dense if first.plan_key == "dense" else world.ftte
        start = time.process_time()
        results = train_jobs(world.model, world.params, plan, first.job.subset,
                             [world.data.clients[h.device].train for h in group], first.cfg,
                             [h.job.seed for h in group], self.max_group)
        share = (time.process_time() - start) / len(group)
        for h, res in zip(group, results):
            h.result, h.cpu_s = res, share
        self.groups_trained += 1
        self.jobs_trained += len(group)

    def close(self) -> None:
        self.pending.clear()
        self.world = None
