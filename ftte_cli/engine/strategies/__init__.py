"""Server strategies behind one interface (base.Strategy); STRATEGIES maps names to classes."""

from __future__ import annotations

from typing import Dict, Type

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.strategies.base import Arrival, Buffer, Strategy
from ftte_cli.engine.strategies.fedasync import FedAsyncStrategy
from ftte_cli.engine.strategies.fedavg import FedAvgStrategy
from ftte_cli.engine.strategies.fedbuff import FedBuffStrategy
from ftte_cli.engine.strategies.ftte import FtteStrategy

STRATEGIES: Dict[str, Type[Strategy]] = {
    "ftte": FtteStrategy,
    "fedbuff": FedBuffStrategy,
    "fedasync": FedAsyncStrategy,
    "fedavg": FedAvgStrategy,
}


def make_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy a recipe names, configured (cfg.name is validated by the recipe loader)."""
    return STRATEGIES[cfg.name](cfg)


__all__ = ["Arrival", "Buffer", "STRATEGIES", "Strategy", "make_strategy"]
