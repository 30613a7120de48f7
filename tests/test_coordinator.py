"""The coordinator state machine on a tiny model: tensors only, time passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

from ftte_cli.config.recipe import ServerOptimizerConfig, StrategyConfig
from ftte_cli.engine.coordinator import (
    ClientState,
    Coordinator,
    CoordinatorConfig,
    Job,
    RejectReason,
    Update,
)
from ftte_cli.engine.plan import FROZEN, FULL, MaskKind, ParamMask, Plan, build_plan
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.store import load_checkpoint, save_checkpoint

Tensors = Dict[str, Tensor]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def _plan(model: nn.Module) -> Plan:
    # 0.weight: input channels 1 and 3 only; 0.bias frozen; the head fully trained
    return build_plan(model, {"0.weight": ParamMask(MaskKind.channels, (1, 3)),
                              "0.bias": FROZEN, "1.weight": FULL, "1.bias": FULL})


def _coord(name: str = "ftte", k: int = 2, c: int = 4, clients: int = 6,
           evaluate: object = None, **cfg: object) -> Coordinator:
    model = _model()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    scfg = StrategyConfig(name=name, buffer_size=k, max_concurrency=c, **cfg)  # type: ignore[arg-type]
    return Coordinator(params, _plan(model), make_strategy(scfg),
                       {f"c{i}": 10 + i for i in range(clients)},
                       CoordinatorConfig(strategy=scfg, eval_every=1), seed=7,
                       evaluate=evaluate)  # type: ignore[arg-type]


def _delta(job: Job, scale: float = 0.1) -> Tensors:
    """A deterministic 'training result' that depends on the job's seed and its w*."""
    gen = torch.Generator().manual_seed(job.seed)
    return {n: -scale * t + 0.01 * torch.randn(t.shape, generator=gen)
            for n, t in job.subset.items()}


def _update(job: Job, delta: Optional[Tensors] = None, n: int = 10, v: float = 1.0) -> Update:
    return Update(job.job_id, job.client_id, job.version, _delta(job) if delta is None else delta,
                  n, v)


def test_dispatch_respects_concurrency_and_client_states() -> None:
    coord = _coord(c=4, clients=6)
    jobs = coord.next_jobs(0.0)
    assert len(jobs) == 4 and coord.in_flight == 4
    assert len({j.client_id for j in jobs}) == 4
    assert all(coord.client_state(j.client_id) == ClientState.busy for j in jobs)
    assert coord.next_jobs(0.0) == []
    coord.submit(_update(jobs[0]), 1.0)
    more = coord.next_jobs(1.0)
    assert len(more) == 1 and more[0].client_id not in {j.client_id for j in jobs[1:]}


def test_k_arrivals_make_exactly_one_version() -> None:
    coord = _coord(k=3, c=6)
    jobs = coord.next_jobs(0.0)
    results = [coord.submit(_update(j), float(i)) for i, j in enumerate(jobs)]
    assert [r.advanced for r in results] == [False, False, True, False, False, True]
    assert [r.version for r in results] == [0, 0, 1, 1, 1, 2]
    assert coord.version == 2 and coord.metrics.version_times == [2.0, 5.0]


def test_staleness_counted_right_under_interleaving() -> None:
    coord = _coord(k=2, c=4, clients=4)
    j1, j2, j3, j4 = coord.next_jobs(0.0)  # all from version 0
    assert coord.submit(_update(j1), 1.0).staleness == 0
    assert coord.submit(_update(j2), 2.0).advanced  # version 1
    j5, j6 = coord.next_jobs(2.0)  # j1's and j2's clients, from version 1
    assert j5.version == j6.version == 1
    assert coord.submit(_update(j3), 3.0).staleness == 1
    r5 = coord.submit(_update(j5), 4.0)
    assert r5.staleness == 0 and r5.advanced and coord.version == 2
    assert coord.submit(_update(j4), 5.0).staleness == 2
    assert coord.submit(_update(j6), 6.0).staleness == 1
    assert dict(coord.metrics.staleness) == {0: 3, 1: 2, 2: 1}


def test_each_rejection_reason() -> None:
    coord = _coord(k=5, c=6, clients=6, max_staleness=0)
    jobs = coord.next_jobs(0.0)
    good = _delta(jobs[0])
    cases: List[Tuple[Update, RejectReason]] = [
        (Update("nope", "c0", 0, good, 1, 0.0), RejectReason.unknown_job),
        (_update(jobs[0], {k: v for k, v in good.items() if k != "1.bias"}),
         RejectReason.mask_mismatch),
        (_update(jobs[1], {**good, "1.weight": torch.zeros(2, 2)}), RejectReason.shape_mismatch),
        (_update(jobs[2], {**good, "1.bias": torch.tensor([float("nan"), 0.0])}),
         RejectReason.non_finite),
        (_update(jobs[3], {k: v.double() for k, v in good.items()}), RejectReason.too_large),
    ]
    for update, reason in cases:
        result = coord.submit(update, 1.0)
        assert not result.accepted and result.reason == reason, reason
    ok = coord.submit(_update(jobs[4]), 1.0)
    assert ok.accepted
    dup = coord.submit(_update(jobs[4]), 1.0)
    assert dup.reason == RejectReason.duplicate_job
    # a wrong version for a real job is not that job
    assert coord.submit(Update(jobs[5].job_id, jobs[5].client_id, 3, good, 1, 0.0),
                        1.0).reason == RejectReason.unknown_job
    expected = {r.value: 1 for r in RejectReason if r != RejectReason.too_stale}
    assert coord.metrics.dropped == {**expected, "unknown_job": 2}


