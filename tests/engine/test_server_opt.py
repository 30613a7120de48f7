"""The server optimiser (FedAvgM, FedAdam) against hand-computed numbers, and its state."""

from __future__ import annotations

import math

import pytest
import torch

from ftte_cli.config.recipe import ServerOptimizerConfig, StrategyConfig
from ftte_cli.engine.strategies import Arrival, make_strategy
from ftte_cli.engine.strategies.server_opt import ServerOptimizer, adam_step, momentum_step


def _w(*values: float) -> dict:
    return {"w": torch.tensor(values, dtype=torch.float64)}


def test_momentum_step_against_hand_values() -> None:
    w, m = momentum_step(_w(1.0), _w(2.0), None, lr=0.5, momentum=0.9)
    assert float(w["w"][0]) == pytest.approx(2.0) and float(m["w"][0]) == pytest.approx(2.0)
    w, m = momentum_step(w, _w(1.0), m, lr=0.5, momentum=0.9)
    # m = 0.9 * 2 + 1 = 2.8; w = 2 + 0.5 * 2.8
    assert float(m["w"][0]) == pytest.approx(2.8) and float(w["w"][0]) == pytest.approx(3.4)


def test_adam_step_against_hand_values() -> None:
    w, m, v = adam_step(_w(0.0), _w(2.0), None, None, lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    # m = 0.1 * 2 = 0.2; v = 0.01 * 4 = 0.04; w = 0.01 * 0.2 / (0.2 + 0.001)
    assert float(m["w"][0]) == pytest.approx(0.2) and float(v["w"][0]) == pytest.approx(0.04)
    assert float(w["w"][0]) == pytest.approx(0.002 / 0.201)
    w2, m, v = adam_step(w, _w(-1.0), m, v, lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    assert float(m["w"][0]) == pytest.approx(0.08) and float(v["w"][0]) == pytest.approx(0.0496)
    expect = 0.002 / 0.201 + 0.01 * 0.08 / (math.sqrt(0.0496) + 1e-3)
    assert float(w2["w"][0]) == pytest.approx(expect)


def test_defaults_are_reddi_et_al_and_the_plain_step_is_eta_g() -> None:
    cfg = ServerOptimizerConfig(kind="adam")
    assert (cfg.beta1, cfg.beta2, cfg.tau) == (0.9, 0.99, 1e-3)
    assert cfg.step_size(1.0) == 0.01 and ServerOptimizerConfig().step_size(0.7) == 0.7
    plain = ServerOptimizer(ServerOptimizerConfig(), server_lr=0.5)
    out = plain.step(_w(1.0, 1.0), _w(2.0, -2.0))
    assert torch.equal(out["w"], torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert plain.state() == ({}, {})  # nothing added to checkpoints


def _arr(i: int, delta: float) -> Arrival:
    return Arrival(f"j{i}", f"c{i}", {"w": torch.full((2,), delta)}, 10, 1.0, 0,
                   {"w": torch.zeros(2)})


@pytest.mark.parametrize("name", ["ftte", "fedbuff", "fedasync", "fedavg"])
def test_every_strategy_steps_through_momentum(name: str) -> None:
    cfg = StrategyConfig(name=name, buffer_size=1, max_concurrency=2,
                         server_optimizer=ServerOptimizerConfig(kind="momentum", momentum=0.5))
    strat = make_strategy(cfg)
    cur = {"w": torch.zeros(2)}
    for i, expect in ((1, 1.0), (2, 2.5)):  # deltas 1, 1: m = 1 then 1.5; w = 1 then 2.5
        strat.begin_round(1)
        base = cur
        arrival = Arrival(f"j{i}", "c", {"w": torch.ones(2)}, 10, 1.0, 0, base)
        out = strat.ingest(arrival, cur)
        assert out is not None
        if name == "fedasync":  # pseudo-gradient a_t (x_new - x) = 0.6 * 1
            expect = 0.6 * expect
        assert torch.allclose(out["w"], torch.full((2,), expect)), (name, out)
        cur = out


def test_optimizer_state_round_trips_bit_for_bit() -> None:
    cfg = StrategyConfig(name="ftte", buffer_size=1, max_concurrency=2,
                         server_optimizer=ServerOptimizerConfig(kind="adam"))
    a, cur = make_strategy(cfg), {"w": torch.zeros(2)}
    cur = a.ingest(_arr(1, 0.3), cur) or cur
    tensors, meta = a.state()
    assert set(tensors) == {"opt/m/w", "opt/v/w"} and meta["optimizer"]["steps"] == 1
    b = make_strategy(cfg)
    b.load_state(tensors, meta)
    out_a, out_b = a.ingest(_arr(2, -0.1), cur), b.ingest(_arr(2, -0.1), cur)
    assert out_a is not None and out_b is not None and torch.equal(out_a["w"], out_b["w"])
    wrong = make_strategy(StrategyConfig(name="ftte", buffer_size=1, max_concurrency=2))
    with pytest.raises(ValueError, match="server optimiser"):
        wrong.load_state(tensors, meta)
