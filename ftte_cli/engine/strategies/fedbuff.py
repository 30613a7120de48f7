"""FedBuff (Nguyen et al. 2022): dense plan, buffer K, weight (n_i / n_mean) * s_age(tau_i)."""

from __future__ import annotations

from typing import List

from ftte_cli.engine.strategies import weights
from ftte_cli.engine.strategies.base import Arrival
from ftte_cli.engine.strategies.ftte import BufferedStrategy


class FedBuffStrategy(BufferedStrategy):
    """Age-only weighting: the recipe's s_age (default 1/sqrt(1 + tau)), no variance factor."""

    name = "fedbuff"
    dense = True

    def weights(self, items: List[Arrival]) -> List[float]:
        return weights.ftte_weights(
            [a.num_samples for a in items], [a.staleness for a in items],
            [a.grad_variance for a in items], weights.staleness_fn(self.cfg.staleness_weight),
            beta=0.0)
