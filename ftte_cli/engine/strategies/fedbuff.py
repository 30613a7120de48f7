"""FedBuff as published (Nguyen et al. 2022, Algorithm 1): dense, buffer K, staleness-scaled.

When K updates are buffered: w_{t+1} = w_t + eta_g * (1/K) * sum_i s(tau_i) delta_i, with
s(tau) = 1/sqrt(1 + tau) (`strategy.fedbuff_staleness`, its own setting, never FTTE's). Dividing
by K rather than by the sum of the weights is what lets staleness shrink the step.
`strategy.fedbuff_sample_weights` multiplies each weight by n_i / n_mean (off by default).
"""

from __future__ import annotations

from typing import List

from ftte_cli.engine.strategies import weights
from ftte_cli.engine.strategies.base import Arrival
from ftte_cli.engine.strategies.ftte import BufferedStrategy


class FedBuffStrategy(BufferedStrategy):
    """Weight s(tau_i) (times n_i / n_mean when asked), no variance factor, normaliser 1/K."""

    name = "fedbuff"
    dense = True
    default_normalizer = "buffer"

    def weights(self, items: List[Arrival]) -> List[float]:
        return weights.fedbuff_weights(
            [a.num_samples for a in items], [a.staleness for a in items],
            weights.staleness_fn(self.cfg.fedbuff_staleness), self.cfg.fedbuff_sample_weights)
