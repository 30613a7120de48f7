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

When stacking pays: a stacked step saves per-op overhead but runs grouped kernels, which are
slower per FLOP than one client's dense ones. So a plan whose trained blocks cost more than
`STACK_MAX_FLOPS` per sample forward trains one job at a time with `train.train_job` (the
in-process backend's arithmetic, to the bit); below it, groups train stacked. The choice
depends on the model and plan alone, never on timing, so a seed still fixes every bit.

Frozen prefix: within a run the layers before a plan's earliest trainable one never change (the
coordinator only changes w*), so their output for each client's shard is computed once, on the
client's first job under that plan, and kept (`PREFIX_CACHE_BYTES` at most; past it, per group
as before). Each shard's output is computed from that shard alone, so the kept tensors, and the
results, do not depend on which clients shared a group.

Costs: a job that never arrives (the run stopped first) may have been trained with its group;
`train_cpu_s` splits a group's CPU time evenly over its jobs. `peak_memory` is None (the
simulator does not use it). Same seed, same groups, same bits: grouping depends only on the
dispatch order, which the seed fixes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine.batched import MAX_GROUP, prefix_outputs, train_jobs, unsupported
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.flops import layer_flops
from ftte_cli.engine.models import feature_block, frozen_prefix
from ftte_cli.engine.train import JobResult, train_job
from ftte_cli.errors import ConfigError
from ftte_cli.sim.backend_common import on_accelerator

GroupKey = Tuple[str, int, TrainConfig]  # plan key, id of the version's w* dict, config
# Frozen-prefix outputs kept per (plan, client), in bytes (synthetic HAR at width 3 under the
# default budget: ~24 KiB per training window, ~200 MB for its 8,000).
PREFIX_CACHE_BYTES = 1 << 30
# Forward FLOPs per sample of the trained blocks above which jobs train one at a time. CPU per
# job stacked (groups of 16) over one at a time, har_cnn dense on 32 synthetic HAR clients,
# one thread: 0.70 at width 1 (3.2 MFLOP), 1.24 at width 2 (12.5), 1.58 at width 3 (27.8).
STACK_MAX_FLOPS = 6_000_000


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
    prefixed: Dict[Tuple[str, int], Tensor] = field(default_factory=dict)  # (plan, client)
    stacks: Dict[str, bool] = field(default_factory=dict)  # plan key -> train stacked
    prefixed_bytes: int = 0

    def start(self, world: Any) -> None:
        problem = unsupported(world.model)
        if problem is not None:
            raise ConfigError(f"--backend batched: {problem}; use --backend inprocess")
        device = world.recipe.train.device
        if on_accelerator(device):
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
        if not self._stacked(first.plan_key, plan):
            self._one_at_a_time(plan, group)
            return
        start = time.process_time()
        shards = [world.data.clients[h.device].train for h in group]
        results = train_jobs(world.model, world.params, plan, first.job.subset, shards,
                             first.cfg, [h.job.seed for h in group], self.max_group,
                             self._prefixed(first.plan_key, plan, group))
        share = (time.process_time() - start) / len(group)
        for h, res in zip(group, results):
            h.result, h.cpu_s = res, share
        self.groups_trained += 1
        self.jobs_trained += len(group)

    def _stacked(self, key: str, plan: Any) -> bool:
        """Whether jobs of this plan train stacked (see the module docstring)."""
        if key not in self.stacks:
            world = self.world
            first = frozen_prefix(world.model, plan.trainable_names())
            flops = layer_flops(world.model, world.data.input_shape)
            trained = sum(f for name, f in flops.items()
                          if (b := feature_block(name)) is None or b >= first)
            self.stacks[key] = trained <= STACK_MAX_FLOPS
        return self.stacks[key]

    def _one_at_a_time(self, plan: Any, group: List[_Handle]) -> None:
        world = self.world
        for h in group:
            start = time.process_time()
            h.result = train_job(world.model, world.params, plan, h.job.subset,
                                 world.data.clients[h.device].train, h.cfg, h.job.seed)
            h.cpu_s = time.process_time() - start
        self.jobs_trained += len(group)

    def _prefixed(self, key: str, plan: Any, group: List[_Handle]) -> Optional[List[Tensor]]:
        """Each job's shard through the plan's frozen prefix, computed once per client and
        run; None (train_jobs computes them per group) for a dense plan or a full cache."""
        world = self.world
        if key == "dense" or not frozen_prefix(world.model, plan.trainable_names()):
            return None
        out = []
        for h in group:
            kept = self.prefixed.get((key, h.device))
            if kept is None:
                if self.prefixed_bytes >= PREFIX_CACHE_BYTES:
                    return None
                kept = prefix_outputs(world.model, world.params, plan,
                                      world.data.clients[h.device].train.x)
                self.prefixed[(key, h.device)] = kept
                self.prefixed_bytes += kept.numel() * kept.element_size()
            out.append(kept)
        return out

    def close(self) -> None:
        self.pending.clear()
        self.prefixed.clear()
        self.stacks.clear()
        self.prefixed_bytes = 0
        self.world = None

