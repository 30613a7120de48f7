"""FedAsync (Xie et al. 2019): each update applied on arrival, x = (1 - a_t) x + a_t x_new."""

from __future__ import annotations

from typing import Optional

from ftte_cli.engine.strategies import aggregate, weights
from ftte_cli.engine.strategies.base import Arrival, Strategy, Tensors


class FedAsyncStrategy(Strategy):
    """a_t = fedasync_alpha * s(tau) and x_new = x_{t_i} + delta_i; one version per arrival."""

    name = "fedasync"
    dense = True
    needs_base = True

    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        if arrival.base is None:
            raise ValueError(f"fedasync: job {arrival.job_id} arrived without its base model")
        rate = self.cfg.fedasync_alpha * weights.staleness_fn(self.cfg.staleness_weight)(
            arrival.staleness)
        return aggregate.mix(current, aggregate.add(arrival.base, arrival.delta), rate)
