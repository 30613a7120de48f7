"""Registered models: shapes, no buffers, head detection, forward order, FLOPs per layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftte_cli.config.recipe import ModelConfig
from ftte_cli.engine.models import (
    MODELS,
    build_model,
    head_prefix,
    param_count,
    trainable_layers,
)
from ftte_cli.errors import ConfigError, ExitCode

CASES = [
    ("har_cnn", (9, 128), 6),
    ("small_cnn", (1, 8, 8), 10),
    ("small_cnn", (3, 32, 32), 10),
    ("mobilenet_v2", (3, 32, 32), 10),
]


def _forward_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of parameter-owning modules in the order forward() actually calls them."""
    owners = dict.fromkeys(trainable_layers(model))
    seen: list[str] = []
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
             for name, module in model.named_modules() if name in owners]
    with torch.no_grad():
        model(torch.zeros(2, *input_shape))
    for hook in hooks:
        hook.remove()
    return seen


def test_registry_names() -> None:
    assert set(MODELS) == {"har_cnn", "small_cnn", "mobilenet_v2"}


@pytest.mark.parametrize("name,shape,classes", CASES)
@pytest.mark.parametrize("width", [0.5, 1.0])
def test_build_forward_shape_and_no_buffers(name: str, shape: tuple[int, ...], classes: int,
                                            width: float) -> None:
    model = build_model(ModelConfig(name=name, width=width), shape, classes)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes)
    assert list(model.buffers()) == []
    # the model state is exactly its parameters
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name,shape,classes", CASES)
def test_head_is_last_linear_and_layers_in_forward_order(name: str, shape: tuple[int, ...],
                                                         classes: int) -> None:
    model = build_model(ModelConfig(name=name), shape, classes)
    head = head_prefix(model)
    module = model.get_submodule(head)
    assert isinstance(module, nn.Linear) and module.out_features == classes
    layers = trainable_layers(model)
    assert layers[-1] == head
    assert _forward_order(model, shape) == layers
    # every parameter belongs to exactly one listed layer
    owned = sum(p.numel() for n in layers for p in model.get_submodule(n).parameters(recurse=False))
    assert owned == param_count(model)


def test_width_multiplier_scales_parameters() -> None:
    small = build_model(ModelConfig(name="mobilenet_v2", width=0.5), (3, 32, 32), 10)
    large = build_model(ModelConfig(name="mobilenet_v2", width=1.0), (3, 32, 32), 10)
    assert 2 * param_count(small) < param_count(large)


def test_har_cnn_size_is_a_few_hundred_kb() -> None:
    model = build_model(ModelConfig(name="har_cnn"), (9, 128), 6)
    assert 100_000 < param_count(model) * 4 < 1_000_000


def test_group_norm_only() -> None:
    model = build_model(ModelConfig(name="mobilenet_v2", width=0.75), (3, 32, 32), 10)
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert nn.GroupNorm in kinds


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.name: unknown model 'resnet'") as err:
        build_model(ModelConfig(name="resnet"), (3, 32, 32), 10)
    assert err.value.exit_code == ExitCode.USAGE


def test_wrong_input_rank_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="har_cnn expects inputs of rank 2"):
        build_model(ModelConfig(name="har_cnn"), (3, 32, 32), 10)


# ---------------------------------------------------------------------------------------------
# flops


def test_layer_flops_exact_for_known_layers() -> None:
    from ftte_cli.engine.flops import NORM_FLOPS_PER_ELEMENT, layer_flops

    model = build_model(ModelConfig(name="har_cnn"), (9, 128), 6)
    flops = layer_flops(model, (9, 128))
    assert list(flops) == trainable_layers(model)
    # conv1: 9 -> 32 channels, kernel 5, stride 2: 64 outputs per channel, no bias
    assert flops["features.0.conv"] == 32 * 64 * 2 * 9 * 5
    assert flops["features.0.norm"] == 32 * 64 * NORM_FLOPS_PER_ELEMENT
    assert flops["head"] == 6 * (2 * 128 + 1)
    assert all(v > 0 for v in flops.values())


@pytest.mark.parametrize("name,shape,classes", CASES)
def test_training_flops_ordered(name: str, shape: tuple[int, ...], classes: int) -> None:
    from ftte_cli.engine.flops import forward_flops, layer_flops, training_flops

    model = build_model(ModelConfig(name=name), shape, classes)
    flops = layer_flops(model, shape)
    layers = list(flops)
    fwd = forward_flops(flops)
    head_only = training_flops(flops, {layers[-1]: 1.0})
    half = training_flops(flops, {n: 1.0 for n in layers[len(layers) // 2:]})
    dense = training_flops(flops, dict.fromkeys(layers, 1.0))
    channels = training_flops(flops, {n: 0.25 for n in layers})
    assert fwd == training_flops(flops, {}) < head_only < half < dense <= 3 * fwd
    assert channels < dense


def test_depthwise_conv_counts_per_group() -> None:
    from ftte_cli.engine.flops import layer_flops

    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False))
    assert layer_flops(model, (8, 4, 4)) == {"0": 8 * 16 * 2 * 9}
