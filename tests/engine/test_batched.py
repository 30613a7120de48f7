"""Batched client training (`--backend batched`): equal to train_job per client within the stated
tolerance, bit-identical run after run, and invisible to the virtual clock."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import List

import pytest
import torch
from helpers.simkit import TINY, make_shards
from helpers.tinymodel import Tiny
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.config.recipe import ModelConfig, Recipe, TrainConfig, load_recipe
from ftte_cli.engine.batched import (
    DELTA_ATOL,
    REL_TOL,
    TYPICAL_ATOL,
    train_jobs,
    unsupported,
)
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FROZEN, FULL, MaskKind, ParamMask, Plan, build_plan, dense_plan
from ftte_cli.engine.sparse import extract
from ftte_cli.engine.train import JobResult, train_job
from ftte_cli.errors import ConfigError, ExitCode
from ftte_cli.sim.batched_backend import BatchedBackend
from ftte_cli.sim.runner import SimSettings, StrategyResult, prepare, run_strategy

runner = CliRunner()


def _sparse_har_plan(model: torch.nn.Module) -> Plan:
    """Head and last norm trained, the last conv on half its input channels, the rest frozen."""
    masks = {name: FROZEN for name, _ in model.named_parameters()}
    masks.update({"head.weight": FULL, "head.bias": FULL, "features.3.norm.weight": FULL,
                  "features.3.norm.bias": FULL,
                  "features.3.conv.weight": ParamMask(MaskKind.channels, tuple(range(0, 64, 2)))})
    return build_plan(model, masks, model_name="har_cnn")


def _assert_close(ref: List[JobResult], got: List[JobResult]) -> None:
    """The stated tolerance: every delta to DELTA_ATOL, most to TYPICAL_ATOL (engine/batched.py
    says why a few differ more), losses and variances to REL_TOL."""
    assert len(ref) == len(got)
    close = total = 0
    for a, b in zip(ref, got):
        assert (a.steps, a.num_samples) == (b.steps, b.num_samples)
        assert a.delta.keys() == b.delta.keys()
        for name in a.delta:
            assert a.delta[name].shape == b.delta[name].shape
            gap = float((a.delta[name] - b.delta[name]).abs().max())
            assert gap <= DELTA_ATOL, name
            close, total = close + (gap <= TYPICAL_ATOL), total + 1
        assert b.loss == pytest.approx(a.loss, rel=REL_TOL, abs=1e-6)
        assert b.grad_variance == pytest.approx(a.grad_variance, rel=REL_TOL, abs=1e-6)
    assert close >= 0.75 * total


def _each(model: torch.nn.Module, plan: Plan, shards: List[Dataset], cfg: TrainConfig,
          seeds: List[int]) -> List[JobResult]:
    params = {k: v.detach() for k, v in model.named_parameters()}
    return [train_job(model, params, plan, extract(params, plan), d, cfg, s)
            for d, s in zip(shards, seeds)]


@pytest.mark.parametrize("cfg", [
    TrainConfig(epochs=2, batch_size=16, lr=0.05),
    TrainConfig(epochs=3, batch_size=8, lr=0.02, momentum=0.9, max_steps=5),
], ids=["sgd-2-epochs", "momentum-max-steps"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_har_jobs_equal_one_at_a_time_training(cfg: TrainConfig, sparse: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="har_cnn", width=0.5), (9, 128), 6)
    plan = _sparse_har_plan(model) if sparse else dense_plan(model, "har_cnn")
    shards, seeds = make_shards((9, 128), 6), [11, 12, 13, 14, 15, 16]
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = train_jobs(model, params, plan, extract(params, plan), shards, cfg, seeds,
                     max_group=4)  # two groups: the grouping must not show
    ref = _each(model, plan, shards, cfg, seeds)
    _assert_close(ref, got)
    assert got[0].steps == 0 and all(not t.any() for t in got[0].delta.values())
    assert got[4].steps > got[1].steps > 0  # ragged work really was ragged
    if sparse:
        assert got[3].delta["features.3.conv.weight"].shape[1] == 32


@pytest.mark.parametrize("name,shape", [("small_cnn", (3, 8, 8)), ("mobilenet_v2", (3, 16, 16))])
def test_image_models_with_depthwise_and_residual_blocks_match(name: str,
                                                               shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(name=name, width=0.25), shape, 4)
    plan = dense_plan(model, name)
    shards, seeds = make_shards(shape, 4, (3, 9, 6)), [1, 2, 3]
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.05)
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = train_jobs(model, params, plan, extract(params, plan), shards, cfg, seeds)
    _assert_close(_each(model, plan, shards, cfg, seeds), got)


def test_same_inputs_give_the_same_bits() -> None:
    torch.manual_seed(2)
    model = build_model(ModelConfig(name="har_cnn", width=0.5), (9, 128), 6)
    plan = dense_plan(model, "har_cnn")
    params = {k: v.detach() for k, v in model.named_parameters()}
    shards, cfg = make_shards((9, 128), 6), TrainConfig(epochs=1, batch_size=16, lr=0.05)
    first, second = (train_jobs(model, params, plan, extract(params, plan), shards, cfg,
                                [5, 6, 7, 8, 9, 10]) for _ in range(2))
    for a, b in zip(first, second):
        assert all(torch.equal(a.delta[n], b.delta[n]) for n in a.delta)
        assert (a.loss, a.grad_variance) == (b.loss, b.grad_variance)


def test_a_model_it_cannot_stack_is_refused_with_the_reason(tmp_path: Path) -> None:
    assert "Tiny" in (unsupported(Tiny()) or "")
    model = Tiny()
    plan = dense_plan(model, "tiny")
    params = {k: v.detach() for k, v in model.named_parameters()}
    with pytest.raises(ValueError, match="features/pool/head"):
        train_jobs(model, params, plan, extract(params, plan), make_shards((3, 8), 4, (4,)),
                   TrainConfig(), [1])
    world = prepare(SimSettings(_recipe(tmp_path), strategies=("fedavg",)))
    with pytest.raises(ConfigError, match="--backend batched: train.device cuda"):
        BatchedBackend().start(replace(world, recipe=replace(
            world.recipe, train=replace(world.recipe.train, device="cuda"))))
    world.model = model
    with pytest.raises(ConfigError, match="--backend batched: .*Tiny"):
        BatchedBackend().start(world)


def _recipe(tmp_path: Path, budget: str = "500KB") -> Recipe:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % (budget, 0.2))  # dropout on: lost jobs never reach the backend
    return load_recipe(path)


def _same_clock(a: StrategyResult, b: StrategyResult) -> None:
    """Everything that depends on time and order only, not on the trained numbers."""
    da, db = a.metrics.to_dict(), b.metrics.to_dict()
    for key in ("bytes_down", "bytes_up", "jobs_dispatched", "jobs_lost", "accepted",
                "staleness", "dropped", "version_times"):
        assert da[key] == db[key], key
    assert [(e.time, e.version) for e in a.metrics.evals] == [
        (e.time, e.version) for e in b.metrics.evals]
    for ea, eb in zip(a.metrics.evals, b.metrics.evals):
        assert eb.accuracy == pytest.approx(ea.accuracy, abs=0.02)
        assert eb.loss == pytest.approx(ea.loss, rel=0.01)


@pytest.mark.timeout(240)
def test_simulation_keeps_virtual_time_staleness_and_order(tmp_path: Path) -> None:
    settings = SimSettings(_recipe(tmp_path), strategies=("ftte", "fedbuff", "fedavg"),
                           clients=12, stop_at_target=False)
    world = prepare(settings)
    assert world.ftte.method != "dense"
    names = settings.strategies
    local = {n: run_strategy(world, n) for n in names}
    runs = []
    for _ in range(2):
        backend = BatchedBackend()
        backend.start(world)
        runs.append({n: run_strategy(world, n, backend=backend) for n in names})
        assert backend.jobs_trained > backend.groups_trained > 0  # jobs really shared batches
        backend.close()
    for n in names:
        assert local[n].summary.versions == 6
        _same_clock(local[n], runs[0][n])
        # same seed, same backend: identical to the bit
        assert runs[0][n].metrics.to_dict() == runs[1][n].metrics.to_dict()
        assert runs[0][n].summary == runs[1][n].summary
    assert local["fedbuff"].metrics.jobs_lost > 0


def test_cli_backend_batched_and_its_usage_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY % ("1GB", 0.0))
    base = ["simulate", "--recipe", str(recipe), "--clients", "6", "--strategies", "fedavg",
            "--until", "limit", "--format", "json"]
    res = runner.invoke(app, [*base, "--backend", "batched", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["strategies"][0]["versions"] == 6
    bad = runner.invoke(app, [*base, "--backend", "vmap", "--out", str(tmp_path / "c")])
    assert bad.exit_code == ExitCode.USAGE and "--backend" in bad.stdout
    addr = runner.invoke(app, [*base, "--backend", "batched", "--address", "auto",
                               "--out", str(tmp_path / "d")])
    assert addr.exit_code == ExitCode.USAGE and "--address" in addr.stdout

