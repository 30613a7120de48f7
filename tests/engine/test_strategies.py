"""Aggregation math and strategies against hand-computed values (tensors only, no I/O)."""

from __future__ import annotations

import math

import pytest
import torch

from ftte_cli.config.recipe import StalenessConfig, StrategyConfig
from ftte_cli.engine.strategies import (
    STRATEGIES,
    Arrival,
    Buffer,
    aggregate,
    make_strategy,
    weights,
)


def test_staleness_forms_match_hand_values() -> None:
    assert weights.polynomial(0) == 1.0
    assert weights.polynomial(3, 0.5) == pytest.approx(0.5)  # 1/sqrt(4)
    assert weights.polynomial(7, 1.0) == pytest.approx(0.125)
    assert weights.constant(99) == 1.0
    assert weights.hinge(4, a=10, b=4) == 1.0
    assert weights.hinge(6, a=10, b=4) == pytest.approx(1 / 21)
    fn = weights.staleness_fn(StalenessConfig(kind="hinge", a=2.0, b=1.0))
    assert fn(3) == pytest.approx(1 / 5)


def test_ftte_weight_formula_against_hand_computed_values() -> None:
    # n = (10, 30) -> n_mean 20 -> shares (0.5, 1.5); tau = (0, 3) -> s_age (1, 0.5);
    # v = (1, 3) -> v_mean 2 -> s_var (1/(1+0.5), 1/(1+1.5)) = (2/3, 0.4)
    alphas = weights.ftte_weights([10, 30], [0, 3], [1.0, 3.0], weights.polynomial, beta=1.0)
    assert alphas == pytest.approx([0.5 * 1 * (2 / 3), 1.5 * 0.5 * 0.4])
    # beta = 0 gives FedBuff's (n_i/n_mean)/sqrt(1+tau)
    assert weights.ftte_weights([10, 30], [0, 3], [1.0, 3.0], weights.polynomial, beta=0.0) == \
        pytest.approx([0.5, 0.75])
    # zero variance everywhere: the factor is 1, not a division by zero
    assert weights.variance_factors([0.0, 0.0], 1.0) == [1.0, 1.0]


def test_weighted_mean_and_step_are_pure() -> None:
    d1 = {"w": torch.tensor([1.0, 2.0])}
    d2 = {"w": torch.tensor([3.0, 6.0])}
    mean = aggregate.weighted_mean([(d1, 1.0), (d2, 3.0)])
    assert torch.allclose(mean["w"], torch.tensor([2.5, 5.0]))
    cur = {"w": torch.tensor([10.0, 10.0])}
    new = aggregate.server_step(cur, mean, 0.5)
    assert torch.allclose(new["w"], torch.tensor([11.25, 12.5]))
    assert torch.equal(cur["w"], torch.tensor([10.0, 10.0]))
    with pytest.raises(ValueError):
        aggregate.weighted_mean([])
    with pytest.raises(ValueError):
        aggregate.weighted_mean([(d1, 0.0)])


def _arrival(i: int, delta: float, n: int = 10, tau: int = 0, v: float = 1.0,
             base: float = 0.0) -> Arrival:
    return Arrival(f"j{i}", f"c{i}", {"w": torch.full((2,), delta)}, n, v, tau,
                   {"w": torch.full((2,), base)})


def test_buffer_counts_holds_and_round_trips() -> None:
    buf = Buffer(2)
    buf.add(_arrival(1, 1.0))
    assert len(buf) == 1 and not buf.full and buf.items[0].base is None
    buf.add(_arrival(2, 2.0))
    assert buf.full
    tensors, meta = buf.state()
    other = Buffer(9)
    other.load_state(tensors, meta)
    assert other.capacity == 2 and [a.job_id for a in other.items] == ["j1", "j2"]
    assert len(buf.drain()) == 2 and len(buf) == 0


