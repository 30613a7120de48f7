"""The coordinator's hot-path shortcuts give what the plain computations gave, to the bit:
the idle-client index, the one-pass finiteness check, aggregation without float64 copies, and
evaluation with the frozen prefix kept (issue 14). Tensors only, time passed in."""

from __future__ import annotations

import random
from typing import Dict, List

import torch
from torch import Tensor

from ftte_cli.config.recipe import ModelConfig, StrategyConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.coordinator import (
    ClientState,
    Coordinator,
    CoordinatorConfig,
    Job,
    RejectReason,
    Update,
)
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.evaluation import PlanEvaluator
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FROZEN, FULL, MaskKind, ParamMask, build_plan, dense_plan
from ftte_cli.engine.strategies import aggregate, make_strategy
from ftte_cli.engine.train import evaluate

Tensors = Dict[str, Tensor]


def _har(width: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig("har_cnn", width), (9, 128), 6)


def _sparse_plan(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    """features 0-2 frozen, a quarter of block 3's input channels, its norm and the head."""
    masks = {n: FROZEN for n, _ in model.named_parameters()}
    c_in = model.features[3].conv.weight.shape[1]
    masks.update({"features.3.conv.weight": ParamMask(MaskKind.channels,
                                                      tuple(range(c_in // 4))),
                  "features.3.norm.weight": FULL, "features.3.norm.bias": FULL,
                  "head.weight": FULL, "head.bias": FULL})
    return build_plan(model, masks, model_name="har_cnn", method="contribution")


def _test_set(n: int = 150) -> Dataset:
    gen = torch.Generator().manual_seed(3)
    return Dataset(torch.randn(n, 9, 128, generator=gen), torch.randint(0, 6, (n,), generator=gen),
                   None)


def test_plan_evaluator_equals_evaluate_to_the_bit_at_every_version() -> None:
    model = _har()
    plan = _sparse_plan(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    data = _test_set()  # 150: the last batch is short
    ev = PlanEvaluator(model, plan, data)
    assert ev.first == 3
    subset = sparse.extract(params, plan)
    for version in range(4):
        subset = {k: v + 0.05 * (version + 1) * torch.sin(v) for k, v in subset.items()}
        full = sparse.insert(params, plan, subset)  # frozen tensors: new views, same storage
        assert ev(full) == evaluate(model, full, data)
    assert ev._key is not None  # the prefix really was kept between versions
    key = ev._key
    # another frozen prefix (a restored checkpoint, say): recomputed, still equal
    other = {k: (v * 1.5 if k.startswith("features.0") else v) for k, v in full.items()}
    assert ev(other) == evaluate(model, other, data)
    assert ev._key != key


def test_plan_evaluator_of_a_plan_without_frozen_prefix_is_evaluate() -> None:
    model = _har()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    ev = PlanEvaluator(model, dense_plan(model, "har_cnn"), _test_set(70))
    assert ev.first == 0
    assert ev(params) == evaluate(model, params, _test_set(70))


def test_weighted_means_equal_a_float64_copy_of_each_delta_to_the_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        pairs = [({"w": torch.randn(257, generator=gen) * 10.0 ** (trial % 9 - 4),
                   "b": torch.randn(3, 5, generator=gen)}, float(torch.rand(1, generator=gen)))
                 for _ in range(10)]
        total = sum(w for _, w in pairs)
        got = aggregate.weighted_mean(pairs)
        for name in ("w", "b"):
            acc = torch.zeros(pairs[0][0][name].shape, dtype=torch.float64)
            for delta, w in pairs:
                acc.add_(delta[name].to(torch.float64), alpha=w)
            assert torch.equal(got[name], (acc / total).to(torch.float32))
            assert torch.equal(aggregate.buffer_mean(pairs, 12)[name],
                               (acc / 12).to(torch.float32))


def _coord(clients: int = 30, c: int = 5) -> Coordinator:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = build_plan(model, {"0.weight": FULL, "0.bias": FROZEN, "1.weight": FULL,
                              "1.bias": FULL})
    cfg = StrategyConfig(name="ftte", buffer_size=3, max_concurrency=c)
    return Coordinator(params, plan, make_strategy(cfg), {f"c{i:02d}": 10 for i in range(clients)},
                       CoordinatorConfig(strategy=cfg), seed=11)


def _expected_draw(coord: Coordinator) -> List[str]:
    """What next_jobs drew before the index: a sample of a scan of every client's state, in
    registration order, from the coordinator's own RNG (copied, so it is not advanced)."""
    idle = [cid for cid, info in coord.client_info().items() if info["state"] == "idle"]
    rng = random.Random()
    rng.setstate(coord._rng.getstate())
    slots = coord.strategy.concurrency - coord.in_flight
    return rng.sample(idle, min(slots, len(idle))) if slots > 0 else []


def _update(job: Job, value: float = 0.01) -> Update:
    return Update(job.job_id, job.client_id, job.version,
                  {k: torch.full_like(v, value) for k, v in job.subset.items()}, 10, 1.0)


def test_idle_index_draws_what_a_scan_of_every_client_drew() -> None:
    coord = _coord()
    events = random.Random(5)
    flight: List[Job] = []
    draws = 0
    for step in range(300):
        expected = _expected_draw(coord)
        jobs = coord.next_jobs(float(step))
        assert [j.client_id for j in jobs] == expected
        draws += len(jobs)
        flight.extend(jobs)
        roll = events.random()
        if roll < 0.6 and flight:
            coord.submit(_update(flight.pop(events.randrange(len(flight)))), float(step))
        elif roll < 0.8:
            cid = f"c{events.randrange(30):02d}"
            coord.client_offline(cid, float(step))
            flight = [j for j in flight if j.client_id != cid]
        else:
            coord.client_online(f"c{events.randrange(30):02d}")
    assert draws > 100 and coord.metrics.jobs_lost > 0  # the walk really exercised it
    # a restored checkpoint rebuilds the index from the saved states
    tensors, meta = coord.state()
    back = Coordinator.from_state(tensors, meta, coord.plan, make_strategy(
        coord.config.strategy), coord.config)
    assert len(back._idle_set) == sum(
        back.client_state(c) is ClientState.idle for c in back.client_info())
    assert [j.client_id for j in back.next_jobs(400.0)] == \
        [j.client_id for j in coord.next_jobs(400.0)]


def test_one_pass_finiteness_check_rejects_nan_and_inf_and_only_them() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        coord = _coord()
        job = coord.next_jobs(0.0)[0]
        delta = {k: torch.zeros_like(v) for k, v in job.subset.items()}
        next(iter(delta.values())).view(-1)[1] = bad
        res = coord.submit(Update(job.job_id, job.client_id, 0, delta, 10, 1.0), 1.0)
        assert res.reason is RejectReason.non_finite
    coord = _coord()
    job = coord.next_jobs(0.0)[0]
    huge = _update(job, 3e38)  # finite float32, its square is not: float64 holds it
    res = coord.submit(huge, 1.0)
    assert res.reason is not RejectReason.non_finite
    assert res.reason is RejectReason.norm_bound  # ~1e38 x ||w*|| is far over the bound
