"""`--backend threads`: trainer threads of this process train the jobs; results equal in-process
ones to the bit, a failing job or Ctrl-C ends the run without a hang or a thread left behind, a
model that draws random numbers is refused, and process-wide marks (peak RSS) are left alone."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import torch
from helpers.simkit import (
    assert_same_result,
    backend_recipe_text,
    cli_strategies,
    tiny_recipe,
)
from torch import nn

from ftte_cli import api
from ftte_cli.config.recipe import ModelConfig, Recipe, load_recipe
from ftte_cli.engine import sparse
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.models import build_model
from ftte_cli.engine.train import JobResult, peak_rss
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.sim.runner import SimSettings, World, prepare, run_strategy, simulate
from ftte_cli.sim.thread_backend import NAME, ThreadBackend, draws_random

# 30 clients; FTTE, FedBuff and FedAvg (helpers.simkit.BACKEND: sparse plan, dropout on).
RECIPE = backend_recipe_text("threads", clients=30, windows=1200)
STRATEGIES = ("ftte", "fedbuff", "fedavg")


def _recipe(tmp_path: Path) -> Recipe:
    path = tmp_path / "threads.yaml"
    path.write_text(RECIPE)
    return load_recipe(path)


def _world(tmp_path: Path) -> World:
    return prepare(SimSettings(_recipe(tmp_path), strategies=STRATEGIES, stop_at_target=False,
                               eval_samples=300))


def _tiny_world(tmp_path: Path) -> World:
    return prepare(SimSettings(tiny_recipe(tmp_path), strategies=("fedavg",)))  # no selection


def _trainers() -> List[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(NAME)]


def _job(world: World, n: int) -> Tuple[Job, int]:
    return Job(f"j{n}", f"c{n:04d}", 0, sparse.extract(world.params, world.dense), 0.0, n), n


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_trainer_threads_equal_in_process_to_the_bit(tmp_path: Path) -> None:
    world = _world(tmp_path)
    assert world.ftte.method != "dense"
    local = {n: run_strategy(world, n) for n in STRATEGIES}
    backend = ThreadBackend(3)
    backend.start(world)
    assert len(_trainers()) == 3
    try:
        threaded = {n: run_strategy(world, n, backend=backend) for n in STRATEGIES}
        again = run_strategy(world, "fedbuff", backend=backend)  # the same backend, reused
    finally:
        backend.close()
    for name in STRATEGIES:
        assert local[name].metrics.evals[-1].version == 5
        assert_same_result(local[name], threaded[name])
        assert threaded[name].train_cpu_s > 0  # each job's own thread CPU
    assert_same_result(local["fedbuff"], again)
    assert local["ftte"].metrics.jobs_lost > 0  # dropout happened and changed nothing
    assert backend.jobs_trained >= sum(len(r.metrics.evals) for r in threaded.values())
    assert _trainers() == []  # close() joined every trainer


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_backend_threads_matches_in_process(tmp_path: Path) -> None:
    recipe = tmp_path / "threads.yaml"
    recipe.write_text(RECIPE)
    local = cli_strategies(recipe, tmp_path / "inprocess", "inprocess")
    assert cli_strategies(recipe, tmp_path / "threads", "threads", "--workers", "2") == local
    assert _trainers() == []


def test_a_failing_job_is_a_run_error_naming_the_cause(tmp_path: Path) -> None:
    world = _tiny_world(tmp_path)
    backend = ThreadBackend(1)
    backend.start(world)
    try:
        job, _ = _job(world, 0)
        good = backend.submit("dense", job, 0, world.recipe.train)
        bad = backend.submit("dense", job, len(world.data.clients) + 5, world.recipe.train)
        res, cpu = backend.result(good)
        assert isinstance(res, JobResult) and cpu > 0 and res.num_samples > 0
        with pytest.raises(RunError, match=r"a client job failed in trainer thread 0: "
                                           r"IndexError: list index out of range$"):
            backend.result(bad)
        again = backend.submit("dense", job, 1, world.recipe.train)  # the trainer survives
        assert backend.result(again)[0].num_samples > 0
    finally:
        backend.close()
    assert _trainers() == []


def test_a_failing_job_ends_a_simulate_run_and_leaves_no_thread(tmp_path: Path) -> None:
    world = _tiny_world(tmp_path)
    # one input channel where the model takes several: every client's job raises in its thread
    clients = [replace(c, train=Dataset(c.train.x[:, :1], c.train.y))
               for c in world.data.clients]
    bad = replace(world, data=replace(world.data, clients=clients))
    backend = ThreadBackend(2)
    backend.start(bad)
    try:
        with pytest.raises(RunError, match="threads backend: a client job failed"):
            run_strategy(bad, "fedavg", backend=backend)
    finally:
        backend.close()
    assert _trainers() == []


def test_ctrl_c_stops_every_trainer_thread(tmp_path: Path) -> None:
    settings = SimSettings(tiny_recipe(tmp_path), strategies=("fedbuff",), stop_at_target=False)
    seen: List[int] = []

    def on_eval(name: str, point: Any) -> None:
        seen.append(point.version)
        if len(seen) == 2:  # jobs are in flight now: the real signal, as a terminal sends it
            os.kill(os.getpid(), signal.SIGINT)

    backend = ThreadBackend(2)
    with pytest.raises(KeyboardInterrupt):
        simulate(settings, on_eval=on_eval, backend=backend)
    assert len(seen) == 2  # stopped at the signal, not at the end of the run
    assert backend.threads == [] and _trainers() == []


def test_the_process_peak_rss_mark_is_left_alone_and_not_reported(tmp_path: Path) -> None:
    world = _tiny_world(tmp_path)
    big = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB resident, then freed: a peak
    del big
    before = peak_rss()
    assert before is not None
    backend = ThreadBackend(2)
    backend.start(world)
    try:
        handles = [backend.submit("dense", *_job(world, i), world.recipe.train)
                   for i in range(4)]
        results = [backend.result(h)[0] for h in handles]
    finally:
        backend.close()
    assert all(r.peak_memory is None for r in results)  # not another job's peak
    after = peak_rss()
    assert after is not None and after >= before  # in-process train_job resets it per job


def test_a_model_that_draws_random_numbers_is_refused(tmp_path: Path) -> None:
    world = _tiny_world(tmp_path)
    shape = world.data.input_shape
    width = int(torch.tensor(shape).prod())
    noisy = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(width, 6))
    backend = ThreadBackend(2)
    with pytest.raises(ConfigError, match=r"--backend threads: model Sequential draws random "
                                          r"numbers in training: 1 \(Dropout\).*--backend "
                                          r"processes"):
        backend.start(replace(world, model=noisy))
    assert backend.threads == [] and _trainers() == []
    state = torch.get_rng_state()
    assert draws_random(noisy, shape) is not None
    assert torch.equal(state, torch.get_rng_state())  # the check leaves the RNG as it was


def test_a_model_that_updates_buffers_in_training_is_refused(tmp_path: Path) -> None:
    world = _tiny_world(tmp_path)
    channels = world.data.input_shape[0]
    norm = nn.BatchNorm1d(channels)
    batchnorm = nn.Sequential(norm, nn.Flatten(),
                              nn.Linear(int(torch.tensor(world.data.input_shape).prod()), 6))
    running = norm.running_mean
    assert running is not None
    running.fill_(0.5)  # the probe's zero inputs would pull it towards 0
    before = running.clone()
    backend = ThreadBackend(2)
    with pytest.raises(ConfigError, match=r"model Sequential updates buffers in training: "
                                          r"0.running_mean.*--backend processes"):
        backend.start(replace(world, model=batchnorm))
    assert torch.equal(running, before)  # the check ran on a copy
    assert backend.threads == [] and _trainers() == []


@pytest.mark.parametrize("name,shape", [("har_cnn", (9, 128)), ("small_cnn", (3, 32, 32)),
                                        ("mobilenet_v2", (3, 32, 32))])
def test_the_shipped_models_train_on_threads(name: str, shape: Tuple[int, ...]) -> None:
    model = build_model(ModelConfig(name=name, width=0.5), shape, 6)
    assert draws_random(model, shape) is None


def test_bad_threads_flags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--workers: must be >= 1, got 0"):
        api.sim_backend("threads", workers=0)
    with pytest.raises(ConfigError, match="--workers: only with --backend auto, processes or "
                                          "threads"):
        api.sim_backend("batched", workers=2)
    world = _tiny_world(tmp_path)
    cuda = replace(world, recipe=replace(world.recipe, train=replace(world.recipe.train,
                                                                     device="cuda")))
    backend = ThreadBackend(2)
    with pytest.raises(ConfigError, match="--backend threads: train.device cuda"):
        backend.start(cuda)
    assert backend.threads == []


@pytest.mark.slow  # OpenMP's 2-thread barriers take a minute on a busy 2-core machine
@pytest.mark.timeout(240)
def test_two_torch_threads_per_job_still_equal_in_process(tmp_path: Path) -> None:
    world = _tiny_world(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # `--threads 2`: both sides run every op on a pool of 2
    try:
        local = run_strategy(world, "fedavg")
        backend = ThreadBackend(2)
        backend.start(world)
        try:
            threaded = run_strategy(world, "fedavg", backend=backend)
        finally:
            backend.close()
    finally:
        torch.set_num_threads(before)
    assert_same_result(local, threaded)
