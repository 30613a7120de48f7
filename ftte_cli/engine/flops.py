"""Forward FLOPs per sample of every parameterised layer, measured with forward hooks.

The simulator turns these into compute time: a training step costs the whole forward pass plus a
backward pass that only reaches back to the earliest trainable layer (`training_flops`).
Conventions: conv and linear count 2 FLOPs per multiply-accumulate (+1 per output for a bias);
norms count a fixed number of elementwise operations per output element.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from ftte_cli.engine.models import trainable_layers

# GroupNorm/LayerNorm per element: subtract mean, square, divide by std, scale, shift.
NORM_FLOPS_PER_ELEMENT = 5


def _conv_flops(module: nn.Module, out: Tensor) -> int:
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    macs_per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
    bias = 1 if module.bias is not None else 0
    return out.numel() * (2 * macs_per_output + bias)


def _linear_flops(module: nn.Module, out: Tensor) -> int:
    assert isinstance(module, nn.Linear)
    bias = 1 if module.bias is not None else 0
    return out.numel() * (2 * module.in_features + bias)


def _norm_flops(module: nn.Module, out: Tensor) -> int:
    return out.numel() * NORM_FLOPS_PER_ELEMENT


def _other_flops(module: nn.Module, out: Tensor) -> int:
    """Unknown parameterised layer: one multiply-add per parameter (a floor, never zero)."""
    return max(1, 2 * sum(p.numel() for p in module.parameters(recurse=False)))


_COUNTERS: Tuple[Tuple[Tuple[type, ...], Callable[[nn.Module, Tensor], int]], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv_flops),
    ((nn.Linear,), _linear_flops),
    ((nn.GroupNorm, nn.LayerNorm), _norm_flops),
)


def _count(module: nn.Module, out: Tensor) -> int:
    for kinds, counter in _COUNTERS:
        if isinstance(module, kinds):
            return counter(module, out)
    return _other_flops(module, out)


def layer_flops(model: nn.Module, input_shape: Tuple[int, ...]) -> Dict[str, int]:
    """Forward FLOPs of one sample for each layer of `trainable_layers(model)`, in that order."""
    names = trainable_layers(model)
    counts: Dict[str, int] = dict.fromkeys(names, 0)
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[[nn.Module, object, Tensor], None]:
        def record(module: nn.Module, inputs: object, out: Tensor) -> None:
            counts[name] += _count(module, out)  # a module called twice counts twice
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=torch.float32))
    finally:
        for handle in handles:
            handle.remove()
    return counts


def forward_flops(flops: Mapping[str, int]) -> int:
    """FLOPs of one sample's forward pass over the parameterised layers."""
    return sum(flops.values())


def training_flops(flops: Mapping[str, int], trained: Mapping[str, float]) -> int:
    """FLOPs of one sample's forward + backward when only `trained` layers learn.

    `flops` is `layer_flops(...)` (forward order); `trained` maps a layer name to the fraction of
    its weight that is trained (1.0 full, r for an input-channel subset). Backward costs, per
    layer, about one forward for the input gradient (only for layers after the earliest trained
    one, since nothing before it needs a gradient) plus `fraction` of a forward for the weight
    gradient. With nothing trained the cost is the forward alone.
    """
    order: List[str] = list(flops)
    trained_idx = [i for i, name in enumerate(order) if trained.get(name, 0.0) > 0]
    total = forward_flops(flops)
    if not trained_idx:
        return total
    earliest = min(trained_idx)
    for i, name in enumerate(order[earliest:], start=earliest):
        input_grad = flops[name] if i > earliest else 0
        total += input_grad + int(round(flops[name] * trained.get(name, 0.0)))
    return total
