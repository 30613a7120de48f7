"""Aggregation math as pure torch functions over (delta, weight) pairs; strategies call these.

Inputs are dicts name -> tensor over the plan's trainable subset w*; nothing is changed in place,
so a snapshot handed to a job in flight stays valid.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

Tensors = Dict[str, Tensor]


@torch.no_grad()
def weighted_mean(pairs: Sequence[Tuple[Tensors, float]]) -> Tensors:
    """sum_i(w_i * delta_i) / sum_i(w_i) per tensor; ValueError on no pairs or zero weight."""
    if not pairs:
        raise ValueError("weighted_mean of no updates")
    total = float(sum(w for _, w in pairs))
    if total <= 0:
        raise ValueError(f"weighted_mean: weights sum to {total}")
    out: Tensors = {}
    for name in pairs[0][0]:
        acc = torch.zeros_like(pairs[0][0][name], dtype=torch.float64)
        for delta, w in pairs:
            acc.add_(delta[name].to(torch.float64), alpha=w)  # float64 so order effects stay tiny
        out[name] = (acc / total).to(pairs[0][0][name].dtype)
    return out


@torch.no_grad()
def buffer_mean(pairs: Sequence[Tuple[Tensors, float]], k: int) -> Tensors:
    """(1/K) * sum_i(w_i * delta_i) per tensor (FedBuff's normaliser: staleness shrinks the step).

    Unlike `weighted_mean`, weights below 1 make the result smaller; ValueError on no pairs or
    K <= 0.
    """
    if not pairs:
        raise ValueError("buffer_mean of no updates")
    if k <= 0:
        raise ValueError(f"buffer_mean: K = {k}")
    out: Tensors = {}
    for name in pairs[0][0]:
        acc = torch.zeros_like(pairs[0][0][name], dtype=torch.float64)
        for delta, w in pairs:
            acc.add_(delta[name].to(torch.float64), alpha=w)  # float64 as in weighted_mean
        out[name] = (acc / k).to(pairs[0][0][name].dtype)
    return out


@torch.no_grad()
def server_step(current: Tensors, mean_delta: Tensors, server_lr: float) -> Tensors:
    """w*_{t+1} = w*_t + eta_g * mean_delta (a new dict; `current` is untouched)."""
    return {name: current[name] + server_lr * mean_delta[name] for name in current}


@torch.no_grad()
def mix(current: Tensors, incoming: Tensors, rate: float) -> Tensors:
    """FedAsync's x = (1 - a) x + a x_new (a new dict)."""
    return {name: torch.lerp(current[name], incoming[name], rate) for name in current}


@torch.no_grad()
def add(base: Tensors, delta: Tensors) -> Tensors:
    """base + delta per tensor (a client's model x_{t_i} + delta_i)."""
    return {name: base[name] + delta[name] for name in base}


def nbytes(tensors: Tensors) -> int:
    """Raw bytes of a tensor dict (what travels, less the small safetensors header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
