"""The aggregator tier's arithmetic (no Ray): partial weighted sums over each aggregator's
updates, with the buffer's weights, add up to one server's weighted mean. The tier itself, on
a local Ray, is tested in tests/test_tier_ray.py."""

from __future__ import annotations

import torch

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.strategies import aggregate, weights
from ftte_cli.server.tier import combine, partial_sum


def test_partial_sums_with_buffer_weights_equal_one_weighted_mean() -> None:
    """The next stage (docs/SCALING.md): aggregators send sum(alpha_i delta_i) over their own
    updates, with alphas computed at the coordinator over the whole buffer (n_mean, v_mean)."""
    gen = torch.Generator().manual_seed(5)
    k, shapes = 10, {"w": (64, 32, 3), "b": (64,)}
    deltas = {f"j{i}": {n: torch.randn(s, generator=gen) * 10 ** (i % 3 - 3)
                        for n, s in shapes.items()} for i in range(k)}
    n = [int(x) for x in torch.randint(10, 200, (k,), generator=gen)]
    tau = [int(x) for x in torch.randint(0, 6, (k,), generator=gen)]
    v = [float(x) for x in torch.rand(k, generator=gen) * 5]
    s_age = weights.staleness_fn(StrategyConfig().staleness_weight)
    alphas = weights.ftte_weights(n, tau, v, s_age, beta=1.0)
    ids = list(deltas)
    single = aggregate.weighted_mean([(deltas[j], a) for j, a in zip(ids, alphas)])
    mine = {j: a for j, a in zip(ids, alphas) if int(j[1:]) % 3 == 0}  # aggregator A's share
    theirs = {j: a for j, a in zip(ids, alphas) if j not in mine}  # aggregator B's
    tier = combine([partial_sum(deltas, mine), partial_sum(deltas, theirs)], single)
    for name in shapes:  # float64 sums in another order, rounded to float32: the same bits
        assert torch.equal(tier[name], single[name]), name
