"""The server step's half-life decay (strategy.server_lr_halflife) against hand-computed numbers."""

from __future__ import annotations

import math
from typing import Dict

import pytest
import torch

from ftte_cli.config.recipe import ServerOptimizerConfig, StrategyConfig
from ftte_cli.engine.strategies import Arrival, make_strategy
from ftte_cli.engine.strategies.server_opt import ServerOptimizer, decayed_lr
from ftte_cli.errors import ConfigError

Tensors = Dict[str, torch.Tensor]


def _w(value: float) -> Tensors:
    return {"w": torch.tensor([value], dtype=torch.float64)}


def test_decayed_lr_halves_every_halflife() -> None:
    assert decayed_lr(1.0, 0, 100.0) == 1.0  # the first step is the full step
    assert decayed_lr(1.0, 100, 100.0) == pytest.approx(0.5)
    assert decayed_lr(0.8, 50, 100.0) == pytest.approx(0.8 / math.sqrt(2))
    assert decayed_lr(2.0, 300, 100.0) == pytest.approx(0.25)
    assert decayed_lr(0.7, 10**6, 0.0) == 0.7  # half-life 0: constant


def test_plain_step_with_a_halflife_of_two() -> None:
    opt = ServerOptimizer(ServerOptimizerConfig(), server_lr=1.0, halflife=2.0)
    w = _w(0.0)
    for _ in range(3):  # steps of 1, 1/sqrt(2), 1/2 times d = 1
        w = opt.step(w, _w(1.0))
    assert float(w["w"][0]) == pytest.approx(1.0 + 2 ** -0.5 + 0.5)
    assert not opt.plain  # it must checkpoint its step count


def test_momentum_scales_the_buffer_step_by_the_decayed_lr() -> None:
    cfg = ServerOptimizerConfig(kind="momentum", lr=0.5, momentum=0.9)
    opt = ServerOptimizer(cfg, server_lr=1.0, halflife=1.0)
    w = opt.step(_w(0.0), _w(2.0))  # m = 2, w = 0.5 * 2 = 1
    w = opt.step(w, _w(1.0))  # m = 0.9 * 2 + 1 = 2.8, lr = 0.25: w = 1 + 0.7
    assert float(w["w"][0]) == pytest.approx(1.7)


def test_the_step_count_survives_a_checkpoint() -> None:
    a = ServerOptimizer(ServerOptimizerConfig(), server_lr=1.0, halflife=1.0)
    for _ in range(3):
        a.step(_w(0.0), _w(1.0))
    tensors, meta = a.state()
    assert tensors == {} and meta["steps"] == 3
    b = ServerOptimizer(ServerOptimizerConfig(), server_lr=1.0, halflife=1.0)
    b.load_state(tensors, meta)
    # the fourth step of both is 0.5^3 = 0.125
    assert torch.equal(a.step(_w(0.0), _w(1.0))["w"], b.step(_w(0.0), _w(1.0))["w"])
    assert float(b.step(_w(0.0), _w(1.0))["w"][0]) == pytest.approx(0.0625)


def _arrival(i: int) -> Arrival:
    return Arrival(f"j{i}", f"c{i}", {"w": torch.ones(1, dtype=torch.float64)}, 10, 1.0, 0,
                   {"w": torch.zeros(1, dtype=torch.float64)})


def _two_versions(name: str, halflife: float) -> float:
    cfg = StrategyConfig(name=name, buffer_size=1, max_concurrency=2, server_lr_halflife=halflife)
    strategy = make_strategy(cfg)
    cur = {"w": torch.zeros(1, dtype=torch.float64)}
    for i in range(2):
        strategy.begin_round(1)
        out = strategy.ingest(_arrival(i), cur)
        assert out is not None
        cur = out
    return float(cur["w"][0])


@pytest.mark.parametrize("name", ["ftte", "fedbuff", "fedasync", "fedavg"])
def test_every_strategy_keeps_the_plain_constant_step_by_default(name: str) -> None:
    strategy = make_strategy(StrategyConfig(name=name, buffer_size=1, max_concurrency=2))
    assert strategy.optimizer.halflife == 0.0 and strategy.optimizer.plain


@pytest.mark.parametrize("name", ["ftte", "fedbuff"])
def test_a_halflife_decays_the_buffered_step(name: str) -> None:
    assert _two_versions(name, 0.0) == pytest.approx(2.0)  # constant: 1 + 1
    assert _two_versions(name, 1.0) == pytest.approx(1.5)  # 1 + 0.5


def test_a_negative_halflife_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.server_lr_halflife"):
        StrategyConfig(server_lr_halflife=-1.0).validate("strategy")
