"""Evaluation in a worker process (server/evalworker.py) against in-thread evaluation.

The load test's coordinator (har_cnn, a sparse plan, PlanEvaluator's frozen-prefix cache, 300
synthetic HAR windows) is driven twice with the same deterministic updates: once evaluating on
its own thread, once through a forked EvalWorker. The figures must be identical, one entry per
evaluated version in version order; a version due while the worker is busy is skipped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from helpers import coordkit
from helpers.coordkit import fake_update
from torch import Tensor

from ftte_cli.config.recipe import GuardConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.coordinator import Coordinator
from ftte_cli.engine.metrics import EvalPoint
from ftte_cli.server.app import FtteServer
from ftte_cli.server.evalworker import EvalWorker, EvalWorkerError
from ftte_cli.server.protocol import ServerConfig, update_bound
from ftte_cli.server.snapshot import StopReason

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import loadtest  # noqa: E402

pytestmark = pytest.mark.slow  # every test here forks an evaluation process
Point = Tuple[int, float, float]


def _coordinator() -> Coordinator:
    return loadtest.build_coordinator(devices=8, seed=5, concurrency=4, buffer_size=1)


def _drive(coord: Coordinator, updates: int, worker: EvalWorker | None = None,
           wait: bool = True) -> None:
    """`updates` fake updates, one at a time; with `wait`, each evaluation finishes first."""
    jobs = list(coord.next_jobs(0.0))
    for i in range(updates):
        job = jobs.pop(0)
        coord.submit(fake_update(job), float(i))
        if worker is not None:
            if wait:
                assert worker.ready(30.0) or not worker.busy
            coord.collect_evaluations(float(i))
        jobs += coord.next_jobs(float(i))


def _points(coord: Coordinator) -> List[Point]:
    return [(e.version, e.accuracy, e.loss) for e in coord.metrics.evals]


@pytest.fixture
def worker_coord():  # type: ignore[no-untyped-def]
    coord = _coordinator()
    worker = EvalWorker(coord._evaluate, coord.params, coord.plan)  # type: ignore[arg-type]
    coord.background = worker
    yield coord, worker
    worker.close()


def test_worker_figures_equal_in_thread_ones(worker_coord) -> None:  # type: ignore[no-untyped-def]
    coord, worker = worker_coord
    in_thread = _coordinator()
    _drive(in_thread, 30)
    _drive(coord, 30, worker)
    expected = _points(in_thread)
    assert [v for v, _, _ in expected] == [5, 10, 15, 20, 25, 30]  # eval_every 5, buffer 1
    assert _points(coord) == expected  # bit for bit, in version order
    assert coord.evals_skipped == 0
    assert coord.version == in_thread.version and coord.metrics.rollbacks == 0


def test_busy_worker_skips_due_versions_in_order(worker_coord) -> None:  # type: ignore[no-untyped-def]
    coord, worker = worker_coord
    coord.config = type(coord.config)(strategy=coord.config.strategy, eval_every=1)
    subsets = {}
    jobs = list(coord.next_jobs(0.0))
    for i in range(40):  # no waiting: the worker is still busy when most versions land
        job = jobs.pop(0)
        coord.submit(fake_update(job), float(i))
        subsets[coord.version] = coord.subset
        coord.collect_evaluations(float(i))
        jobs += coord.next_jobs(float(i))
    assert worker.ready(30.0)
    coord.collect_evaluations(99.0)
    points = _points(coord)
    versions = [v for v, _, _ in points]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert coord.evals_skipped > 0  # skipped, not queued: at most one evaluation in flight
    assert len(points) + coord.evals_skipped == 40
    for v, acc, loss in points:  # each figure is that version's own, as evaluated in-thread
        params = sparse.insert(coord.params, coord.plan, subsets[v])
        assert coord._evaluate(params) == (acc, loss)  # type: ignore[misc]


def test_broken_evaluator_is_reported_not_hung() -> None:
    coord = _coordinator()

    def broken(params: object) -> Tuple[float, float]:
        raise ValueError("no test set")

    worker = EvalWorker(broken, coord.params, coord.plan)
    try:
        assert worker.start(1, coord.subset)
        assert not worker.start(2, coord.subset)  # busy: not taken
        deadline = time.monotonic() + 30.0
        while not worker.ready(0.1) and time.monotonic() < deadline:
            pass
        with pytest.raises(EvalWorkerError, match="ValueError: no test set"):
            worker.results()
    finally:
        worker.close()


def test_server_stop_rule_fires_when_the_result_comes_back(worker_coord) -> None:  # type: ignore[no-untyped-def]
    coord, worker = worker_coord
    config = ServerConfig(run_id="t", tokens={n: f"tok-{n}" for n in coord.client_info()},
                          plan_sha256="0" * 64, update_max_bytes=update_bound(coord.subset))
    seen: List[EvalPoint] = []
    _drive(coord, 7)  # v5 is due (installed at t=4): handed to the worker, nothing recorded yet
    server = FtteServer(coord, config, strategy="ftte", buffer_size=1, target_accuracy=0.0,
                        on_evaluation=seen.append)
    try:
        assert worker.busy and coord.metrics.evals == [] and not server.done
        assert worker.ready(30.0)
        server.call(lambda c: server._poll_evaluations(8.0))  # no update needed to see it
        assert server.done and server.snapshot().stop_reason == StopReason.target
        assert [p.version for p in seen] == [5] and coord.version == 7
        assert list(coord.eval_lags) == [(2, 4.0)]  # recorded 2 versions, 4 s after install
    finally:
        server.close()
    assert worker._conn.closed  # the server's close stops its evaluator


def _magnitude(params: Dict[str, Tensor]) -> Tuple[float, float]:
    """A stand-in test set: the 'loss' is the weights' largest magnitude."""
    return 0.5, float(max(t.abs().max() for t in params.values()))


