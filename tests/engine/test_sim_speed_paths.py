"""The simulator's shortcuts change wall time only (issue 14): a run of dense strategies skips
FTTE's plan selection, the batched backend trains expensive plans one job at a time with the
in-process arithmetic, and kept frozen-prefix outputs train like per-group ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.simkit import TINY, make_shards

from ftte_cli.config.recipe import ModelConfig, TrainConfig, load_recipe
from ftte_cli.engine.batched import DELTA_ATOL, prefix_outputs, train_jobs
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FROZEN, FULL, MaskKind, ParamMask, build_plan
from ftte_cli.engine.sparse import extract
from ftte_cli.sim import batched_backend
from ftte_cli.sim.batched_backend import BatchedBackend
from ftte_cli.sim.runner import SimSettings, prepare, run_strategy


def _settings(tmp_path: Path, strategies: tuple, budget: str = "500KB") -> SimSettings:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % (budget, 0.2))
    return SimSettings(load_recipe(path), strategies=strategies, clients=12,
                       stop_at_target=False)


def test_a_run_of_dense_strategies_only_selects_no_ftte_plan_and_trains_the_same(
        tmp_path: Path) -> None:
    dense_only = prepare(_settings(tmp_path, ("fedavg", "fedbuff")))
    with_ftte = prepare(_settings(tmp_path, ("ftte", "fedavg", "fedbuff")))
    assert with_ftte.ftte.method != "dense"  # the budget binds: selection ran there
    assert dense_only.ftte.method == "dense"  # and was skipped here
    assert dense_only.budget_bytes == with_ftte.budget_bytes
    for name in ("fedavg", "fedbuff"):
        a, b = run_strategy(dense_only, name), run_strategy(with_ftte, name)
        assert a.metrics.to_dict() == b.metrics.to_dict()
        assert a.plan == b.plan


def test_batched_past_the_flops_bound_is_the_in_process_backend_to_the_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = prepare(_settings(tmp_path, ("ftte", "fedavg")))
    local = {n: run_strategy(world, n) for n in ("ftte", "fedavg")}
    monkeypatch.setattr(batched_backend, "STACK_MAX_FLOPS", 0)
    backend = BatchedBackend()
    backend.start(world)
    batched = {n: run_strategy(world, n, backend=backend) for n in ("ftte", "fedavg")}
    assert backend.jobs_trained > 0 and backend.groups_trained == 0  # nothing was stacked
    assert backend.stacks == {"ftte": False, "dense": False}
    for n in local:
        assert batched[n].metrics.to_dict() == local[n].metrics.to_dict()
    backend.close()


def test_under_the_flops_bound_jobs_train_stacked(tmp_path: Path) -> None:
    world = prepare(_settings(tmp_path, ("fedavg",)))
    backend = BatchedBackend()
    backend.start(world)
    run_strategy(world, "fedavg", backend=backend)
    assert backend.stacks == {"dense": True}  # har_cnn at width 0.5: ~0.9 MFLOP per sample
    assert backend.jobs_trained > backend.groups_trained > 0
    backend.close()


def test_kept_prefix_outputs_train_like_the_groups_own_and_repeat_exactly() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig("har_cnn", 0.5), (9, 128), 6)
    masks = {n: FROZEN for n, _ in model.named_parameters()}
    masks.update({"features.2.conv.weight": ParamMask(MaskKind.channels, (0, 3, 5)),
                  "features.3.conv.weight": FULL, "head.weight": FULL, "head.bias": FULL})
    plan = build_plan(model, masks, model_name="har_cnn", method="contribution")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    shards, cfg = make_shards((9, 128), 6), TrainConfig(epochs=1, batch_size=16, lr=0.05)
    kept = [prefix_outputs(model, params, plan, s.x) for s in shards]
    assert kept[1].shape[1:] != shards[1].x.shape[1:]  # really the prefix's output
    assert kept[0].shape[0] == 0 and kept[0].shape[1:] == kept[1].shape[1:]  # empty shard
    seeds = [5, 6, 7, 8, 9, 10]
    own = train_jobs(model, params, plan, extract(params, plan), shards, cfg, seeds)
    runs = [train_jobs(model, params, plan, extract(params, plan), shards, cfg, seeds,
                       prefixed=kept) for _ in range(2)]
    for a, b, c in zip(own, *runs):
        for n in a.delta:
            assert torch.allclose(a.delta[n], b.delta[n], rtol=0.0, atol=DELTA_ATOL)
            assert torch.equal(b.delta[n], c.delta[n])
        assert b.steps == a.steps and b.loss == pytest.approx(a.loss, rel=1e-3)
    with pytest.raises(ValueError, match="2 prefix outputs"):
        train_jobs(model, params, plan, extract(params, plan), shards, cfg, seeds,
                   prefixed=kept[:2])
