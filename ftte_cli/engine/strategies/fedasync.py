"""FedAsync (Xie et al. 2019): each update applied on arrival, x = (1 - a_t) x + a_t x_new.

a_t = alpha * s(tau) with alpha = `strategy.fedasync_alpha` (0.6) and s its own staleness
setting `strategy.fedasync_staleness` (polynomial a = 0.5 by default; hinge a = 10, b = 4 when
chosen), never FTTE's. With a server optimiser other than none, the pseudo-gradient
a_t (x_new - x) goes through it instead of being applied as it is.
"""

from __future__ import annotations

from typing import Optional

from ftte_cli.engine.strategies import aggregate, weights
from ftte_cli.engine.strategies.base import Arrival, Strategy, Tensors


class FedAsyncStrategy(Strategy):
    """a_t = fedasync_alpha * s(tau) and x_new = x_{t_i} + delta_i; one version per arrival."""

    name = "fedasync"
    dense = True

    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        if arrival.base is None:
            raise ValueError(f"fedasync: job {arrival.job_id} arrived without its base model")
        rate = weights.fedasync_rate(self.cfg.fedasync_alpha, arrival.staleness,
                                     weights.staleness_fn(self.cfg.fedasync_staleness))
        mixed = aggregate.mix(current, aggregate.add(arrival.base, arrival.delta), rate)
        if self.optimizer.plain:  # the published rule, exactly
            return mixed
        return self.optimizer.step(current, {n: mixed[n] - current[n] for n in current})
