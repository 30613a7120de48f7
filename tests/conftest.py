"""Shared test set-up: one torch thread (2-core CI, several processes), deterministic seeds."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