def test_too_stale_rejected() -> None:
    coord = _coord(k=1, c=2, clients=2, max_staleness=0)
    j1, j2 = coord.next_jobs(0.0)
    assert coord.submit(_update(j1), 1.0).advanced
    result = coord.submit(_update(j2), 2.0)
    assert result.reason == RejectReason.too_stale and result.staleness == 1
    assert coord.client_state(j2.client_id) == ClientState.idle  # the client may work again


def test_frozen_parameters_never_change() -> None:
    coord = _coord(k=2, c=4)
    before = {k: v.clone() for k, v in coord.params.items()}
    now = 0.0
    for _ in range(5):
        for job in coord.next_jobs(now):
            now += 1.0
            coord.submit(_update(job), now)
    assert coord.version >= 5
    after = coord.params
    assert torch.equal(after["0.bias"], before["0.bias"])
    frozen_cols = [0, 2]
    assert torch.equal(after["0.weight"][:, frozen_cols], before["0.weight"][:, frozen_cols])
    assert not torch.equal(after["0.weight"][:, [1, 3]], before["0.weight"][:, [1, 3]])
    assert not torch.equal(after["1.weight"], before["1.weight"])


def test_snapshots_kept_only_while_referenced() -> None:
    coord = _coord(k=1, c=2, clients=2)
    j1, j2 = coord.next_jobs(0.0)
    coord.submit(_update(j1), 1.0)  # version 1; j2 still needs version 0
    assert set(coord._snapshots) == {0}
    coord.submit(_update(j2), 2.0)
    assert coord._snapshots == {}


def test_offline_client_loses_its_job_and_fedavg_round_still_closes() -> None:
    coord = _coord(name="fedavg", k=1, c=1, clients=3)
    jobs = coord.next_jobs(0.0)
    assert len(jobs) == 3 and coord.next_jobs(0.0) == []  # a round only when none in flight
    coord.submit(_update(jobs[0]), 1.0)
    coord.submit(_update(jobs[1]), 2.0)
    assert coord.version == 0
    assert coord.client_offline(jobs[2].client_id, 3.0)  # the last job lost closes the round
    assert coord.version == 1 and coord.metrics.jobs_lost == 1
    assert len(coord.next_jobs(3.0)) == 2
    coord.client_online(jobs[2].client_id)
    assert coord.client_state(jobs[2].client_id) == ClientState.idle


def test_fedavg_round_is_sample_weighted_mean_of_client_models() -> None:
    coord = _coord(name="fedavg", clients=3)
    start = {k: v.clone() for k, v in coord.subset.items()}
    jobs = coord.next_jobs(0.0)
    ns = [5, 15, 30]
    models = []
    for job, n in zip(jobs, ns):
        d = _delta(job)
        models.append({k: start[k] + d[k] for k in d})
        coord.submit(_update(job, d, n=n), 1.0)
    assert coord.version == 1
    for k in start:
        expect = sum(m[k] * n for m, n in zip(models, ns)) / sum(ns)
        assert torch.allclose(coord.subset[k], expect, atol=1e-6)


def test_evaluate_runs_every_eval_every_versions_with_time() -> None:
    calls: List[int] = []

    def evaluate(params: Tensors) -> Tuple[float, float]:
        calls.append(1)
        return 0.5, 1.0

    coord = _coord(k=1, c=2, evaluate=evaluate)
    coord.evaluate_now(0.0)
    j1, j2 = coord.next_jobs(0.0)
    coord.submit(_update(j1), 3.5)
    assert [(e.time, e.version) for e in coord.metrics.evals] == [(0.0, 0), (3.5, 1)]
    assert coord.metrics.evals[1].bytes_total == coord.metrics.bytes_total
    assert len(calls) == 2


def _drive(coord: Coordinator, steps: int, now: float, queue: List[Job]) -> float:
    """Complete jobs in a fixed but interleaved order (by seed), dispatching as slots free up."""
    for _ in range(steps):
        queue.extend(coord.next_jobs(now))
        queue.sort(key=lambda j: (j.seed % 5, j.job_id))
        job = queue.pop(0)
        now += 1.0 + job.seed % 3
        coord.submit(_update(job), now)
    return now


@pytest.mark.parametrize("name,opt", [("ftte", "none"), ("fedasync", "none"), ("fedavg", "none"),
                                      ("ftte", "adam"), ("fedbuff", "momentum")])
def test_checkpoint_then_restore_equals_uninterrupted(tmp_path: Path, name: str, opt: str) -> None:
    server_opt = ServerOptimizerConfig(kind=opt)
    a = _coord(name=name, k=3, c=5, server_optimizer=server_opt)
    b = _coord(name=name, k=3, c=5, server_optimizer=server_opt)
    qa: List[Job] = []
    qb: List[Job] = []
    ta = _drive(a, 40, 0.0, qa)
    tb = _drive(b, 17, 0.0, qb)
    save_checkpoint(tmp_path, b.state())
    tensors, meta = load_checkpoint(tmp_path)
    scfg = b.config.strategy
    b = Coordinator.from_state(tensors, meta, _plan(_model()), make_strategy(scfg), b.config)
    # jobs in flight are re-issued from the restored state by their recorded ids and versions
    qb = [Job(j.job_id, j.client_id, j.version, b._snapshots[j.version], j.issued_at, j.seed)
          for j in qb]
    tb = _drive(b, 23, tb, qb)
    assert ta == tb and a.version == b.version > 3
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert a.metrics.to_dict() == b.metrics.to_dict()
    assert a.client_info() == b.client_info()
