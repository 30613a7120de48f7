"""The server optimiser: how the aggregated pseudo-gradient moves w*, for every strategy.

A strategy reduces its updates to one pseudo-gradient d_t over the trainable subset (FedBuff and
FTTE: the normalised sum of weighted deltas; FedAvg: the n-weighted mean delta; FedAsync:
alpha_t (x_new - x)). The plain step is w_{t+1} = w_t + eta_g d_t; FedAvgM keeps a momentum
buffer and FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", no bias correction)
scales each coordinate by its running second moment. Formulas are pure functions over tensor
dicts, tested against hand-computed numbers; `ServerOptimizer` only holds their state between
versions (checkpointed with the coordinator). A half-life h > 0 decays the step of each of them:
the step from version t to t + 1 uses lr * 0.5^(t / h) (`decayed_lr`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ftte_cli.config.recipe import ServerOptimizerConfig
from ftte_cli.engine.strategies import aggregate

Tensors = Dict[str, Tensor]


@torch.no_grad()
def momentum_step(current: Tensors, grad: Tensors, buf: Optional[Tensors], lr: float,
                  momentum: float) -> Tuple[Tensors, Tensors]:
    """FedAvgM: m_t = momentum * m_{t-1} + d_t (m_0 = 0); w_{t+1} = w_t + lr * m_t.

    Returns (w_{t+1}, m_t); nothing is changed in place.
    """
    new_buf = {n: grad[n] if buf is None else momentum * buf[n] + grad[n] for n in current}
    return {n: current[n] + lr * new_buf[n] for n in current}, new_buf


@torch.no_grad()
def adam_step(current: Tensors, grad: Tensors, m: Optional[Tensors], v: Optional[Tensors],
              lr: float, beta1: float, beta2: float, tau: float
              ) -> Tuple[Tensors, Tensors, Tensors]:
    """FedAdam: m_t = beta1 m_{t-1} + (1 - beta1) d_t, v_t = beta2 v_{t-1} + (1 - beta2) d_t^2
    (m_0 = v_0 = 0), w_{t+1} = w_t + lr * m_t / (sqrt(v_t) + tau). Returns (w_{t+1}, m_t, v_t)."""
    new_m = {n: (1 - beta1) * grad[n] + (0.0 if m is None else beta1 * m[n]) for n in current}
    new_v = {n: (1 - beta2) * grad[n] * grad[n] + (0.0 if v is None else beta2 * v[n])
             for n in current}
    new_w = {n: current[n] + lr * new_m[n] / (new_v[n].sqrt() + tau) for n in current}
    return new_w, new_m, new_v


def decayed_lr(lr: float, step: int, halflife: float) -> float:
    """lr * 0.5^(step / halflife) for the step from version `step` (0 first); lr when h is 0."""
    if halflife <= 0:
        return lr
    return lr * 0.5 ** (step / halflife)


class ServerOptimizer:
    """Applies the recipe's server optimiser and keeps its state (none, constant: stateless)."""

    def __init__(self, cfg: ServerOptimizerConfig, server_lr: float,
                 halflife: float = 0.0) -> None:
        self.cfg = cfg
        self.lr = cfg.step_size(server_lr)
        self.halflife = halflife  # versions; 0: a constant step
        self.steps = 0
        self._slots: Dict[str, Tensors] = {}  # "m" (momentum / first moment), "v" (second)

    @property
    def plain(self) -> bool:
        """True for the plain constant step (no state, w + eta_g * d)."""
        return self.cfg.kind == "none" and self.halflife <= 0

    def step(self, current: Tensors, grad: Tensors) -> Tensors:
        """w_{t+1} from w_t and the pseudo-gradient d_t (a new dict)."""
        lr = decayed_lr(self.lr, self.steps, self.halflife)
        self.steps += 1
        if self.cfg.kind == "momentum":
            new, self._slots["m"] = momentum_step(current, grad, self._slots.get("m"), lr,
                                                  self.cfg.momentum)
            return new
        if self.cfg.kind == "adam":
            new, self._slots["m"], self._slots["v"] = adam_step(
                current, grad, self._slots.get("m"), self._slots.get("v"), lr,
                self.cfg.beta1, self.cfg.beta2, self.cfg.tau)
            return new
        return aggregate.server_step(current, grad, lr)

    def state(self) -> Tuple[Tensors, Dict[str, Any]]:
        """Tensors `<slot>/<name>` and meta (the step count, which a decay needs); empty for the
        plain constant step (checkpoints unchanged)."""
        if self.plain:
            return {}, {}
        tensors = {f"{slot}/{n}": t for slot, ts in self._slots.items() for n, t in ts.items()}
        names: Dict[str, List[str]] = {slot: list(ts) for slot, ts in self._slots.items()}
        return tensors, {"kind": self.cfg.kind, "steps": self.steps, "names": names}

    def load_state(self, tensors: Tensors, meta: Dict[str, Any]) -> None:
        """Inverse of `state` (safetensors sorts names: the order comes from meta)."""
        if not meta:
            return
        if meta["kind"] != self.cfg.kind:
            raise ValueError(f"checkpoint has server optimiser {meta['kind']!r}, the recipe "
                             f"{self.cfg.kind!r}")
        self.steps = int(meta["steps"])
        self._slots = {slot: {n: tensors[f"{slot}/{n}"] for n in names}
                       for slot, names in meta["names"].items()}