def test_ftte_steps_once_per_k_with_hand_computed_result() -> None:
    cfg = StrategyConfig(name="ftte", buffer_size=2, max_concurrency=4, server_lr=1.0)
    strat = make_strategy(cfg)
    cur = {"w": torch.zeros(2)}
    assert strat.ingest(_arrival(1, 1.0, n=10, tau=0, v=1.0), cur) is None
    assert strat.pending() == 1
    new = strat.ingest(_arrival(2, 4.0, n=30, tau=3, v=3.0), cur)
    assert new is not None and strat.pending() == 0
    a1, a2 = 0.5 * (2 / 3), 1.5 * 0.5 * 0.4
    expect = (a1 * 1.0 + a2 * 4.0) / (a1 + a2)
    assert torch.allclose(new["w"], torch.full((2,), expect))


def test_fedbuff_is_dense_age_only_and_divides_by_k_as_published() -> None:
    strat = STRATEGIES["fedbuff"](StrategyConfig(name="fedbuff", buffer_size=2))
    assert strat.dense and not strat.synchronous
    strat.ingest(_arrival(1, 1.0, n=10, tau=0, v=100.0), {"w": torch.zeros(2)})
    new = strat.ingest(_arrival(2, 4.0, n=30, tau=3, v=0.0), {"w": torch.zeros(2)})
    assert new is not None
    # Nguyen et al. 2022, Alg. 1: (1/K) sum s(tau_i) delta_i = (1 * 1 + 0.5 * 4) / 2; n_i and
    # v_i play no part (the old sum-of-weights normaliser gave (1 + 2) / 1.5 = 2.0)
    assert torch.allclose(new["w"], torch.full((2,), 1.5))


def test_fedbuff_staleness_shrinks_the_step_and_sample_weights_are_an_option() -> None:
    cur = {"w": torch.zeros(2)}
    strat = make_strategy(StrategyConfig(name="fedbuff", buffer_size=2, server_lr=0.5))
    strat.ingest(_arrival(1, 2.0, tau=3), cur)
    new = strat.ingest(_arrival(2, 2.0, tau=3), cur)
    # both 3 versions old: 0.5 * (0.5 * 2 + 0.5 * 2) / 2 = 0.5, half the fresh step
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 0.5))
    weighted = make_strategy(StrategyConfig(name="fedbuff", buffer_size=2,
                                            fedbuff_sample_weights=True))
    weighted.ingest(_arrival(1, 1.0, n=10, tau=0), cur)
    new = weighted.ingest(_arrival(2, 4.0, n=30, tau=3), cur)
    # shares (0.5, 1.5): (0.5 * 1 * 1 + 1.5 * 0.5 * 4) / 2
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 1.75))
    # FTTE's staleness setting is not FedBuff's
    other = make_strategy(StrategyConfig(name="fedbuff", buffer_size=2,
                                         staleness_weight=StalenessConfig(kind="constant")))
    other.ingest(_arrival(1, 1.0, tau=0), cur)
    new = other.ingest(_arrival(2, 4.0, tau=3), cur)
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 1.5))


def test_baseline_weight_formulas_against_hand_values() -> None:
    s = weights.polynomial
    assert weights.fedbuff_weights([10, 30], [0, 3], s) == pytest.approx([1.0, 0.5])
    assert weights.fedbuff_weights([10, 30], [0, 3], s, sample_weights=True) == \
        pytest.approx([0.5, 0.75])
    assert weights.fedasync_rate(0.6, 3, s) == pytest.approx(0.3)
    hinge = weights.staleness_fn(StalenessConfig(kind="hinge"))  # published a = 10, b = 4
    assert StalenessConfig(kind="hinge").exponent == 10.0
    assert StalenessConfig().exponent == 0.5
    assert weights.fedasync_rate(0.6, 4, hinge) == pytest.approx(0.6)
    assert weights.fedasync_rate(0.6, 6, hinge) == pytest.approx(0.6 / 21)


