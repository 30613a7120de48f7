"""Many client jobs as one batched computation (the simulator's `--backend batched`).

`train_jobs(model, frozen, plan, subset, shards, cfg, seeds)` returns what `train.train_job`
would return for each (shard, seed) pair, all starting from the same w* = `subset`: jobs a
coordinator dispatched at the same model version with the same plan. Per-client parameters are
stacked on a leading client dimension and activations are laid out with clients as channel
groups, (B, k * C, ...): a convolution with per-client weights is one grouped convolution,
GroupNorm gets k times the groups, the head is one batched product. So the Python and dispatch
overhead of a step is paid once per group of clients, not once per client, and each client's
arithmetic is the unbatched one. (`torch.func.vmap` does the same stacking generically, but its
gradients for har_cnn's first convolution were off by up to 0.6% where this layout's are exact
to float32 rounding, so the layout is spelled out here for the registered model family.)

What stays exactly as in `train_job`: each client's batches (the same seeded shuffle per epoch,
last partial batch kept, `max_steps`), SGD (with momentum) applied to its own w*, its gradient
variance v_i and mean loss. Ragged work: clients have different shard sizes, so different step
counts and a smaller last batch. Clients are ordered by step count (most first), so at step s
the clients still training are a prefix of the stack and are sliced, not copied; a short batch is
padded to the batch size with masked samples (loss weight 0). That padding is exact because
every registered model treats the samples of a batch independently (GroupNorm, never BatchNorm).
Frozen prefix: blocks before the earliest trainable layer depend only on frozen weights, so their
output is computed once per sample for the whole group (no autograd) instead of at every step.

Results equal `train_job`'s up to float32 rounding: most deltas to ~1e-7 (`TYPICAL_ATOL`).
A few jobs differ more: when a ReLU input lands within rounding of zero, the two kernels can
round it to different sides and that unit's gradient flips on or off; later steps carry the
difference on (on synthetic HAR, 2 of 100 five-step jobs, up to 6e-4 on deltas of ~1e-2). Float64
references agree with both within that margin, so neither side is "the" exact one.
tests/engine/test_batched.py holds every delta to `DELTA_ATOL`, most to `TYPICAL_ATOL`, and
losses and gradient variances to `REL_TOL`. The same inputs give bit-identical results run after
run.
Models: `FeaturesPoolHead` models built from the blocks in `_KNOWN` (every registered model);
`unsupported(model)` names what else it meets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from torch.func import functional_call
except ImportError:  # torch < 2.0
    from torch.nn.utils.stateless import functional_call  # type: ignore[no-redef,assignment]

from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.models import (
    ConvBlock1d,
    ConvBlock2d,
    FeaturesPoolHead,
    InvertedResidual,
    frozen_prefix,
    head_prefix,
)
from ftte_cli.engine.plan import MaskKind, Plan
from ftte_cli.engine.sparse import channel_index
from ftte_cli.engine.train import JobResult, _batches

if TYPE_CHECKING:
    from ftte_cli.config.recipe import TrainConfig

# Tolerances the tests hold the batched results to, against train_job (see the docstring).
DELTA_ATOL = 1e-3  # every delta entry
TYPICAL_ATOL = 1e-6  # most (client, tensor) pairs
REL_TOL = 1e-2  # loss and gradient variance
# Clients trained together at most: beyond ~16 HAR clients the stacked activations outgrow the
# caches and a step costs more per client (CPU per job vs one at a time, 100 and 500 clients:
# 0.59 and 0.47 at 16, 0.63 and 0.48 at 32, 0.72 and 0.61 at 64).
MAX_GROUP = 16
# Samples per no-grad forward of the frozen prefix.
PREFIX_BATCH = 256


@dataclass(frozen=True)
class _Schedule:
    """Every step's sample indices for a group of clients, sorted by step count (most first)."""

    order: List[int]  # position in the stack -> index of the client in the caller's list
    steps: List[int]  # steps of each stacked client (non-increasing)
    index: Tensor  # (Q_max, G, B) int64 rows of the group's concatenated inputs (pad: row 0)
    mask: Tensor  # (Q_max, G, B) float32 1 for real samples, 0 for padding
    count: Tensor  # (Q_max, G) float32 real samples per step (>= 1 where the client trains)


