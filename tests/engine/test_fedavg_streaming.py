"""FedAvg sums a round's updates as they arrive (the plain mean): the same bits as
weighted_mean over the held updates, one model's worth of memory, and a checkpoint mid-round."""

from __future__ import annotations

from dataclasses import replace
from typing import List

import torch

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.strategies import aggregate, make_strategy
from ftte_cli.engine.strategies.base import Arrival
from ftte_cli.engine.strategies.fedavg import FedAvgStrategy


def _arrivals(count: int) -> List[Arrival]:
    gen = torch.Generator().manual_seed(11)
    return [Arrival(f"j{i}", f"c{i}", {"a": torch.randn(7, generator=gen),
                                       "b": torch.randn(3, 2, generator=gen)},
                    int(torch.randint(1, 90, (1,), generator=gen)), 1.0, 0)
            for i in range(count)]


def _fedavg() -> FedAvgStrategy:
    strategy = make_strategy(StrategyConfig(name="fedavg"))
    assert isinstance(strategy, FedAvgStrategy)
    return strategy


def test_streamed_round_equals_weighted_mean_of_the_held_updates() -> None:
    arrivals = _arrivals(23)
    current = {"a": torch.zeros(7), "b": torch.ones(3, 2)}
    strategy = _fedavg()
    strategy.begin_round(len(arrivals))
    stepped = None
    for i, a in enumerate(arrivals):
        assert strategy.pending() == i  # counted, not held
        assert not strategy.buffer.items
        stepped = strategy.ingest(a, current)
    mean = aggregate.weighted_mean([(a.delta, float(a.num_samples)) for a in arrivals])
    assert stepped is not None and strategy.pending() == 0
    for name in current:
        assert torch.equal(stepped[name], current[name] + mean[name])


def test_robust_guard_still_holds_the_round() -> None:
    cfg = StrategyConfig(name="fedavg")
    cfg = replace(cfg, guard=replace(cfg.guard, aggregator="median"))
    strategy = make_strategy(cfg)
    strategy.begin_round(3)
    for a in _arrivals(2):
        strategy.ingest(a, {"a": torch.zeros(7), "b": torch.zeros(3, 2)})
    assert strategy.pending() == 2 and len(strategy.buffer.items) == 2


def test_checkpoint_mid_round_resumes_to_the_same_step() -> None:
    arrivals = _arrivals(9)
    current = {"a": torch.zeros(7), "b": torch.zeros(3, 2)}
    whole, resumed = _fedavg(), _fedavg()
    whole.begin_round(9)
    for a in arrivals[:4]:
        whole.ingest(a, current)
    tensors, meta = whole.state()
    assert tensors["sum/a"].dtype == torch.float64
    resumed.load_state(tensors, meta)
    assert resumed.pending() == 4
    for a in arrivals[4:]:
        expected, got = whole.ingest(a, current), resumed.ingest(a, current)
    assert expected is not None and got is not None
    for name in current:
        assert torch.equal(expected[name], got[name]) and got[name].dtype == torch.float32


def test_a_round_of_zero_samples_leaves_the_model() -> None:
    strategy = _fedavg()
    strategy.begin_round(2)
    empty = [replace(a, num_samples=0) for a in _arrivals(2)]
    current = {"a": torch.zeros(7), "b": torch.zeros(3, 2)}
    assert strategy.ingest(empty[0], current) is None
    assert strategy.ingest(empty[1], current) is None
    assert strategy.pending() == 0
