"""Training memory of a plan (FTTE.md section 1), measured rather than modelled.

total = frozen weights (every parameter, held once by the client)
      + w* twice (the received subset and the trained copy) + its gradient
      + optimizer slots (the running gradient sum behind v_i, plus momentum when enabled)
      + saved activations (one real forward under saved_tensors_hooks, each storage once,
        parameter storages excluded because they are counted above)
      + forward buffers: the input batch (unless saved) plus the peak beyond the saved tensors,
        taken over every leaf module in forward order, as seen by the forward pass (saved so far
        + its live input and output) and by the backward pass (saved up to this layer + grad_in
        + grad_out); a convolution adds its scratch copy (see conv_workspace).

All figures are bytes of float32 tensors at the recipe's batch size on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ftte_cli.engine import sparse
from ftte_cli.engine.plan import BYTES_PER_VALUE, Plan


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of one plan at one batch size, in bytes."""

    params: int  # w*: the received subset and the copy being trained
    grads: int  # one gradient of w*
    optimizer: int  # running gradient sum for v_i, plus a momentum buffer when momentum > 0
    activations: int  # tensors autograd saves for the backward pass (distinct storages)
    frozen: int  # every parameter of the model, held once
    forward_buffers: int  # input batch + largest transient input+output of one layer
    total: int  # the sum of the above

    @property
    def training_overhead(self) -> int:
        """Everything a training step adds on top of the loaded model."""
        return self.total - self.frozen


def optimizer_slots(momentum: float) -> int:
    """Per-value optimizer slots of train_job: the gradient sum for v_i, plus momentum if used."""
    return 1 + (1 if momentum > 0 else 0)


def training_memory(model: nn.Module, plan: Plan, batch_size: int, input_shape: Tuple[int, ...],
                    momentum: float = 0.0) -> MemoryEstimate:
    """Measure the training memory of `plan` with one forward pass of a random batch."""
    subset_bytes = BYTES_PER_VALUE * plan.trainable_params
    frozen_bytes = BYTES_PER_VALUE * plan.total_params
    activations, buffers = measure_forward(model, plan, batch_size, input_shape)
    parts = dict(
        params=2 * subset_bytes,
        grads=subset_bytes,
        optimizer=optimizer_slots(momentum) * subset_bytes,
        activations=activations,
        frozen=frozen_bytes,
        forward_buffers=buffers,
    )
    return MemoryEstimate(total=sum(parts.values()), **parts)


def _storage_key(t: Tensor) -> Tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _tensors(obj: object) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)


def conv_workspace(module: nn.Module, inputs: object, output: object) -> int:
    """Scratch memory of a CPU convolution: oneDNN reorders the larger of input and output.

    Measured as peak RSS over single conv calls (1-D and 2-D, 1x1, 3x3, depthwise, strided):
    the extra beyond input and output was max(input, output) bytes within a few percent.
    """
    if not isinstance(module, nn.modules.conv._ConvNd):
        return 0
    sizes = [t.numel() * t.element_size() for t in (*_tensors(inputs), *_tensors(output))]
    return max(sizes, default=0)


def measure_forward(model: nn.Module, plan: Plan, batch_size: int,
                    input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(saved activation bytes, forward buffer bytes) of one training forward under `plan`."""
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    trainable = {k: v.clone().requires_grad_(True)
                 for k, v in sparse.extract(frozen, plan).items()}
    param_keys: Set[Tuple[int, int]] = {_storage_key(t) for t in frozen.values()}
    param_keys |= {_storage_key(t) for t in trainable.values()}
    saved: Dict[Tuple[int, int], int] = {}
    forward_peak: List[int] = [0]  # at each layer: saved so far + live unsaved tensors + scratch
    backward_peak: List[int] = [0]  # the same moment seen from the backward pass

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in param_keys:
            saved[key] = key[1]
        return t

    def on_forward(module: nn.Module, inputs: object, output: object) -> None:
        live = {_storage_key(t): t.requires_grad for t in (*_tensors(inputs), *_tensors(output))}
        unsaved = sum(size for (ptr, size) in live if (ptr, size) not in saved)
        extra = conv_workspace(module, inputs, output)
        so_far = sum(saved.values())
        forward_peak.append(so_far + unsaved + extra)
        if any(live.values()):
            # backward through this layer: what was saved up to here is still held (later
            # layers' tensors are already freed), plus grad_in + grad_out and the scratch copy
            backward_peak.append(so_far + 2 * sum(size for _, size in live) if extra
                                 else so_far + sum(size for _, size in live))

    x = torch.randn((batch_size, *input_shape), dtype=torch.float32)
    hooks = [m.register_forward_hook(on_forward) for m in model.modules()
             if next(m.children(), None) is None]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = functional_call(model, sparse.materialize(frozen, plan, trainable), (x,))
            F.cross_entropy(logits, torch.zeros(batch_size, dtype=torch.int64))
    finally:
        for h in hooks:
            h.remove()
    activations = sum(saved.values())
    input_bytes = 0 if _storage_key(x) in saved else x.numel() * x.element_size()
    transient = max(0, max(*forward_peak, *backward_peak) - activations)
    return activations, input_bytes + transient