def _schedule(shards: Sequence[Dataset], seeds: Sequence[int], cfg_batch: int, epochs: int,
              max_steps: Optional[int]) -> _Schedule:
    """The batches train_job would draw for each client, laid out step by step."""
    per_client: List[List[Tensor]] = []
    for data, seed in zip(shards, seeds):
        n = len(data)
        gen = torch.Generator().manual_seed(int(seed))
        per_client.append(_batches(n, cfg_batch, epochs, max_steps, gen) if n else [])
    order = sorted(range(len(shards)), key=lambda i: -len(per_client[i]))  # stable
    steps = [len(per_client[i]) for i in order]
    offsets = [0]
    for data in shards:
        offsets.append(offsets[-1] + len(data))
    q_max, g = (steps[0] if steps else 0), len(order)
    index = torch.zeros((q_max, g, cfg_batch), dtype=torch.int64)
    mask = torch.zeros((q_max, g, cfg_batch), dtype=torch.float32)
    for pos, i in enumerate(order):
        for s, idx in enumerate(per_client[i]):
            index[s, pos, :len(idx)] = idx + offsets[i]
            mask[s, pos, :len(idx)] = 1.0
    count = mask.sum(dim=2).clamp_min(1.0)
    return _Schedule(order, steps, index, mask, count)


@torch.no_grad()
def _prefix_outputs(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, blocks: int
                    ) -> Tensor:
    """features[:blocks] of every row of `x`, PREFIX_BATCH rows at a time."""
    parts = [functional_call(model, dict(params), (x[i:i + PREFIX_BATCH],), {"stop": blocks})
             for i in range(0, int(x.shape[0]), PREFIX_BATCH)]
    return torch.cat(parts) if parts else x


def train_jobs(model: nn.Module, frozen: Mapping[str, Tensor], plan: Plan,
               subset: Mapping[str, Tensor], shards: Sequence[Dataset], cfg: TrainConfig,
               seeds: Sequence[int], max_group: int = MAX_GROUP,
               prefixed: Optional[Sequence[Tensor]] = None) -> List[JobResult]:
    """train_job(model, frozen, plan, subset, shards[i], cfg, seeds[i]) for every i, batched
    `max_group` clients at a time; results in the order of `shards`.

    `prefixed[i]`, when given, is `prefix_outputs(model, frozen, plan, shards[i].x)`: the frozen
    prefix's output for every sample of the shard, which a caller training the same shards
    again under the same frozen weights (the simulator) keeps instead of recomputing per job.
    """
    if len(shards) != len(seeds):
        raise ValueError(f"train_jobs: {len(shards)} shards but {len(seeds)} seeds")
    if prefixed is not None and len(prefixed) != len(shards):
        raise ValueError(f"train_jobs: {len(shards)} shards but {len(prefixed)} prefix outputs")
    problem = unsupported(model)
    if problem is not None:
        raise ValueError(problem)
    out: List[Optional[JobResult]] = [None] * len(shards)
    # group clients of similar step counts, so ragged groups waste little
    by_size = sorted(range(len(shards)), key=lambda i: -len(shards[i]))
    for start in range(0, len(by_size), max_group):
        part = by_size[start:start + max_group]
        results = _train_group(model, frozen, plan, subset, [shards[i] for i in part], cfg,
                               [seeds[i] for i in part],
                               None if prefixed is None else [prefixed[i] for i in part])
        for i, res in zip(part, results):
            out[i] = res
    return [r for r in out if r is not None]


def unsupported(model: nn.Module) -> Optional[str]:
    """None when `model` can be trained batched, else a one-line reason."""
    if not isinstance(model, FeaturesPoolHead):
        return f"batched training needs a features/pool/head model, not {type(model).__name__}"
    for name, module in model.features.named_modules():
        if not isinstance(module, _KNOWN):
            return f"batched training cannot stack clients through features.{name} " \
                   f"({type(module).__name__})"
    return None


def prefix_outputs(model: nn.Module, frozen: Mapping[str, Tensor], plan: Plan, x: Tensor
                   ) -> Tensor:
    """The input of the first trained block for every row of `x` (`x` itself when no leading
    block is frozen): what `train_jobs` computes for a group, kept by callers via `prefixed`."""
    first = frozen_prefix(model, plan.trainable_names())
    if not first:
        return x
    if not int(x.shape[0]):  # an empty shard: no rows, but the output's row shape
        return _prefix_outputs(model, frozen, x.new_zeros((1, *x.shape[1:])), first)[:0]
    return _prefix_outputs(model, frozen, x, first)


