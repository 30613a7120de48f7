"""The trainable subset w* of a plan: extract it, insert it back, and build training param dicts.

`materialize` is the heart of sparse training: frozen tensors never require grad, and a channel
weight is `frozen.index_copy(1, idx, trainable)`, whose backward needs only `idx`; so autograd saves
nothing before the earliest trainable layer and gradients exist only for w*.
Device path: torch + stdlib, Python 3.9.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import Tensor

from ftte_cli.engine.plan import MaskKind, Plan

Params = Dict[str, Tensor]


def channel_index(plan: Plan, device: Optional[torch.device] = None) -> Dict[str, Tensor]:
    """int64 index tensor per channel-masked parameter; build once per job, not per step."""
    return {name: torch.tensor(m.channels, dtype=torch.int64, device=device)
            for name, m in plan.masks.items() if m.kind == MaskKind.channels}


@torch.no_grad()
def extract(params: Mapping[str, Tensor], plan: Plan,
            index: Optional[Mapping[str, Tensor]] = None) -> Params:
    """w*: a fresh, contiguous copy of the trainable part of every trainable parameter."""
    index = channel_index(plan) if index is None else index
    out: Params = {}
    for name, mask in plan.masks.items():
        if mask.kind == MaskKind.full:
            out[name] = params[name].detach().clone(memory_format=torch.contiguous_format)
        elif mask.kind == MaskKind.channels:
            out[name] = params[name].detach().index_select(1, index[name]).contiguous()
    return out


@torch.no_grad()
def insert(params: Mapping[str, Tensor], plan: Plan, subset: Mapping[str, Tensor],
           index: Optional[Mapping[str, Tensor]] = None) -> Params:
    """A new full param dict with w* = `subset`; frozen tensors are shared with `params`."""
    index = channel_index(plan) if index is None else index
    out: Params = {}
    for name, mask in plan.masks.items():
        base = params[name].detach()
        if mask.kind == MaskKind.full:
            out[name] = subset[name].detach().to(base.dtype).clone()
        elif mask.kind == MaskKind.channels:
            out[name] = base.index_copy(1, index[name], subset[name].detach().to(base.dtype))
        else:
            out[name] = base
    return out


def materialize(frozen: Mapping[str, Tensor], plan: Plan, trainable: Mapping[str, Tensor],
                index: Optional[Mapping[str, Tensor]] = None) -> Params:
    """The param dict for `torch.func.functional_call`, differentiable in `trainable` only."""
    index = channel_index(plan) if index is None else index
    out: Params = {}
    for name, mask in plan.masks.items():
        if mask.kind == MaskKind.full:
            out[name] = trainable[name]
        elif mask.kind == MaskKind.channels:
            # (out, in, *k).index_copy(1, idx, (out, len(idx), *k)): backward saves only idx
            out[name] = frozen[name].detach().index_copy(1, index[name], trainable[name])
        else:
            out[name] = frozen[name].detach()
    return out


def check_subset(plan: Plan, subset: Mapping[str, Tensor]) -> Optional[str]:
    """None when `subset` matches the plan's w* exactly, else a one-line mismatch description."""
    expected = plan.subset_shapes()
    missing = [n for n in expected if n not in subset]
    extra = [n for n in subset if n not in expected]
    if missing or extra:
        return f"mask mismatch: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, shape in expected.items():
        t = subset[name]
        if tuple(t.shape) != shape:
            return f"shape mismatch: {name} is {tuple(t.shape)}, plan expects {shape}"
        if not t.is_floating_point():
            return f"dtype mismatch: {name} is {t.dtype}, expected a floating point tensor"
    return None


def is_mask_mismatch(description: Optional[str]) -> bool:
    """Whether a check_subset description is about names (mask) rather than shapes or dtypes."""
    return description is not None and description.startswith("mask mismatch")


def zeros_like_subset(plan: Plan, dtype: torch.dtype = torch.float32) -> Params:
    """A zero w*-shaped dict (an empty delta)."""
    return {n: torch.zeros(s, dtype=dtype) for n, s in plan.subset_shapes().items()}