def test_a_diverged_version_is_rolled_back_when_its_result_comes_back() -> None:
    coord = coordkit.coordinator(k=1, evaluate=_magnitude,
                                 guard=GuardConfig(norm_bound=None, diverge_factor=10.0))
    worker = EvalWorker(_magnitude, coord.params, coord.plan)
    coord.background = worker
    try:
        jobs = coord.next_jobs(0.0)
        coord.submit(fake_update(jobs[0]), 1.0)  # v1: honest
        assert worker.ready(30.0) and not coord.collect_evaluations(1.5)
        good = coord.subset
        poison = {n: torch.full_like(t, 1e6) for n, t in jobs[1].subset.items()}
        coord.submit(fake_update(jobs[1], poison), 2.0)  # v2: diverged, installed for now
        assert coord.version == 2 and coord.metrics.rollbacks == 0
        assert worker.ready(30.0) and coord.collect_evaluations(3.0)  # the roll-back advanced
        assert coord.version == 3 and coord.metrics.rollbacks == 1
        assert coord.subset is good  # v1's model installed as v3
        (event,) = coord.guard_events
        assert event.version == 3 and "v2 (evaluated late)" in event.detail
        assert [e.version for e in coord.metrics.evals] == [1, 2]
    finally:
        worker.close()


def _broken(params: Dict[str, Tensor]) -> Tuple[float, float]:
    raise ValueError("no test set")


def test_a_failed_worker_sends_the_server_back_to_in_thread_evaluation() -> None:
    coord = _coordinator()
    worker = EvalWorker(_broken, coord.params, coord.plan)
    coord.background = worker
    config = ServerConfig(run_id="t", tokens={n: f"tok-{n}" for n in coord.client_info()},
                          plan_sha256="0" * 64, update_max_bytes=update_bound(coord.subset))
    jobs = list(coord.next_jobs(0.0))

    def step(i: int) -> None:
        coord.submit(fake_update(jobs.pop(0)), float(i))
        jobs.extend(coord.next_jobs(float(i)))

    for i in range(6):
        step(i)  # v5 handed to the broken worker
    server = FtteServer(coord, config, strategy="ftte", buffer_size=1)
    try:
        assert worker.ready(30.0)
        server.call(lambda c: server._poll_evaluations(7.0))  # the error, not a hang or a 500
        assert coord.background is None and coord.evaluating == set()
        assert worker._conn.closed
        failed = [e for e in server.snapshot().events if e.kind == "evaluation_failed"]
        assert len(failed) == 1 and "ValueError: no test set" in failed[0].detail
        for i in range(6, 10):
            step(i)  # v10 is due: evaluated in-thread now
        assert [e.version for e in coord.metrics.evals] == [10]
    finally:
        server.close()
