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
            # float64 so order effects stay tiny; add_ casts element by element (no float64
            # copy of the delta; the same values as converting it first)
            acc.add_(delta[name], alpha=w)
        out[name] = (acc / total).to(pairs[0][0][name].dtype)
    return out


def _scaled_stack(pairs: Sequence[Tuple[Tensors, float]], name: str) -> Tensor:
    """[K, *shape] float64 stack of u_i = (K w_i / sum w) delta_i: the plain mean of the u_i is
    the weighted mean, so a robust statistic over them keeps each update's weight."""
    total = float(sum(w for _, w in pairs))
    if total <= 0:
        raise ValueError(f"robust aggregate: weights sum to {total}")
    k = len(pairs)
    return torch.stack([delta[name].to(torch.float64) * (k * w / total) for delta, w in pairs])


@torch.no_grad()
def trimmed_mean(pairs: Sequence[Tuple[Tensors, float]], trim_fraction: float) -> Tensors:
    """Coordinate-wise trimmed mean of the weight-scaled deltas u_i (see `_scaled_stack`).

    Per coordinate, the floor(trim_fraction * K) smallest and as many largest u_i are dropped and
    the rest averaged; trim_fraction 0 equals `weighted_mean`. ValueError on no pairs.
    """
    if not pairs:
        raise ValueError("trimmed_mean of no updates")
    k = len(pairs)
    cut = min(int(trim_fraction * k), (k - 1) // 2)  # always keep at least one value
    out: Tensors = {}
    for name in pairs[0][0]:
        ordered = _scaled_stack(pairs, name).sort(dim=0).values  # [K, *shape]
        out[name] = ordered[cut:k - cut].mean(dim=0).to(pairs[0][0][name].dtype)
    return out


@torch.no_grad()
def coordinate_median(pairs: Sequence[Tuple[Tensors, float]]) -> Tensors:
    """Coordinate-wise median of the weight-scaled deltas u_i (mean of the two middle values
    when K is even). ValueError on no pairs."""
    if not pairs:
        raise ValueError("coordinate_median of no updates")
    k = len(pairs)
    out: Tensors = {}
    for name in pairs[0][0]:
        ordered = _scaled_stack(pairs, name).sort(dim=0).values  # [K, *shape]
        mid = ordered[(k - 1) // 2:k // 2 + 1].mean(dim=0)  # one value (odd K) or two (even K)
        out[name] = mid.to(pairs[0][0][name].dtype)
    return out


@torch.no_grad()
def l2_norm(tensors: Tensors) -> float:
    """sqrt(sum of squares) over every tensor, in float64 (1e30 values do not overflow)."""
    return float(sum(float(t.to(torch.float64).pow(2).sum()) for t in tensors.values())) ** 0.5


@torch.no_grad()
def scale(tensors: Tensors, factor: float) -> Tensors:
    """factor * tensors (a new dict), computed in float64 and cast back."""
    return {name: (t.to(torch.float64) * factor).to(t.dtype) for name, t in tensors.items()}


def all_finite(tensors: Tensors) -> bool:
    """True when no tensor holds a NaN or an infinity."""
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


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
            acc.add_(delta[name], alpha=w)  # float64 as in weighted_mean
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
