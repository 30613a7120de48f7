"""`ftte simulate --backend auto`, the CLI's default: trainer threads where they can run, else
in-process, chosen when the world is known.

Both give the same bits (sim/thread_backend.py), so the choice moves only wall time and memory.
On idle cores threads was the fastest side in every measured row (docs/SCALING.md section 4:
0.60-0.68x in-process's wall at 1.1-1.4x its RSS); it cannot run every world, and then auto
trains in-process and logs why.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import torch

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.train import JobResult
from ftte_cli.sim.backend_common import on_accelerator, usable_cpus, worker_count
from ftte_cli.sim.runner import InProcessBackend, JobBackend
from ftte_cli.sim.thread_backend import ThreadBackend, draws_random
from ftte_cli.sim.world import World

log = logging.getLogger(__name__)


def why_not_threads(world: World, workers: Optional[int] = None) -> Optional[str]:
    """None when trainer threads can train `world`'s jobs and should help, else why not."""
    if (workers or usable_cpus()) < 2:
        return "one usable CPU"
    if torch.get_num_threads() != 1:
        return "--threads above 1 (each job already uses several cores)"
    if on_accelerator(world.recipe.train.device):
        return f"train.device {world.recipe.train.device} is an accelerator"
    return draws_random(world.model, world.data.input_shape)


class AutoBackend:
    """Delegates to a ThreadBackend or an InProcessBackend, picked in `start` (`chosen`)."""

    def __init__(self, workers: Optional[int] = None) -> None:
        worker_count(workers)  # a bad worker count fails now
        self.workers = workers
        self.chosen = ""
        self._inner: Optional[JobBackend] = None

    def start(self, world: World) -> None:
        reason = why_not_threads(world, self.workers)
        if reason is None:
            self._inner, self.chosen = ThreadBackend(self.workers), "threads"
        else:
            self._inner, self.chosen = InProcessBackend(), "inprocess"
            log.info("backend auto: in-process (%s)", reason)
        self._inner.start(world)

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        assert self._inner is not None, "start(world) first"
        return self._inner.submit(plan_key, job, device, cfg)

    def result(self, handle: Any) -> Tuple[JobResult, float]:
        assert self._inner is not None, "start(world) first"
        return self._inner.result(handle)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
