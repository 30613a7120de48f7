"""A coordinator on a tiny two-layer model and deterministic fake updates (tensors only)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ftte_cli.config.recipe import StrategyConfig
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig, Job, Update
from ftte_cli.engine.plan import FROZEN, FULL, MaskKind, ParamMask, Plan, build_plan
from ftte_cli.engine.strategies import make_strategy

Tensors = Dict[str, Tensor]


def tiny_model() -> nn.Module:
    """Linear(4, 3) -> Linear(3, 2), seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def tiny_plan(model: nn.Module) -> Plan:
    """A sparse plan over `tiny_model`: channel, frozen and full masks."""
    # 0.weight: input channels 1 and 3 only; 0.bias frozen; the head fully trained
    return build_plan(model, {"0.weight": ParamMask(MaskKind.channels, (1, 3)),
                              "0.bias": FROZEN, "1.weight": FULL, "1.bias": FULL})


def coordinator(name: str = "ftte", k: int = 2, c: int = 4, clients: int = 6,
                evaluate: object = None, **cfg: object) -> Coordinator:
    """A coordinator over `clients` clients (c0, c1, ...), buffer k, concurrency c, seed 7."""
    model = tiny_model()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    scfg = StrategyConfig(name=name, buffer_size=k, max_concurrency=c, **cfg)  # type: ignore[arg-type]
    return Coordinator(params, tiny_plan(model), make_strategy(scfg),
                       {f"c{i}": 10 + i for i in range(clients)},
                       CoordinatorConfig(strategy=scfg, eval_every=1), seed=7,
                       evaluate=evaluate)  # type: ignore[arg-type]


def fake_delta(job: Job, scale: float = 0.1) -> Tensors:
    """A deterministic 'training result' that depends on the job's seed and its w*."""
    gen = torch.Generator().manual_seed(job.seed)
    return {n: -scale * t + 0.01 * torch.randn(t.shape, generator=gen)
            for n, t in job.subset.items()}


def fake_update(job: Job, delta: Optional[Tensors] = None, n: int = 10, v: float = 1.0) -> Update:
    """The update a client would send for `job` (its fake delta unless one is given)."""
    return Update(job.job_id, job.client_id, job.version,
                  fake_delta(job) if delta is None else delta, n, v)
