"""The aggregator tier on a local Ray: 2 aggregators feeding one coordinator equal one server
applying the same updates in the same order, and killing an aggregator loses no update."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from tinymodel import Tiny

from ftte_cli.client import wire
from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig
from ftte_cli.engine.plan import dense_plan
from ftte_cli.engine.serialize import tensors_and_metadata_from_bytes, tensors_to_bytes
from ftte_cli.engine.strategies import aggregate, make_strategy, weights

ray = pytest.importorskip("ray")
from ftte_cli.server.tier import (  # noqa: E402
    CoordinatorActor,
    Verdict,
    combine,
    partial_sum,
    start_aggregator,
    start_tier,
)

DEVICES = [f"d{i}" for i in range(6)]
JobTuple = Optional[Tuple[str, int, int, bytes]]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _coordinator() -> Coordinator:
    torch.manual_seed(0)
    model = Tiny()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfg = StrategyConfig(name="ftte", buffer_size=3, max_concurrency=4)
    sizes = {d: 10 + 7 * i for i, d in enumerate(DEVICES)}  # n_i differ: the weights show it
    return Coordinator(params, dense_plan(model, "tiny"), make_strategy(cfg), sizes,
                       CoordinatorConfig(strategy=cfg), seed=3)


def _body(job: Tuple[str, int, int, bytes], device: str) -> bytes:
    """A deterministic update for a job: delta and variance depend on the job id only."""
    job_id, version, _, subset = job
    shapes = tensors_and_metadata_from_bytes(subset, 1 << 30)[0]
    gen = torch.Generator().manual_seed(int(job_id[1:]))
    # sorted: a decoded dict's order is not fixed, and the draws must not depend on it
    delta = {k: torch.randn(shapes[k].shape, generator=gen) * 1e-2 for k in sorted(shapes)}
    variance = float(torch.rand((), generator=gen)) * 3
    return wire.encode_update(wire.UpdateMessage(job_id, version, 10 + DEVICES.index(device),
                                                 variance, None, delta))


class _Local:
    """The single-server reference: the same coordinator glue, called directly in order."""

    def __init__(self) -> None:
        self.actor = CoordinatorActor(_coordinator())

    def register(self, device: str) -> int:
        return self.actor.register(device)

    def task(self, device: str) -> JobTuple:
        return self.actor.take_job(device)

    def update(self, device: str, body: bytes) -> Verdict:
        msg = wire.decode_update(body, 1 << 30)
        return self.actor.submit(device, msg.job_id, msg.version, tensors_to_bytes(msg.delta),
                                 msg.num_samples, msg.grad_variance)


def _rounds(register: Callable[[str], Any], task: Callable[[str], JobTuple],
            update: Callable[[str, bytes], Verdict], rounds: int) -> List[Tuple[str, Verdict]]:
    """Every device in a fixed order: fetch its job if any, send its update."""
    verdicts = []
    for _ in range(rounds):
        for d in DEVICES:
            job = task(d)
            if job is not None:
                verdicts.append((d, update(d, _body(job, d))))
    return verdicts


def _tier_calls(agg_of: Dict[str, Any]) -> Tuple[Callable[..., Any], ...]:
    return (lambda d: ray.get(agg_of[d].register.remote(d)),
            lambda d: ray.get(agg_of[d].task.remote(d)),
            lambda d, body: ray.get(agg_of[d].update.remote(d, body)))


@pytest.mark.timeout(120)
def test_two_aggregators_equal_one_server_on_the_same_updates_in_order(local_ray: None) -> None:
    local = _Local()
    for d in DEVICES:
        local.register(d)
    expected = _rounds(local.register, local.task, local.update, rounds=5)

    tier = start_tier(_coordinator(), aggregators=2)
    agg_of = {d: tier.aggregator_for(d) for d in DEVICES}
    assert len({id(a) for a in agg_of.values()}) == 2  # both aggregators serve devices
    register, task, update = _tier_calls(agg_of)
    for d in DEVICES:
        register(d)
    got = _rounds(register, task, update, rounds=5)

    assert got == expected and sum(v.accepted for _, v in got) >= 15
    remote = ray.get(tier.coordinator.summary.remote())
    ref = local.actor.summary()
    assert remote["version"] == ref["version"] >= 5
    assert remote["metrics"] == ref["metrics"]  # staleness, bytes, accepted, dropped
    a = tensors_and_metadata_from_bytes(remote["subset"], 1 << 30)[0]
    b = tensors_and_metadata_from_bytes(ref["subset"], 1 << 30)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # to the bit
    for actor in [tier.coordinator, *tier.aggregators]:
        ray.kill(actor)


@pytest.mark.timeout(120)
def test_killing_an_aggregator_loses_no_update(local_ray: None) -> None:
    tier = start_tier(_coordinator(), aggregators=2)
    agg_of = {d: tier.aggregator_for(d) for d in DEVICES}
    register, task, update = _tier_calls(agg_of)
    for d in DEVICES:
        register(d)
    told = _rounds(register, task, update, rounds=2)
    victim = tier.aggregators[0]
    moved = [d for d in DEVICES if agg_of[d] is victim]
    held = [d for d in moved if task(d) is not None]  # jobs taken, never sent back
    ray.kill(victim)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.task.remote(moved[0]))
    # its devices re-register elsewhere: half at the survivor, half at a restarted aggregator
    bound = 1 << 20
    restarted = start_aggregator(ray, tier.coordinator, bound)
    for i, d in enumerate(moved):
        agg_of[d] = tier.aggregators[1] if i % 2 else restarted
        register(d)
    after = _rounds(register, task, update, rounds=3)

    metrics = ray.get(tier.coordinator.summary.remote())["metrics"]
    # every update a device was told was accepted is in the coordinator's count, and no other
    assert metrics["accepted"] == sum(v.accepted for _, v in told + after)
    assert held and metrics["jobs_lost"] >= len(held)  # the jobs the dead one's devices held
    # the moved devices train on at their new aggregators
    assert {d for d, v in after if v.accepted} & set(moved)
    for actor in [tier.coordinator, tier.aggregators[1], restarted]:
        ray.kill(actor)


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
