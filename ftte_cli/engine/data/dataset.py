"""Data records shared by every layer: a labelled tensor dataset, a client's shard, a federation.

Device path (the agent reads its shard into a `Dataset`): torch + stdlib only, Python 3.9.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled samples: `x` (N, *input_shape) float32, `y` (N,) int64 class indices."""

    x: Tensor
    y: Tensor
    groups: Optional[Tensor] = None  # (N,) int64 natural group (e.g. subject), if known

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(f"Dataset needs float32 x and int64 y, got {self.x.dtype}, "
                             f"{self.y.dtype}")
        if self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Dataset: x has {self.x.shape[0]} rows, y has shape "
                             f"{tuple(self.y.shape)}")
        if self.groups is not None and self.groups.shape != self.y.shape:
            raise ValueError("Dataset: groups must have the same length as y")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.x.shape[1:])

    def subset(self, index: Tensor) -> Dataset:
        """The samples at `index` (a 1-D int64 tensor), copied."""
        groups = None if self.groups is None else self.groups[index]
        return Dataset(self.x[index], self.y[index], groups)

    @staticmethod
    def empty(input_shape: Tuple[int, ...]) -> Dataset:
        """A dataset with no samples (e.g. a proxy split of fraction 0)."""
        return Dataset(torch.zeros((0, *input_shape)), torch.zeros((0,), dtype=torch.int64))


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's shard: what it trains on and its own held-out part."""

    client_id: int
    train: Dataset
    test: Dataset


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A dataset split for federated learning; `proxy` and `test` are disjoint from every client.

    Inputs are already standardised per channel with `channel_mean` / `channel_std` (computed on
    the clients' training data); keep them to standardise new data the same way.
    """

    clients: List[ClientData]
    proxy: Dataset  # the server's small labelled split for the parameter plan
    test: Dataset  # the global test split
    num_classes: int
    input_shape: Tuple[int, ...]
    class_names: List[str]
    channel_mean: Optional[Tensor] = field(default=None)  # (C,) per-channel mean removed
    channel_std: Optional[Tensor] = field(default=None)  # (C,) per-channel scale divided out
    public: Optional[Dataset] = field(default=None)  # the server's public data (warm start)

    @property
    def num_clients(self) -> int:
        """Number of client shards."""
        return len(self.clients)


def channel_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel (dim 1) mean and std of `x` (N, C, ...); constant channels get std 1."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, dtype=torch.float64)
    std = x.double().std(dim=dims) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.float(), std.float()


def standardize(data: Dataset, mean: Tensor, std: Tensor) -> Dataset:
    """`data` with (x - mean) / std applied per channel (dim 1)."""
    shape = (1, -1) + (1,) * (data.x.dim() - 2)
    x = (data.x - mean.view(shape)) / std.view(shape)
    return Dataset(x.contiguous(), data.y, data.groups)