def test_buffer_mean_divides_by_k_not_by_the_weights() -> None:
    d1 = {"w": torch.tensor([1.0, 2.0])}
    d2 = {"w": torch.tensor([3.0, 6.0])}
    out = aggregate.buffer_mean([(d1, 1.0), (d2, 0.5)], 4)
    assert torch.allclose(out["w"], torch.tensor([(1 + 1.5) / 4, (2 + 3) / 4]))
    with pytest.raises(ValueError):
        aggregate.buffer_mean([], 2)
    with pytest.raises(ValueError):
        aggregate.buffer_mean([(d1, 1.0)], 0)


def test_ftte_normalizer_buffer_divides_by_k() -> None:
    cfg = StrategyConfig(name="ftte", buffer_size=2, normalizer="buffer")
    strat = make_strategy(cfg)
    cur = {"w": torch.zeros(2)}
    strat.ingest(_arrival(1, 1.0, n=10, tau=0, v=1.0), cur)
    new = strat.ingest(_arrival(2, 4.0, n=30, tau=3, v=3.0), cur)
    a1, a2 = 0.5 * (2 / 3), 1.5 * 0.5 * 0.4
    assert new is not None and torch.allclose(new["w"], torch.full((2,), (a1 + a2 * 4) / 2))


def test_fedavg_ignores_the_normalizer_option() -> None:
    strat = make_strategy(StrategyConfig(name="fedavg", normalizer="buffer"))
    cur = {"w": torch.zeros(2)}
    strat.begin_round(2)
    strat.ingest(_arrival(1, 1.0, n=10), cur)
    out = strat.ingest(_arrival(2, 4.0, n=30), cur)
    assert out is not None and torch.allclose(out["w"], torch.full((2,), (10 + 120) / 40))


def test_fedasync_mixes_toward_client_model() -> None:
    strat = make_strategy(StrategyConfig(name="fedasync", fedasync_alpha=0.6))
    cur = {"w": torch.full((2,), 2.0)}
    # tau 3: a = 0.6 / sqrt(4) = 0.3; x_new = base + delta = 1 + 3 = 4; x = 0.7*2 + 0.3*4
    new = strat.ingest(_arrival(1, 3.0, tau=3, base=1.0), cur)
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 0.7 * 2.0 + 0.3 * 4.0))
    # tau 0: a = 0.6
    new = strat.ingest(_arrival(2, 3.0, tau=0, base=1.0), cur)
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 0.4 * 2.0 + 0.6 * 4.0))


def test_fedasync_uses_its_own_staleness_never_ftte_s() -> None:
    cur = {"w": torch.full((2,), 2.0)}
    # FTTE's s_age constant must not reach FedAsync: tau 3 still gives a = 0.6 / sqrt(4)
    strat = make_strategy(StrategyConfig(name="fedasync",
                                         staleness_weight=StalenessConfig(kind="constant")))
    new = strat.ingest(_arrival(1, 3.0, tau=3, base=1.0), cur)
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 0.7 * 2.0 + 0.3 * 4.0))
    # hinge chosen: a = 10, b = 4 by default; tau 6 -> a_t = 0.6 / 21
    hinge = make_strategy(StrategyConfig(name="fedasync",
                                         fedasync_staleness=StalenessConfig(kind="hinge")))
    new = hinge.ingest(_arrival(1, 3.0, tau=6, base=1.0), cur)
    rate = 0.6 / 21
    assert new is not None and torch.allclose(new["w"],
                                              torch.full((2,), (1 - rate) * 2.0 + rate * 4.0))


