"""The initial model: random, a checkpoint, or a cached warm start on public data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ftte_cli.config.recipe import InitConfig, Recipe, load_recipe
from ftte_cli.engine.data import load_federated
from ftte_cli.engine.selection import plan_for_recipe
from ftte_cli.engine.serialize import save_tensors
from ftte_cli.errors import BudgetInfeasible, ConfigError
from ftte_cli.rundir.reader import load_run
from ftte_cli.rundir.sim import RunWriter
from ftte_cli.sim.runner import SimSettings, prepare, simulate
from ftte_cli.startmodel import cache_key, describe_start, start_model

SMALL = """
name: small
seed: 2
data: {{dataset: synthetic_har, windows: 900, subjects: 8, partition: iid}}
model: {{name: har_cnn, width: 0.5}}
init: {init}
train: {{epochs: 1, batch_size: 16, lr: 0.05}}
strategy: {{buffer_size: 2, max_concurrency: 4}}
plan: {{memory_budget: 1GB}}
stop: {{target_accuracy: 0.99, max_versions: 2, time_limit: 10000, eval_every: 1}}
sim: {{clients: 4}}
"""
PRETRAIN = "{method: pretrain, epochs: 2, public_windows: 600, public_subjects: 6}"


def _recipe(tmp_path: Path, init: str) -> Recipe:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.format(init=init))
    return load_recipe(path)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_random_start_depends_on_the_seed_only(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "random")
    a, info = start_model(recipe, (9, 128), 6)
    b, _ = start_model(recipe, (9, 128), 6)
    c, _ = start_model(replace(recipe, seed=3), (9, 128), 6)
    assert info.method == "random" and info.accuracy is None
    assert all(torch.equal(x, y) for x, y in zip(_params(a).values(), _params(b).values()))
    assert not torch.equal(_params(a)["head.weight"], _params(c)["head.weight"])


def test_checkpoint_start_loads_the_file_beside_the_recipe(tmp_path: Path) -> None:
    source, _ = start_model(replace(_recipe(tmp_path, "random"), seed=9), (9, 128), 6)
    save_tensors(tmp_path / "warm.safetensors", _params(source))
    recipe = _recipe(tmp_path, "warm.safetensors")  # shorthand, relative to the recipe
    assert recipe.init == InitConfig(method="checkpoint", checkpoint=tmp_path / "warm.safetensors")
    model, info = start_model(recipe, (9, 128), 6)
    assert info.method == "checkpoint" and info.source == str(tmp_path / "warm.safetensors")
    assert all(torch.equal(model.get_parameter(k), v) for k, v in _params(source).items())


def test_a_checkpoint_of_another_model_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    wide = _recipe(tmp_path, "random")
    other, _ = start_model(replace(wide, model=replace(wide.model, width=1.0)), (9, 128), 6)
    save_tensors(tmp_path / "other.safetensors", _params(other))
    recipe = _recipe(tmp_path, "{method: checkpoint, checkpoint: other.safetensors}")
    pattern = (r"small.yaml: init.checkpoint: .*other.safetensors: "
               r"features\.0\.conv\.weight is torch.float32 \(32, 9, 5\), the model has")
    with pytest.raises(ConfigError, match=pattern):
        start_model(recipe, (9, 128), 6)
    missing = _recipe(tmp_path, "{method: checkpoint, checkpoint: nowhere.safetensors}")
    with pytest.raises(ConfigError, match="init.checkpoint: .*nowhere.safetensors: cannot read"):
        start_model(missing, (9, 128), 6)


@pytest.mark.parametrize("init, message", [
    ("{method: magic}", "init.method: must be one of random, checkpoint, pretrain"),
    ("{method: checkpoint}", "init.checkpoint: required for method checkpoint"),
    ("{method: pretrain, epochs: 0}", "init.epochs: must be > 0"),
])
def test_bad_init_settings_name_the_key(tmp_path: Path, init: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _recipe(tmp_path, init)


def test_pretrain_is_computed_once_then_read_from_the_cache(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, PRETRAIN)
    fed = load_federated(recipe.data, 4, recipe.seed, recipe.init)
    cache = tmp_path / "cache"
    first, info = start_model(recipe, fed.input_shape, fed.num_classes, fed, cache_dir=cache)
    again, cached = start_model(recipe, fed.input_shape, fed.num_classes, fed, cache_dir=cache)
    random, rinfo = start_model(_recipe(tmp_path, "random"), fed.input_shape, fed.num_classes, fed)
    assert not info.cached and cached.cached and info.steps == 2 * 10  # 600 windows / 64, twice
    assert cached.accuracy == info.accuracy and cached.seconds == info.seconds
    assert all(torch.equal(x, y) for x, y in zip(_params(first).values(), _params(again).values()))
    assert info.accuracy is not None and rinfo.accuracy is not None
    assert info.accuracy > rinfo.accuracy + 0.15  # the lab population teaches the activities
    assert "warm start on 600 public samples, 20 steps" in describe_start(info)
    assert len(list(cache.glob("*.safetensors"))) == 1
    public = fed.public
    assert cache_key(recipe, public) != cache_key(replace(recipe, seed=3), public)
    shifted = replace(public, x=public.x + 1e-3)  # e.g. the generator or the statistics changed
    assert cache_key(recipe, public) != cache_key(recipe, shifted)


def test_pretrain_without_public_data_is_a_config_error(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, PRETRAIN)
    with pytest.raises(ConfigError, match="small.yaml: init.method: pretrain needs"):
        start_model(recipe, (9, 128), 6, None, cache_dir=tmp_path)


def test_simulate_starts_every_strategy_from_the_warm_start_and_reports_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the cache lands in ./.ftte/init
    recipe = _recipe(tmp_path, PRETRAIN)
    writer = RunWriter(tmp_path / "run")
    settings = SimSettings(recipe=recipe, strategies=("ftte", "fedbuff"), stop_at_target=False,
                           eval_samples=None)
    result = simulate(settings, on_eval=writer.on_eval)
    writer.finish(settings, result)
    assert result.start is not None and result.start.method == "pretrain"
    first = {r.name: r.metrics.evals[0] for r in result.results}
    assert first["ftte"].version == first["fedbuff"].version == 0
    assert first["ftte"].accuracy == first["fedbuff"].accuracy == result.start.accuracy
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["init"]["method"] == "pretrain" and summary["init"]["steps"] == 20
    assert load_run(tmp_path / "run").init == summary["init"]
    assert any(n.startswith("initial model: warm start") for n in result.notes)


def test_an_infeasible_budget_is_refused_before_any_warm_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, PRETRAIN)
    recipe = replace(recipe, plan=replace(recipe.plan, memory_budget=None))
    with pytest.raises(BudgetInfeasible, match="smallest budget that works"):
        plan_for_recipe(recipe, 1000, num_clients=4)
    with pytest.raises(BudgetInfeasible, match="smallest budget that works"):
        prepare(SimSettings(recipe=recipe, budget_fraction=0.001))
    assert not (tmp_path / ".ftte").exists()  # nothing was pretrained or cached
