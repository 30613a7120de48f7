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
        The frozen prefix train_job runs in micro-batches (train.chunked_prefix) holds its output
        for the whole batch plus one micro-batch's transients (PREFIX_CHUNK / batch of them).

All figures are bytes of float32 tensors at the recipe's batch size on CPU. A plan with a
micro-batch (plan.micro_batch) runs each step in passes of that many samples and accumulates the
gradient: activations and forward buffers are then those of one pass, and the gradient sum gains
one tensor's transient (accumulation_transient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ftte_cli.engine import sparse
from ftte_cli.engine.models import frozen_prefix
from ftte_cli.engine.plan import BYTES_PER_VALUE, Plan
from ftte_cli.engine.train import PREFIX_CHUNK, chunked_prefix


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
    micro = plan.pass_size(batch_size)
    activations, buffers = measure_forward(model, plan, micro, input_shape)
    parts = dict(
        params=2 * subset_bytes,
        grads=subset_bytes + (accumulation_transient(plan) if micro < batch_size else 0),
        optimizer=optimizer_slots(momentum) * subset_bytes,
        activations=activations,
        frozen=frozen_bytes,
        forward_buffers=buffers,
    )
    return MemoryEstimate(total=sum(parts.values()), **parts)


def accumulation_transient(plan: Plan) -> int:
    """Bytes beside the running gradient sum while micro-batches accumulate: backward adds each
    tensor's fresh gradient into .grad in place, so at most the largest tensor of w* is doubled."""
    sizes = [BYTES_PER_VALUE * math.prod(s) for s in plan.subset_shapes().values()]
    return max(sizes, default=0)


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


@dataclass(frozen=True)
class _Event:
    """One leaf module's forward, as the memory trace sees it."""

    layer: int  # index (forward order) of the parameter-owning layer this module belongs to
    saved_so_far: int  # bytes saved by autograd up to and including this module
    live: int  # its input + output bytes
    unsaved: int  # the part of `live` autograd did not save
    scratch: int  # a convolution's extra copy
    grad_flows: bool  # whether the backward pass goes through this module
    block: int  # index of the model.features block holding this module; -1 outside features


@dataclass(frozen=True)
class ForwardTrace:
    """Saved tensors and per-module events of one training forward (see measure_forward)."""

    saved: Tuple[Tuple[int, int], ...]  # (last layer saving it, bytes) per distinct storage
    events: Tuple[_Event, ...]
    input_bytes: int
    input_saved: bool
    batch_size: int
    prefix: int  # feature blocks the traced plan runs in micro-batches (train.chunked_prefix)
    owner_block: Tuple[int, ...]  # per layer: its features block; len(features) outside them
    per_sample_blocks: int  # leading feature blocks that may be chunked at all
    block_input: Tuple[int, ...]  # input bytes of each features block at the full batch

    def _chunk_peak(self, e: _Event, prefix: int) -> int:
        """Peak while a micro-batch runs through a prefix module: the prefix output held for the
        whole batch plus this module's transients at PREFIX_CHUNK samples."""
        share = min(PREFIX_CHUNK, self.batch_size) / self.batch_size
        return self.block_input[prefix] + int((e.live + e.scratch) * share)

    def cost(self) -> Tuple[int, int]:
        """(saved activation bytes, forward buffer bytes) of the traced plan."""
        activations = sum(b for _, b in self.saved)
        peaks = [0]
        for e in self.events:
            if 0 <= e.block < self.prefix:
                peaks.append(self._chunk_peak(e, self.prefix))
                continue
            peaks.append(e.saved_so_far + e.unsaved + e.scratch)
            if e.grad_flows:
                # backward through this module: what was saved up to here is still held (later
                # tensors are freed), plus grad_in + grad_out and, for a conv, their scratch copies
                peaks.append(e.saved_so_far + (2 * e.live if e.scratch else e.live))
        # a chunked prefix gathers its input a micro-batch at a time: counted in its events' live
        extra = 0 if self.input_saved or self.prefix else self.input_bytes
        return activations, extra + max(0, max(peaks) - activations)

    def cost_from(self, d: int) -> Tuple[int, int]:
        """cost() estimated for a plan whose earliest trainable layer is `d`, from a dense trace.

        Layers before d save nothing and only hold their input and output; layers from d on are
        taken to save what they saved in the dense trace (the search's estimate; the chosen plan
        is then measured exactly).
        """
        before = sum(b for layer, b in self.saved if layer < d)
        activations = sum(b for _, b in self.saved) - before
        prefix = 0
        if self.batch_size > PREFIX_CHUNK and d < len(self.owner_block):
            prefix = min(self.owner_block[d], self.per_sample_blocks)
        peaks = [0]
        for e in self.events:
            if 0 <= e.block < prefix:
                peaks.append(self._chunk_peak(e, prefix))
                continue
            if e.layer < d:
                peaks.append(e.live + e.scratch)
                continue
            held = e.saved_so_far - before
            peaks.append(held + e.unsaved + e.scratch)
            peaks.append(held + (2 * e.live if e.scratch else e.live))
        extra = 0 if prefix else (self.input_bytes if d > 0 or not self.input_saved else 0)
        return activations, extra + max(0, max(peaks) - activations)


