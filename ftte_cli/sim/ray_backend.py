"""`ftte simulate --backend ray`: client jobs train on Ray actors; clock and coordinator stay here.

Placement, once per world (`start`): the frozen initial parameters and every client's training
shard go into Ray's object store (`ray.put`, safetensors bytes), and `workers` actors are created,
each building the model and holding both plans. Client i always trains on actor i % workers, so
an actor fetches only its own clients' shards, once, and keeps them. Per job only the trainable
subset w*_t travels (one `ray.put` per model version, shared by every job of that version), plus
the job's seed and the train config; the delta comes back as safetensors bytes.

Order: `submit` starts a job as soon as the coordinator dispatches it; `result` (called when the
job's arrival is the next event on the virtual clock) waits for that one job only. Results are
applied in virtual-time order, exactly as in-process.

Equality with in-process: the same function (`engine.train.train_job`) runs on the same inputs
(the bits of w*_t, the shard, the seed) with the driver's torch thread count, so deltas, and
hence every metric, are bit for bit the same on one machine / one torch build. What differs:
`peak_memory` (each actor's own RSS; the simulator does not use it), `train_cpu_s` (the actors'
CPU) and wall time. Workers on other machines with another torch build or CPU could produce
different float rounding; that is the one place bit-equality can break.

Transport: Ray moves task arguments with its own serializer (pickle-based) inside the cluster,
which the user runs and trusts; every tensor we hand it is safetensors bytes, and only frozen
config dataclasses (Plan, TrainConfig, ModelConfig) travel as Python objects.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ftte_cli.config.recipe import ModelConfig, TrainConfig
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.plan import Plan
from ftte_cli.engine.serialize import tensors_from_own_bytes, tensors_to_bytes
from ftte_cli.engine.train import JobResult
from ftte_cli.errors import ConfigError, RunError

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'ftte-cli[ray]'"
SUBSET_REFS_KEPT = 64  # versions whose w* stays in the object store (jobs in flight use them)


def import_ray() -> Any:
    """The ray module, or a one-line ConfigError (exit 2) saying how to install it."""
    try:
        import ray  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise ConfigError(f"--backend ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def dataset_bytes(data: Dataset) -> bytes:
    """A client's shard as safetensors bytes."""
    tensors = {"x": data.x.contiguous(), "y": data.y.contiguous()}
    if data.groups is not None:
        tensors["groups"] = data.groups.contiguous()
    return tensors_to_bytes(tensors)


def dataset_from_bytes(raw: bytes) -> Dataset:
    """The inverse of `dataset_bytes`."""
    t = tensors_from_own_bytes(raw)
    return Dataset(t["x"], t["y"], t.get("groups"))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class TrainWorker:
    """Actor body: the model, both plans, the frozen parameters and the shards it was sent."""

    def __init__(self, model_cfg: ModelConfig, input_shape: Tuple[int, ...], num_classes: int,
                 plans: Dict[str, Plan], frozen: bytes, shards: List[Any], threads: int) -> None:
        from ftte_cli.engine.models import build_model  # noqa: PLC0415  (inside the actor)

        torch.set_num_threads(threads)  # the driver's count: same reduction order, same bits
        self.model = build_model(model_cfg, tuple(input_shape), num_classes)
        self.plans = plans
        self.frozen = tensors_from_own_bytes(frozen)
        self.shards = shards  # object refs, fetched on a client's first job
        self.data: Dict[int, Dataset] = {}

    def _shard(self, client: int) -> Dataset:
        if client not in self.data:
            import ray  # noqa: PLC0415

            self.data[client] = dataset_from_bytes(ray.get(self.shards[client]))
        return self.data[client]

    def train(self, plan_key: str, subset: bytes, client: int, cfg: TrainConfig,
              seed: int) -> Tuple[bytes, Dict[str, Any]]:
        """One job: (delta as safetensors bytes, the JobResult's other fields + cpu_s)."""
        from ftte_cli.engine.train import train_job  # noqa: PLC0415

        start = time.process_time()
        res = train_job(self.model, self.frozen, self.plans[plan_key],
                        tensors_from_own_bytes(subset), self._shard(client), cfg, seed)
        meta = {"num_samples": res.num_samples, "grad_variance": res.grad_variance,
                "steps": res.steps, "loss": res.loss, "peak_memory": res.peak_memory,
                "cpu_s": time.process_time() - start}
        return tensors_to_bytes(res.delta), meta

    def ready(self) -> bool:
        """Answered once the actor has imported torch and built its model."""
        return True

    def shards_held(self) -> List[int]:
        """Clients whose shard this actor fetched (tests check placement)."""
        return sorted(self.data)


