"""Memory accounting rules in process: what frozen layers, momentum, batch size and micro-batches
add to training_memory's estimate, and that chunked and micro-batched steps train like the whole
batch. The estimate against a real process's peak RSS is in test_memory.py.
"""

from __future__ import annotations

import pytest
import torch

from ftte_cli.config.recipe import ModelConfig
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FULL, build_plan, dense_plan


def _har() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig("har_cnn"), (9, 128), 6)


def test_frozen_early_layers_save_nothing() -> None:
    model = _har()
    names = [n for n, _ in model.named_parameters()]
    head_only = build_plan(model, {n: FULL for n in names[-2:]})
    last_block = build_plan(model, {n: FULL for n in names[-5:]})
    est_head = training_memory(model, head_only, 64, (9, 128))
    est_last = training_memory(model, last_block, 64, (9, 128))
    est_dense = training_memory(model, dense_plan(model), 64, (9, 128))
    # head only: the pooled features (B x 128) and the logits, nothing of the conv stack
    assert est_head.activations < 64 * 128 * 4 * 4
    assert est_head.activations < est_last.activations < est_dense.activations
    assert est_head.frozen == est_dense.frozen == 4 * sum(p.numel() for p in model.parameters())
    assert est_dense.grads == est_dense.frozen and est_head.grads == 4 * (128 * 6 + 6)


def test_momentum_costs_one_slot_and_activations_scale_with_batch() -> None:
    model = _har()
    plan = dense_plan(model)
    plain = training_memory(model, plan, 32, (9, 128), momentum=0.0)
    heavy = training_memory(model, plan, 32, (9, 128), momentum=0.9)
    assert heavy.optimizer - plain.optimizer == plain.grads
    double = training_memory(model, plan, 64, (9, 128))
    assert double.activations == pytest.approx(2 * plain.activations, rel=0.02)
    assert plain.total == sum((plain.params, plain.grads, plain.optimizer, plain.activations,
                               plain.frozen, plain.forward_buffers))


def test_chunked_frozen_prefix_trains_like_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass

    from ftte_cli.config.recipe import TrainConfig
    from ftte_cli.engine import sparse, train
    from ftte_cli.engine.models import frozen_prefix

    @dataclass(frozen=True)
    class Data:
        x: torch.Tensor
        y: torch.Tensor

    model = _har()
    names = [n for n, _ in model.named_parameters()]
    plan = build_plan(model, {n: FULL for n in names[-5:]})  # last conv block + head
    assert frozen_prefix(model, plan.trainable_names()) == 3
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    data = Data(torch.randn(40, 9, 128, generator=gen), torch.randint(0, 6, (40,), generator=gen))
    cfg = TrainConfig(batch_size=16, max_steps=3)
    chunked = train.train_job(model, params, plan, sparse.extract(params, plan), data, cfg, 7)
    monkeypatch.setattr(train, "PREFIX_CHUNK", 10**6)  # no micro-batches: the plain path
    assert train.chunked_prefix(model, plan, 16) == 0
    whole = train.train_job(model, params, plan, sparse.extract(params, plan), data, cfg, 7)
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-5)
    for n, d in whole.delta.items():
        torch.testing.assert_close(chunked.delta[n], d, rtol=1e-4, atol=1e-6)


def _micro_data(n: int = 40) -> tuple:
    from ftte_cli.engine.data import Dataset

    gen = torch.Generator().manual_seed(1)
    return Dataset(torch.randn(n, 9, 128, generator=gen), torch.randint(0, 6, (n,), generator=gen))


@pytest.mark.parametrize("kind", ["dense", "last_block", "channels"])
def test_micro_batches_give_the_whole_batchs_gradient(kind: str) -> None:
    """Accumulated over passes of 3 (the last one partial), the step equals one pass of 16."""
    from dataclasses import replace

    from ftte_cli.config.recipe import TrainConfig
    from ftte_cli.engine import sparse, train
    from ftte_cli.engine.plan import MaskKind, ParamMask

    model = _har()
    names = [n for n, _ in model.named_parameters()]
    if kind == "dense":
        plan = dense_plan(model)
    elif kind == "last_block":  # frozen prefix of 3 blocks: chunked within each pass as well
        plan = build_plan(model, {n: FULL for n in names[-5:]})
    else:
        half = ParamMask(MaskKind.channels, tuple(range(0, 64, 2)))
        plan = build_plan(model, {"features.2.conv.weight": half, "head.weight": FULL,
                                  "head.bias": FULL})
    params = {k: v.detach() for k, v in model.named_parameters()}
    data = _micro_data()
    cfg = TrainConfig(batch_size=16, max_steps=3)
    whole = train.train_job(model, params, plan, sparse.extract(params, plan), data, cfg, 7)
    micro = replace(plan, micro_batch=3)
    assert micro.pass_size(16) == 3 and plan.pass_size(16) == 16
    parts = train.train_job(model, params, micro, sparse.extract(params, micro), data, cfg, 7)
    assert parts.steps == whole.steps == 3
    assert parts.loss == pytest.approx(whole.loss, rel=1e-5)
    assert parts.grad_variance == pytest.approx(whole.grad_variance, rel=1e-4)
    for n, d in whole.delta.items():
        torch.testing.assert_close(parts.delta[n], d, rtol=1e-4, atol=1e-6)
        assert not torch.equal(d, torch.zeros_like(d))  # the step did move w*


def test_micro_batch_estimate_holds_one_passs_activations() -> None:
    from dataclasses import replace

    from ftte_cli.engine.memory import accumulation_transient

    model = _har()
    plan = dense_plan(model)
    whole = training_memory(model, plan, 64, (9, 128))
    micro = training_memory(model, replace(plan, micro_batch=16), 64, (9, 128))
    at_16 = training_memory(model, plan, 16, (9, 128))
    # activations and buffers are those of one pass of 16; the gradient sum gains one tensor
    assert micro.activations == at_16.activations < whole.activations / 3
    assert micro.forward_buffers == at_16.forward_buffers
    assert micro.grads == whole.grads + accumulation_transient(plan)
    assert accumulation_transient(plan) == 4 * 128 * 128 * 3  # features.3.conv.weight
    # a micro-batch at least the batch is the plain step
    assert training_memory(model, replace(plan, micro_batch=64), 64, (9, 128)) == whole
