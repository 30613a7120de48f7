"""FedAvg (McMahan et al. 2017), synchronous: a round of m jobs, averaged by n_i once all are in.

Jobs lost in a round (client gone, update rejected) shrink what the round waits for, so a round
always closes; a round where nothing arrived leaves the model as it was.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ftte_cli.engine.strategies.base import Arrival, Tensors
from ftte_cli.engine.strategies.ftte import BufferedStrategy


class FedAvgStrategy(BufferedStrategy):
    """w_{t+1} = w_t + eta_g * sum(n_i d_i) / sum(n_i); eta_g = 1 gives the n-weighted mean."""

    name = "fedavg"
    dense = True
    synchronous = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.normalizer = "weights"  # always the n-weighted mean; strategy.normalizer is not ours
        self._outstanding = 0  # jobs of the open round that may still arrive

    def weights(self, items: List[Arrival]) -> List[float]:
        return [float(a.num_samples) for a in items]

    def begin_round(self, size: int) -> None:
        self.buffer.drain()
        self.buffer.capacity = size
        self._outstanding = size

    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        self.buffer.add(arrival)
        self._outstanding -= 1
        return self._close_if_done(current)

    def job_lost(self, current: Tensors) -> Optional[Tensors]:
        self._outstanding -= 1
        return self._close_if_done(current)

    def _close_if_done(self, current: Tensors) -> Optional[Tensors]:
        if self._outstanding > 0:
            return None
        if sum(a.num_samples for a in self.buffer.items) <= 0:
            self.buffer.drain()  # nothing usable arrived: the round ends without a step
            return None
        return self._step(current)

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        tensors, meta = super().state()
        return tensors, {**meta, "outstanding": self._outstanding}

    def load_state(self, tensors: Tensors, meta: Dict[str, Any]) -> None:
        super().load_state(tensors, meta)
        self._outstanding = int(meta.get("outstanding", 0))