def test_fedavg_equals_sample_weighted_mean_of_client_models() -> None:
    strat = make_strategy(StrategyConfig(name="fedavg"))
    assert strat.synchronous
    cur = {"w": torch.tensor([1.0, -1.0])}
    clients = [(torch.tensor([2.0, 0.0]), 5), (torch.tensor([4.0, 4.0]), 15),
               (torch.tensor([-1.0, 3.0]), 20)]
    strat.begin_round(len(clients))
    out = None
    for i, (model, n) in enumerate(clients):
        out = strat.ingest(Arrival(f"j{i}", f"c{i}", {"w": model - cur["w"]}, n, 0.0, 0), cur)
        assert (out is None) == (i < len(clients) - 1)
    expect = sum(m * n for m, n in clients) / sum(n for _, n in clients)
    assert out is not None and torch.allclose(out["w"], expect)


def test_fedavg_round_closes_when_jobs_are_lost() -> None:
    strat = make_strategy(StrategyConfig(name="fedavg"))
    cur = {"w": torch.zeros(2)}
    strat.begin_round(3)
    assert strat.ingest(_arrival(1, 2.0, n=1), cur) is None
    assert strat.job_lost(cur) is None
    out = strat.job_lost(cur)
    assert out is not None and torch.allclose(out["w"], torch.full((2,), 2.0))
    strat.begin_round(1)
    assert strat.job_lost(cur) is None  # nothing arrived: no step
    assert not math.isnan(float(cur["w"][0]))


def test_trimmed_mean_and_median_against_hand_values() -> None:
    # weights (1, 1, 2): u_i = 3 w_i / 4 * d_i = (0.75, 0.75, 1.5) * d_i
    d = [{"w": torch.tensor([4.0, 0.0])}, {"w": torch.tensor([8.0, 4.0])},
         {"w": torch.tensor([1e6, 2.0])}]
    pairs = list(zip(d, [1.0, 1.0, 2.0]))
    # u per coordinate: [3, 6, 1.5e6] and [0, 3, 3]
    tm = aggregate.trimmed_mean(pairs, 1 / 3)  # drops one at each end: the middle value
    assert torch.allclose(tm["w"], torch.tensor([6.0, 3.0]))
    med = aggregate.coordinate_median(pairs)
    assert torch.allclose(med["w"], torch.tensor([6.0, 3.0]))
    # trim 0 is exactly the weighted mean
    assert torch.allclose(aggregate.trimmed_mean(pairs, 0.0)["w"],
                          aggregate.weighted_mean(pairs)["w"])
    # even K: the median is the mean of the two middle values ([0.5, 1, 3, 100] -> 2)
    even = [({"w": torch.tensor([v])}, 1.0) for v in (100.0, 0.5, 3.0, 1.0)]
    assert aggregate.coordinate_median(even)["w"].item() == pytest.approx(2.0)
    # a cut that would drop everything keeps the middle
    assert aggregate.trimmed_mean(even[:2], 0.49)["w"].item() == pytest.approx(50.25)
    with pytest.raises(ValueError):
        aggregate.coordinate_median([])


def test_norm_scale_and_finite_helpers() -> None:
    t = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    assert aggregate.l2_norm(t) == pytest.approx(5.0)
    assert aggregate.l2_norm({"a": torch.full((4,), 1e30)}) == pytest.approx(2e30)  # no overflow
    assert torch.equal(aggregate.scale(t, 0.5)["b"], torch.tensor([2.0]))
    assert aggregate.all_finite(t)
    assert not aggregate.all_finite({"a": torch.tensor([1.0, float("inf")])})


def test_ftte_with_median_aggregator_ignores_one_outlier() -> None:
    from ftte_cli.config.recipe import GuardConfig

    cfg = StrategyConfig(buffer_size=3, max_concurrency=3, variance_beta=0.0,
                         staleness_weight=StalenessConfig(kind="constant"),
                         guard=GuardConfig(aggregator="median"))
    s = make_strategy(cfg)
    cur = {"w": torch.zeros(2)}
    assert s.ingest(_arrival(1, 0.1), cur) is None
    assert s.ingest(_arrival(2, 1e6), cur) is None
    new = s.ingest(_arrival(3, 0.2), cur)
    assert new is not None and torch.allclose(new["w"], torch.full((2,), 0.2))