def _train_group(model: nn.Module, frozen: Mapping[str, Tensor], plan: Plan,
                 subset: Mapping[str, Tensor], shards: Sequence[Dataset], cfg: TrainConfig,
                 seeds: Sequence[int], prefixed: Optional[Sequence[Tensor]] = None
                 ) -> List[JobResult]:
    names = list(plan.subset_shapes())
    if not names:
        raise ValueError(f"plan for {plan.model} has no trainable parameters")
    sched = _schedule(shards, seeds, cfg.batch_size, cfg.epochs, cfg.max_steps)
    g = len(shards)
    start = {n: subset[n].detach().to(torch.float32) for n in names}
    stack = {n: _repeat(start[n], g) for n in names}  # (G, *shape), schedule order
    params = _Params(plan, frozen, g)
    momentum = {n: torch.zeros_like(t) for n, t in stack.items()} if cfg.momentum > 0 else {}
    gsum = {n: torch.zeros_like(t) for n, t in stack.items()}
    sq = torch.zeros(g, dtype=torch.float64)
    loss_sum = torch.zeros(g, dtype=torch.float64)
    ys = torch.cat([d.y for d in shards])
    first = frozen_prefix(model, plan.trainable_names())
    if prefixed is not None:  # the caller keeps them: once per sample and run
        xs = torch.cat(list(prefixed))
    else:
        xs = torch.cat([d.x for d in shards])
        if first:  # frozen blocks: once per sample, not once per step
            xs = _prefix_outputs(model, frozen, xs, first)
    active = g
    for s in range(sched.index.shape[0]):
        while sched.steps[active - 1] <= s:
            active -= 1
        leaves = {n: t[:active].detach().requires_grad_(True) for n, t in stack.items()}
        losses = _losses(model, params.at(leaves, active), xs, ys, sched, s, active, first)
        grads = torch.autograd.grad(losses.sum(), [leaves[n] for n in names])
        with torch.no_grad():
            _sgd([stack[n][:active] for n in names], grads,
                 [momentum[n][:active] for n in names] if momentum else [], cfg.lr,
                 cfg.momentum)
            norms = torch.stack([gr.flatten(1).norm(dim=1) for gr in grads])  # (T, k)
            sq[:active] += norms.double().pow(2).sum(dim=0)
            for n, gr in zip(names, grads):
                gsum[n][:active].add_(gr)
            loss_sum[:active] += losses.detach().double()
    return _results(sched, shards, names, stack, start, gsum, sq, loss_sum)


def _losses(model: nn.Module, p: Mapping[str, Tensor], xs: Tensor, ys: Tensor,
            sched: _Schedule, s: int, k: int, first: int) -> Tensor:
    """(k,) each client's mean cross-entropy over its real samples of step s."""
    rows = sched.index[s, :k].t()  # (B, k): gathered batch-major, so no transpose copy
    x = xs[rows]  # (B, k, C, ...)
    x = x.reshape(x.shape[0], -1, *x.shape[3:])  # (B, k*C, ...), a view
    logits = _forward(model, p, x, first, k)  # (B, k, O)
    y = ys[rows]  # (B, k)
    ce = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), reduction="none").view_as(y)
    return (ce * sched.mask[s, :k].t()).sum(0) / sched.count[s, :k]  # padding weighs 0


def _repeat(t: Tensor, g: int) -> Tensor:
    """(G, *t.shape): `t` once per client, contiguous."""
    return t.unsqueeze(0).repeat(g, *([1] * t.dim()))


