"""FTTE: sparse plan, buffered semi-asynchronous aggregation weighted by staleness and variance."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.strategies import aggregate, weights
from ftte_cli.engine.strategies.base import Arrival, Buffer, Strategy, Tensors


class BufferedStrategy(Strategy):
    """Holds K updates, then steps w*_{t+1} = w*_t + eta_g * d with the pseudo-gradient
    d = sum(a_i d_i) / sum(a_i) (normalizer `weights`) or sum(a_i d_i) / K (`buffer`), through
    the server optimiser."""

    default_normalizer = "weights"

    def __init__(self, cfg: StrategyConfig) -> None:
        super().__init__(cfg)
        self.buffer = Buffer(cfg.buffer_size)
        self.normalizer = cfg.normalizer or self.default_normalizer

    def weights(self, items: List[Arrival]) -> List[float]:
        """alpha_i for the buffered updates (overridden per strategy)."""
        raise NotImplementedError

    def ingest(self, arrival: Arrival, current: Tensors) -> Optional[Tensors]:
        self.buffer.add(arrival)
        if not self.buffer.full:
            return None
        return self._step(current)

    def _step(self, current: Tensors) -> Optional[Tensors]:
        items = self.buffer.drain()
        if not items:
            return None
        pairs = [(a.delta, w) for a, w in zip(items, self.weights(items))]
        if self.normalizer == "buffer":  # K is the capacity: a round cut short still divides by K
            grad = aggregate.buffer_mean(pairs, max(self.buffer.capacity, len(items)))
        else:
            grad = aggregate.weighted_mean(pairs)
        return self.optimizer.step(current, grad)

    def pending(self) -> int:
        return len(self.buffer)

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        return self._with_optimizer(*self.buffer.state())

    def load_state(self, tensors: Tensors, meta: Dict[str, Any]) -> None:
        self.buffer.load_state(tensors, meta)
        self._load_optimizer(tensors, meta)


class FtteStrategy(BufferedStrategy):
    """alpha_i = (n_i / n_mean) * s_age(tau_i) * s_var(v_i) (FTTE.md section 4); normalised by
    sum(alpha_i) unless `strategy.normalizer: buffer`."""

    name = "ftte"
    dense = False

    def weights(self, items: List[Arrival]) -> List[float]:
        return weights.ftte_weights(
            [a.num_samples for a in items], [a.staleness for a in items],
            [a.grad_variance for a in items], weights.staleness_fn(self.cfg.staleness_weight),
            self.cfg.variance_beta)
