"""`--backend processes`: forked worker processes train the jobs; results equal in-process ones
to the bit, w* travels once per version, and a lost worker or a failing job ends the run with a
one-line RunError instead of a hang."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from helpers.simkit import (
    assert_same_result,
    backend_recipe_text,
    cli_strategies,
    tiny_recipe,
)
from typer.testing import CliRunner

from ftte_cli import api
from ftte_cli.cli import app
from ftte_cli.config.recipe import Recipe, TrainConfig, load_recipe
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.train import JobResult
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.sim.process_backend import ProcessBackend
from ftte_cli.sim.runner import SimSettings, World, prepare, run_strategy

# 30 clients; FTTE, FedBuff and FedAvg (helpers.simkit.BACKEND: sparse plan, dropout on).
RECIPE = backend_recipe_text("procs", clients=30, windows=1200)
STRATEGIES = ("ftte", "fedbuff", "fedavg")


def _recipe(tmp_path: Path) -> Recipe:
    path = tmp_path / "procs.yaml"
    path.write_text(RECIPE)
    return load_recipe(path)


def _world(tmp_path: Path) -> World:
    return prepare(SimSettings(_recipe(tmp_path), strategies=STRATEGIES, stop_at_target=False,
                               eval_samples=300))


class _Counting(ProcessBackend):
    """Records each submitted job's w* dict (held, so ids stay unique)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.subsets: Dict[int, Any] = {}
        self.submitted = 0

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        self.subsets[id(job.subset)] = job.subset
        self.submitted += 1
        return super().submit(plan_key, job, device, cfg)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_workers_equal_in_process_to_the_bit(tmp_path: Path) -> None:
    world = _world(tmp_path)
    assert world.ftte.method != "dense"
    local = {n: run_strategy(world, n) for n in STRATEGIES}
    backend = _Counting(2)
    backend.start(world)
    folder = backend.folder
    assert folder is not None and os.path.isdir(folder)
    pids = [s.proc.pid for s in backend.slots]
    try:
        pooled = {n: run_strategy(world, n, backend=backend) for n in STRATEGIES}
    finally:
        backend.close()
    for name in STRATEGIES:
        assert local[name].metrics.evals[-1].version == 5
        assert_same_result(local[name], pooled[name])
        assert pooled[name].train_cpu_s > 0  # the workers' CPU, reported back
    assert local["ftte"].metrics.jobs_lost > 0  # dropout happened and changed nothing
    # w* written once per version, shared by that version's jobs
    assert backend.files_written == len(backend.subsets) < backend.submitted
    # close() stopped the workers and removed the w* files
    assert not os.path.exists(folder)
    assert backend.slots == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _job(world: World, n: int) -> Tuple[Job, int]:
    from ftte_cli.engine import sparse

    subset = sparse.extract(world.params, world.ftte)
    return Job(f"j{n}", f"c{n:04d}", 0, subset, 0.0, n), n


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_killed_worker_is_a_one_line_error_not_a_hang(tmp_path: Path) -> None:
    world = _world(tmp_path)
    backend = ProcessBackend(2)
    backend.start(world)
    try:
        handles = [backend.submit("ftte", *_job(world, i), world.recipe.train) for i in range(12)]
        for slot in backend.slots:  # whichever holds the job we wait for dies
            os.kill(slot.proc.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RunError, match=r"worker \d \(pid \d+\) exited with code -9"):
            for h in handles:
                backend.result(h)
        assert time.monotonic() - start < 10
    finally:
        backend.close()
    assert backend.slots == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_failing_job_is_a_run_error_naming_the_cause(tmp_path: Path) -> None:
    world = _world(tmp_path)
    backend = ProcessBackend(1)
    backend.start(world)
    try:
        job, _ = _job(world, 0)
        good = backend.submit("ftte", job, 0, world.recipe.train)
        bad = backend.submit("ftte", job, len(world.data.clients) + 5, world.recipe.train)
        res, cpu = backend.result(good)
        assert isinstance(res, JobResult) and cpu > 0 and res.num_samples > 0
        with pytest.raises(RunError, match="a client job failed in worker 0: IndexError"):
            backend.result(bad)
        # the worker survives a failed job
        again = backend.submit("ftte", job, 1, world.recipe.train)
        assert backend.result(again)[0].num_samples > 0
    finally:
        backend.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_backend_processes_matches_in_process(tmp_path: Path) -> None:
    recipe = tmp_path / "procs.yaml"
    recipe.write_text(RECIPE)
    local = cli_strategies(recipe, tmp_path / "inprocess", "inprocess")
    assert cli_strategies(recipe, tmp_path / "processes", "processes", "--workers", "2") == local


def test_bad_worker_flags_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--workers: must be >= 1, got 0"):
        api.sim_backend("processes", workers=0)
    with pytest.raises(ConfigError, match="--workers: only with --backend auto, processes or "
                                          "threads"):
        api.sim_backend("inprocess", workers=2)
    with pytest.raises(ConfigError, match="auto, inprocess, batched, processes, threads or ray"):
        api.sim_backend("thread")
    recipe = tmp_path / "procs.yaml"
    recipe.write_text(RECIPE)
    res = CliRunner().invoke(app, ["simulate", "-r", str(recipe), "--backend", "inprocess",
                                   "--workers", "2", "--out", str(tmp_path / "r"),
                                   "--format", "json"])
    assert res.exit_code == 2
    assert "--workers: only with --backend auto, processes or threads" in res.output
    assert not (tmp_path / "r").exists()  # refused before any work


def test_an_accelerator_device_is_refused_before_forking(tmp_path: Path) -> None:
    world = prepare(SimSettings(tiny_recipe(tmp_path), strategies=("fedavg",)))  # no selection
    cuda = replace(world, recipe=replace(world.recipe, train=replace(world.recipe.train,
                                                                     device="cuda")))
    backend = ProcessBackend(2)
    with pytest.raises(ConfigError, match="train.device cuda"):
        backend.start(cuda)
    assert backend.slots == []
