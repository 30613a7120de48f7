"""`--backend auto` (the CLI's default): trainer threads where they can run, else in-process."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import torch
from helpers.simkit import assert_same_result, backend_recipe_text, cli_strategies, tiny_recipe
from torch import nn

from ftte_cli.config.recipe import load_recipe
from ftte_cli.sim.auto_backend import AutoBackend, why_not_threads
from ftte_cli.sim.runner import InProcessBackend, SimSettings, World, prepare, run_strategy
from ftte_cli.sim.thread_backend import NAME

RECIPE = backend_recipe_text("auto", clients=30, windows=1200)
TWO_CPUS = len(os.sched_getaffinity(0)) >= 2


def _world(tmp_path: Path) -> World:
    return prepare(SimSettings(tiny_recipe(tmp_path), strategies=("fedavg",)))


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """This process pinned to one CPU for the test (the real affinity mask, restored after)."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


@pytest.mark.skipif(not TWO_CPUS, reason="needs 2 usable CPUs")
def test_threads_where_they_can_run(tmp_path: Path) -> None:
    world = _world(tmp_path)
    assert why_not_threads(world) is None
    backend = AutoBackend()
    backend.start(world)
    try:
        assert backend.chosen == "threads"
        assert any(t.name.startswith(NAME) for t in threading.enumerate())
    finally:
        backend.close()
    assert not any(t.name.startswith(NAME) for t in threading.enumerate())


def test_in_process_on_one_cpu(tmp_path: Path, one_cpu: None) -> None:
    world = _world(tmp_path)
    assert why_not_threads(world) == "one usable CPU"
    backend = AutoBackend()
    backend.start(world)
    backend.close()
    assert backend.chosen == "inprocess"


def test_in_process_with_several_torch_threads(tmp_path: Path) -> None:
    world = _world(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        reason = why_not_threads(world, workers=2)
    finally:
        torch.set_num_threads(before)
    assert reason is not None and reason.startswith("--threads above 1")


def test_in_process_for_a_model_threads_refuse(tmp_path: Path) -> None:
    world = _world(tmp_path)
    width = int(torch.tensor(world.data.input_shape).prod())
    noisy = replace(world, model=nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(width, 6)))
    reason = why_not_threads(noisy, workers=2)
    assert reason is not None and "draws random numbers" in reason
    backend = AutoBackend(2)
    backend.start(noisy)
    backend.close()
    assert backend.chosen == "inprocess"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_auto_gives_the_in_process_results(tmp_path: Path) -> None:
    path = tmp_path / "auto.yaml"
    path.write_text(RECIPE)
    world = prepare(SimSettings(load_recipe(path), strategies=("ftte",)))
    local = InProcessBackend()
    local.start(world)
    expected = run_strategy(world, "ftte", backend=local)
    auto = AutoBackend(2)
    auto.start(world)
    try:
        assert_same_result(run_strategy(world, "ftte", backend=auto), expected)
    finally:
        auto.close()
    assert auto.chosen == "threads"
    # and the CLI's default is auto, with the same figures as --backend inprocess
    default = cli_strategies(path, tmp_path / "default", None)
    assert default == cli_strategies(path, tmp_path / "inprocess", "inprocess")
