"""FedAvg (McMahan et al. 2017), synchronous: a round of m jobs, averaged by n_i once all are in.

Jobs lost in a round (client gone, update rejected) shrink what the round waits for, so a round
always closes; a round where nothing arrived leaves the model as it was.

With the plain mean (the default guard) a round's updates are summed as they arrive, in float64
and in arrival order, instead of held: memory stays one model's worth however many clients a
round has (500 held deltas of a 3 MB model were 1.4 GiB), and the result is the same bits as
`aggregate.weighted_mean` of the held updates. The robust guards need every update at once and
hold them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from ftte_cli.engine.strategies.base import Arrival, Tensors
from ftte_cli.engine.strategies.ftte import BufferedStrategy

_SUM = "sum/"  # checkpoint tensor prefix of the running sum


class FedAvgStrategy(BufferedStrategy):
    """w_{t+1} = w_t + eta_g * sum(n_i d_i) / sum(n_i); eta_g = 1 gives the n-weighted mean."""

    name = "fedavg"
    dense = True
    synchronous = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.normalizer = "weights"  # always the n-weighted mean; strategy.normalizer is not ours
        self._outstanding = 0  # jobs of the open round that may still arrive
        self._streaming = cfg.guard.aggregator == "mean"
        self._sum: Dict[str, torch.Tensor] = {}  # float64 sum of n_i * d_i over the round
        self._weight = 0.0  # sum of n_i, added in the same order as weighted_mean's
        self._held = 0

    def weights(self, items: List[Arrival]) -> List[float]:
        return [float(a.num_samples) for a in items]

    def begin_round(self, size: int) -> None:
        self.buffer.drain()
        self._reset_sum()
        self.buffer.capacity = size
        self._outstanding = size

    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        if self._streaming:
            self._accumulate(arrival)
        else:
            self.buffer.add(arrival)
        self._outstanding -= 1
        return self._close_if_done(current)

    def job_lost(self, current: Tensors) -> Optional[Tensors]:
        self._outstanding -= 1
        return self._close_if_done(current)

    def pending(self) -> int:
        return self._held if self._streaming else len(self.buffer)

    @torch.no_grad()
    def _accumulate(self, arrival: Arrival) -> None:
        w = float(arrival.num_samples)
        for name, delta in arrival.delta.items():
            if name not in self._sum:
                self._sum[name] = torch.zeros_like(delta, dtype=torch.float64)
            self._sum[name].add_(delta, alpha=w)  # as weighted_mean: no float64 copy of delta
        self._weight += w
        self._held += 1

    def _reset_sum(self) -> None:
        self._sum, self._weight, self._held = {}, 0.0, 0

    def _close_if_done(self, current: Tensors) -> Optional[Tensors]:
        if self._outstanding > 0:
            return None
        if not self._streaming:
            if sum(a.num_samples for a in self.buffer.items) <= 0:
                self.buffer.drain()  # nothing usable arrived: the round ends without a step
                return None
            return self._step(current)
        total, sums = self._weight, self._sum
        self._reset_sum()
        if total <= 0:
            return None  # nothing usable arrived: the round ends without a step
        # a delta has its tensor's dtype in w*, so the mean goes back to w*'s dtype
        return self.optimizer.step(current, {n: (s / total).to(current[n].dtype)
                                             for n, s in sums.items()})

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        tensors, meta = super().state()
        # copies: the sums keep growing in place after this snapshot
        tensors = {**tensors, **{_SUM + n: s.clone() for n, s in self._sum.items()}}
        return tensors, {**meta, "outstanding": self._outstanding, "sum_weight": self._weight,
                         "sum_held": self._held}

    def load_state(self, tensors: Tensors, meta: Dict[str, Any]) -> None:
        super().load_state({k: v for k, v in tensors.items() if not k.startswith(_SUM)}, meta)
        self._outstanding = int(meta.get("outstanding", 0))
        self._sum = {k[len(_SUM):]: v for k, v in tensors.items() if k.startswith(_SUM)}
        self._weight = float(meta.get("sum_weight", 0.0))
        self._held = int(meta.get("sum_held", 0))
