"""Evaluation of a run's global model on a fixed test set, with the frozen prefix computed once.

A coordinator evaluates every `eval_every` versions, and under a sparse plan most of the model
never changes: the blocks before the earliest trainable layer (`models.frozen_prefix`) hold the
same weights in every version. `PlanEvaluator(model, plan, data)` is `train.evaluate(model,
params, data)` that keeps those blocks' output for every evaluation batch and runs only the rest
of the model at each call. Same batches, same kernels, same shapes: the result equals
`evaluate`'s bit for bit (tests/engine/test_coordinator_speed.py).

The cache is keyed on the storage of the prefix's tensors (a frozen tensor of a new version is a
view of the same storage; the coordinator never changes parameters in place) and holds them, so
a key is never reused by another allocation while it is cached. Parameters that differ (a
checkpoint restored, another model) simply recompute the prefix.
Device path rules hold: torch and stdlib only, Python 3.9.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from torch.func import functional_call
except ImportError:  # torch < 2.0
    from torch.nn.utils.stateless import functional_call  # type: ignore[no-redef,assignment]

from ftte_cli.engine.models import feature_block, frozen_prefix
from ftte_cli.engine.plan import Plan
from ftte_cli.engine.train import EVAL_BATCH, evaluate

if TYPE_CHECKING:
    from ftte_cli.engine.data import Dataset

# Largest prefix output kept (bytes); past it every call runs the whole model, as `evaluate`.
CACHE_MAX_BYTES = 512 * 2**20
Key = Tuple[Tuple[int, Tuple[int, ...], Tuple[int, ...]], ...]


class PlanEvaluator:
    """(accuracy, mean cross-entropy) of `model` with full `params` on `data`; see the module
    docstring. One instance per (model, plan, test set); call it with each version's params."""

    def __init__(self, model: nn.Module, plan: Plan, data: Dataset,
                 batch_size: int = EVAL_BATCH) -> None:
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.first = frozen_prefix(model, plan.trainable_names())
        self.prefix_names = [n for n in plan.masks
                             if (b := feature_block(n)) is not None and b < self.first]
        self._key: Optional[Key] = None
        self._held: List[Tensor] = []  # the prefix tensors of the cached key, kept alive
        self._outputs: List[Tensor] = []  # features[:first] of each evaluation batch
        self._too_big = False  # the prefix outputs would pass CACHE_MAX_BYTES

    def __call__(self, params: Mapping[str, Tensor]) -> Tuple[float, float]:
        n = int(self.data.y.shape[0])
        if self.first == 0 or n == 0 or self._too_big:
            return evaluate(self.model, params, self.data, self.batch_size)
        if not self._cached(params):
            return evaluate(self.model, params, self.data, self.batch_size)
        was_training = self.model.training
        self.model.eval()
        correct, loss_sum = 0, 0.0
        full = dict(params)
        with torch.no_grad():
            for i, start in enumerate(range(0, n, self.batch_size)):
                y = self.data.y[start:start + self.batch_size].to(self._outputs[i].device)
                logits = functional_call(self.model, full, (self._outputs[i],),
                                         {"start": self.first})
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
        self.model.train(was_training)
        loss = loss_sum / n
        return correct / n, loss if math.isfinite(loss) else float("inf")

    def _cached(self, params: Mapping[str, Tensor]) -> bool:
        """True when the prefix outputs for these params are ready (computed now if needed)."""
        held = [params[name] for name in self.prefix_names]
        key: Key = tuple((t.data_ptr(), tuple(t.shape), tuple(t.stride())) for t in held)
        if key == self._key:
            return True
        self._key, self._held, self._outputs = None, [], []
        device = next(iter(params.values())).device
        x = self.data.x
        size = int(x.shape[0]) * _prefix_numel(self.model, self.first, x[:1].to(device),
                                               params) * 4
        if size > CACHE_MAX_BYTES:
            self._too_big = True
            return False
        was_training = self.model.training
        self.model.eval()
        full = dict(params)
        with torch.no_grad():
            self._outputs = [functional_call(self.model, full,
                                             (x[s:s + self.batch_size].to(device),),
                                             {"stop": self.first})
                             for s in range(0, int(x.shape[0]), self.batch_size)]
        self.model.train(was_training)
        self._key, self._held = key, held
        return True


def _prefix_numel(model: nn.Module, first: int, one: Tensor, params: Mapping[str, Tensor]
                  ) -> int:
    """Values in features[:first]'s output for one sample."""
    with torch.no_grad():
        out = functional_call(model, dict(params), (one,), {"stop": first})
    return int(out[0].numel())