def trace_forward(model: nn.Module, plan: Plan, batch_size: int,
                  input_shape: Tuple[int, ...]) -> ForwardTrace:
    """Run one training forward (random batch) under saved_tensors_hooks and record its memory."""
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    trainable = {k: v.clone().requires_grad_(True)
                 for k, v in sparse.extract(frozen, plan).items()}
    param_keys: Set[Tuple[int, int]] = {_storage_key(t) for t in frozen.values()}
    param_keys |= {_storage_key(t) for t in trainable.values()}
    saved: Dict[Tuple[int, int], Tuple[int, int]] = {}  # storage -> (layer, bytes)
    events: List[_Event] = []
    current = [0]
    features = getattr(model, "features", None)
    blocks = list(features) if isinstance(features, nn.Sequential) else []
    block_of = {id(m): i for i, b in enumerate(blocks) for m in b.modules()}
    block_input = [0] * (len(blocks) + 1)

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in param_keys:  # attributed to the last layer saving it: saved from there on
            saved[key] = (current[0], key[1])
        return t

    def on_forward(module: nn.Module, inputs: object, output: object) -> None:
        tensors = {_storage_key(t): t.requires_grad for t in (*_tensors(inputs), *_tensors(output))}
        events.append(_Event(
            layer=current[0],
            saved_so_far=sum(b for _, b in saved.values()),
            live=sum(size for _, size in tensors),
            unsaved=sum(key[1] for key in tensors if key not in saved),
            scratch=conv_workspace(module, inputs, output),
            grad_flows=any(tensors.values()),
            block=block_of.get(id(module), -1),
        ))

    def on_block(index: int, inputs: object) -> None:
        block_input[index] = sum(t.numel() * t.element_size() for t in _tensors(inputs))

    hooks = []
    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    for index, module in enumerate(owners):
        hooks.append(module.register_forward_pre_hook(
            lambda _m, _i, index=index: current.__setitem__(0, index)))
    hooks += [m.register_forward_hook(on_forward) for m in model.modules()
              if next(m.children(), None) is None]
    for index, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(
            lambda _m, inputs, index=index: on_block(index, inputs)))
    # the prefix may span every block: its output is then the features' output
    if isinstance(features, nn.Sequential) and blocks:
        hooks.append(features.register_forward_hook(
            lambda _m, _i, output: on_block(len(blocks), output)))
    x = torch.randn((batch_size, *input_shape), dtype=torch.float32)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = functional_call(model, sparse.materialize(frozen, plan, trainable), (x,))
            F.cross_entropy(logits, torch.zeros(batch_size, dtype=torch.int64))
    finally:
        for h in hooks:
            h.remove()
    return ForwardTrace(
        tuple(saved.values()), tuple(events), x.numel() * x.element_size(),
        _storage_key(x) in saved, batch_size=batch_size,
        prefix=chunked_prefix(model, plan, batch_size),
        owner_block=tuple(block_of.get(id(m), len(blocks)) for m in owners),
        per_sample_blocks=frozen_prefix(model, []), block_input=tuple(block_input))


def measure_forward(model: nn.Module, plan: Plan, batch_size: int,
                    input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(saved activation bytes, forward buffer bytes) of one training forward under `plan`."""
    return trace_forward(model, plan, batch_size, input_shape).cost()