class _Params:
    """Per-client parameters of every model tensor for a step: trainable ones from the stack,
    frozen ones repeated once per group (slicing the first k clients is then a view)."""

    def __init__(self, plan: Plan, frozen: Mapping[str, Tensor], g: int) -> None:
        self.plan = plan
        self.index = channel_index(plan)
        self.frozen = {n: frozen[n].detach() for n in plan.masks}
        self.repeated = {n: _repeat(self.frozen[n], g) for n, m in plan.masks.items()
                         if m.kind != MaskKind.full}

    def at(self, leaves: Mapping[str, Tensor], k: int) -> Dict[str, Tensor]:
        """name -> (k, *shape) for the first k clients, differentiable in `leaves` only."""
        out: Dict[str, Tensor] = {}
        for name, mask in self.plan.masks.items():
            if mask.kind == MaskKind.full:
                out[name] = leaves[name]
            elif mask.kind == MaskKind.channels:
                # (k, out, in, *ks).index_copy(2, idx, (k, out, len(idx), *ks))
                out[name] = self.repeated[name][:k].index_copy(2, self.index[name], leaves[name])
            else:
                out[name] = self.repeated[name][:k]
        return out


# Layout of activations while clients are stacked: (B, k * C, *spatial), client j owning
# channels [j*C, (j+1)*C). Convolutions become grouped convolutions (groups x k) and GroupNorm
# gets k times the groups, so every op is one ordinary kernel call whose per-client arithmetic
# is exactly the unbatched one.
_KNOWN = (nn.Sequential, ConvBlock1d, ConvBlock2d, InvertedResidual, nn.Conv1d, nn.Conv2d,
          nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.Identity)


def _forward(model: nn.Module, p: Mapping[str, Tensor], h: Tensor, first: int, k: int
             ) -> Tensor:
    """Logits (B, k, classes) of k stacked clients from the input of block `first`."""
    assert isinstance(model, FeaturesPoolHead)
    for i in range(first, len(model.features)):
        h = _module(model.features[i], f"features.{i}", p, h, k)
    pooled = model.pool(h).flatten(1)  # (B, k*C)
    pooled = pooled.view(pooled.shape[0], k, -1)  # (B, k, C)
    head = head_prefix(model)
    logits = torch.einsum("bkc,koc->bko", pooled, p[f"{head}.weight"])
    return logits + p[f"{head}.bias"]  # (B, k, O)


def _module(m: nn.Module, name: str, p: Mapping[str, Tensor], h: Tensor, k: int) -> Tensor:
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        w = p[f"{name}.weight"]  # (k, out, in/groups, *ks)
        bias = p[f"{name}.bias"].reshape(-1) if m.bias is not None else None
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        return conv(h, w.reshape(-1, *w.shape[2:]), bias, m.stride, m.padding, m.dilation,
                    m.groups * k)
    if isinstance(m, nn.GroupNorm):
        w, b = p[f"{name}.weight"], p[f"{name}.bias"]
        return F.group_norm(h, m.num_groups * k, w.reshape(-1), b.reshape(-1), m.eps)
    if isinstance(m, InvertedResidual):
        out = _module(m.block, f"{name}.block", p, h, k)
        return h + out if m.residual else out
    if isinstance(m, (ConvBlock1d, ConvBlock2d, nn.Sequential)):
        for child, sub in m.named_children():
            h = _module(sub, f"{name}.{child}", p, h, k)
        return h
    return m(h)  # elementwise: ReLU, ReLU6, Identity


@torch.no_grad()
def _sgd(p: List[Tensor], grads: Sequence[Tensor], bufs: List[Tensor], lr: float,
         momentum: float) -> None:
    """train._sgd_step's semantics on the stacked clients, in place."""
    if bufs:
        for buf, g in zip(bufs, grads):
            buf.mul_(momentum).add_(g)
        grads = bufs
    torch._foreach_add_(p, list(grads), alpha=-lr)


def _results(sched: _Schedule, shards: Sequence[Dataset], names: List[str],
             stack: Dict[str, Tensor], start: Dict[str, Tensor], gsum: Dict[str, Tensor],
             sq: Tensor, loss_sum: Tensor) -> List[JobResult]:
    out: List[Optional[JobResult]] = [None] * len(shards)
    for pos, i in enumerate(sched.order):
        q = sched.steps[pos]
        if q:
            norms = torch.stack([gsum[n][pos].norm() for n in names]).double()
            variance = max(0.0, float(sq[pos]) / q - float(norms.pow(2).sum()) / q**2)
        else:
            variance = 0.0
        delta = {n: stack[n][pos] - start[n] for n in names}
        out[i] = JobResult(delta=delta, num_samples=len(shards[i]), grad_variance=variance,
                           steps=q, loss=float(loss_sum[pos]) / q if q else 0.0,
                           peak_memory=None)
    return [r for r in out if r is not None]

