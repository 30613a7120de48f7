"""Warm start (FTTE.md section 5b): train the whole model on the server's public data.

TTE, on which FTTE builds, fine-tunes a sparse subset of a *pretrained* backbone; this is the
pretraining, done once on the server before federation. The server is not memory-starved, so it
uses Adam, which copes with the ill-conditioned inputs that public data from another population
has under the federation's standardisation (plain SGD stalls there). Pure torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ftte_cli.config.recipe import InitConfig
    from ftte_cli.engine.data import Dataset


@dataclass(frozen=True)
class PretrainStats:
    """What the warm start cost: samples seen and optimiser steps."""

    samples: int  # public samples (one pass)
    steps: int  # Adam steps over all epochs
    final_loss: float  # mean training loss of the last epoch


def pretrain(model: nn.Module, public: Dataset, cfg: InitConfig, seed: int) -> PretrainStats:
    """Train every parameter of `model` in place on `public` (Adam, cfg.epochs passes)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps, loss_sum, batches = 0, 0.0, 0
    model.train()
    for _ in range(cfg.epochs):
        loss_sum, batches = 0.0, 0
        for idx in torch.randperm(len(public), generator=gen).split(cfg.batch_size):
            loss = F.cross_entropy(model(public.x[idx]), public.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            loss_sum, batches = loss_sum + float(loss.detach()), batches + 1
    return PretrainStats(len(public), steps, loss_sum / max(batches, 1))
