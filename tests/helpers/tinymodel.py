"""A tiny conv model shared by the engine tests: fast, buffer-free, with a channel-maskable conv."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """conv(3->8) -> norm -> conv(8->8) -> mean over time -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1, bias=False)
        self.n1 = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.n1(self.c1(x)))  # (B, 8, T)
        x = torch.relu(self.c2(x)).mean(2)  # (B, 8)
        return self.head(x)  # (B, 4)