class RayBackend:
    """Client jobs as Ray actor calls; see the module docstring."""

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None) -> None:
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self.actors: List[Any] = []
        self._subsets: OrderedDict[int, Tuple[Dict[str, Tensor], Any]] = OrderedDict()
        self._owns_ray = False

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except ConnectionError as err:
            raise RunError(f"--address {self.address}: cannot reach a Ray cluster: {err}"
                           ) from None
        self._owns_ray = True

    def start(self, world: Any) -> None:
        """Connect, put the frozen model and every shard in the object store, start the actors."""
        self._connect()
        ray = self.ray
        count = self.workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        frozen = ray.put(tensors_to_bytes(world.params))
        shards = [ray.put(dataset_bytes(c.train)) for c in world.data.clients]
        plans = {"dense": world.dense, "ftte": world.ftte}
        actor = ray.remote(num_cpus=1)(TrainWorker)
        self.actors = [actor.remote(world.recipe.model, tuple(world.data.input_shape),
                                    world.data.num_classes, plans, frozen, shards,
                                    torch.get_num_threads())
                       for _ in range(count)]
        # Wait for every actor to be up (torch imported, model built) so start-up cost and
        # errors (e.g. ftte missing on a cluster node) show here, not in the first job.
        try:
            self.ray.get([a.ready.remote() for a in self.actors])
        except self.ray.exceptions.RayError as err:
            raise RunError(f"ray backend: a worker did not start: {_first_line(err)}") from None
        log.info("ray backend: %d workers, %d shards placed", count, len(shards))

    def _subset_ref(self, subset: Dict[str, Tensor]) -> Any:
        """One object-store copy of w*_t per version (jobs of a version share the dict)."""
        key = id(subset)
        hit = self._subsets.get(key)
        if hit is not None and hit[0] is subset:
            self._subsets.move_to_end(key)
            return hit[1]
        ref = self.ray.put(tensors_to_bytes(subset))
        self._subsets[key] = (subset, ref)  # holding the dict keeps its id unique
        while len(self._subsets) > SUBSET_REFS_KEPT:
            self._subsets.popitem(last=False)
        return ref

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        actor = self.actors[device % len(self.actors)]
        return actor.train.remote(plan_key, self._subset_ref(job.subset), device, cfg, job.seed)

    def result(self, handle: Any) -> Tuple[JobResult, float]:
        try:
            raw, meta = self.ray.get(handle)
        except self.ray.exceptions.RayError as err:
            raise RunError(f"ray backend: a client job failed: {_first_line(err)}") from None
        res = JobResult(delta=tensors_from_own_bytes(raw), num_samples=int(meta["num_samples"]),
                        grad_variance=float(meta["grad_variance"]), steps=int(meta["steps"]),
                        loss=float(meta["loss"]), peak_memory=meta["peak_memory"])
        return res, float(meta["cpu_s"])

    def shards_held(self) -> List[List[int]]:
        """Per actor, the clients whose shard it holds."""
        return self.ray.get([a.shards_held.remote() for a in self.actors])

    def close(self) -> None:
        """Stop the actors (and Ray itself when this backend started it)."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        self._subsets.clear()
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False
