"""The strategy interface: how accepted updates turn into new versions of the trainable subset.

Lifecycle: the coordinator validates an update, then calls `ingest(arrival, current)`. A strategy
returns the new trainable subset w*_{t+1} when the model advances, or None while it waits (e.g. the
buffer is not full yet). Synchronous strategies also hear about the round they are given
(`begin_round`) and about jobs that will never arrive (`job_lost`), so a round can close without
them. Strategies never see time or randomness; the coordinator owns both. Every strategy reduces
its updates to a pseudo-gradient and hands it to `self.optimizer` (server_opt.py), whose state
travels in `state()` under `opt/`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from torch import Tensor

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.strategies.server_opt import ServerOptimizer

Tensors = Dict[str, Tensor]


@dataclass(frozen=True)
class Arrival:
    """One accepted update as a strategy sees it."""

    job_id: str
    client_id: str
    delta: Tensors  # w*_after - w*_{t_i}, over the plan's mask
    num_samples: int  # n_i
    grad_variance: float  # v_i (FTTE.md section 3)
    staleness: int  # tau_i = t - t_i
    base: Optional[Tensors] = None  # w*_{t_i}, the values the job started from


class Buffer:
    """Holds accepted arrivals until `capacity` of them are there; it only counts and holds."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: List[Arrival] = []

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """True once `capacity` arrivals are held."""
        return len(self._items) >= self.capacity

    @property
    def items(self) -> List[Arrival]:
        """The held arrivals, oldest first (a copy of the list)."""
        return list(self._items)

    def add(self, arrival: Arrival) -> None:
        """Hold one arrival; its base is dropped since aggregation needs only the delta."""
        self._items.append(replace(arrival, base=None))

    def drain(self) -> List[Arrival]:
        """Hand over every held arrival and empty the buffer."""
        items, self._items = self._items, []
        return items

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        """Tensors (`<i>/<name>`) and JSON-able meta of the held arrivals."""
        tensors: Tensors = {}
        meta: List[Dict[str, Any]] = []
        for i, a in enumerate(self._items):
            tensors.update({f"{i}/{name}": t for name, t in a.delta.items()})
            meta.append({"job_id": a.job_id, "client_id": a.client_id, "num_samples": a.num_samples,
                         "grad_variance": a.grad_variance, "staleness": a.staleness,
                         "names": list(a.delta)})  # keeps the order safetensors loses
        return tensors, {"capacity": self.capacity, "items": meta}

    def load_state(self, tensors: Tensors, meta: Dict[str, Any]) -> None:  # noqa: B027
        """Inverse of `state` (stateless strategies have nothing to load)."""
        self.capacity = int(meta["capacity"])
        self._items = [
            Arrival(job_id=m["job_id"], client_id=m["client_id"],
                    delta={n: tensors[f"{i}/{n}"] for n in m["names"]},
                    num_samples=int(m["num_samples"]), grad_variance=float(m["grad_variance"]),
                    staleness=int(m["staleness"]))
            for i, m in enumerate(meta["items"])
        ]


class Strategy(ABC):
    """Turns accepted updates into new versions; one subclass per file, registered by name."""

    name: ClassVar[str] = ""
    dense: ClassVar[bool] = False  # True: clients train the full model (a dense plan)
    synchronous: ClassVar[bool] = False  # True: whole rounds, dispatched only when none in flight
    needs_base: ClassVar[bool] = False  # True: ingest reads arrival.base (w*_{t_i})

    def __init__(self, cfg: StrategyConfig) -> None:
        self.cfg = cfg
        self.optimizer = ServerOptimizer(cfg.server_optimizer, cfg.server_lr,
                                         cfg.server_lr_halflife)

    @property
    def concurrency(self) -> int:
        """C: most jobs in flight at once (asynchronous strategies)."""
        return self.cfg.max_concurrency

    @abstractmethod
    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        """Take one accepted update; the new w* when the model advances, None while waiting."""

    def begin_round(self, size: int) -> None:  # noqa: B027  (optional hook)
        """A synchronous round of `size` jobs was dispatched (asynchronous strategies ignore it)."""

    def job_lost(self, current: Tensors) -> Optional[Tensors]:
        """A dispatched job will never arrive; the new w* if that closes a round, else None."""
        return None

    def pending(self) -> int:
        """Accepted updates held and not yet applied (0 for strategies that apply on arrival)."""
        return 0

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        """Everything needed to continue after a restart (tensors, JSON-able meta)."""
        return self._with_optimizer({}, {})

    def load_state(self, tensors: Tensors, meta: Dict[str, Any]) -> None:
        """Inverse of `state` (stateless strategies have only the optimiser's to load)."""
        self._load_optimizer(tensors, meta)

    def _with_optimizer(self, tensors: Tensors, meta: Dict[str, Any]
                        ) -> Tuple[Tensors, Dict[str, Any]]:
        """A subclass's state plus the server optimiser's (nothing added for the plain step)."""
        opt_tensors, opt_meta = self.optimizer.state()
        if not opt_meta:
            return tensors, meta
        return ({**tensors, **{f"opt/{k}": v for k, v in opt_tensors.items()}},
                {**meta, "optimizer": opt_meta})

    def _load_optimizer(self, tensors: Tensors, meta: Dict[str, Any]) -> None:
        self.optimizer.load_state({k[4:]: v for k, v in tensors.items() if k.startswith("opt/")},
                                  meta.get("optimizer", {}))
