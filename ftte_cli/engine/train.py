"""The client job (FTTE.md section 3): train w* of a plan on local data, return the delta.

The same function runs in the simulator (thousands of jobs in one process) and on devices, so it
does the per-job set-up once (index tensors, trainable leaves) and keeps the step loop lean.
Device path: torch + safetensors + stdlib, Python 3.9; no clock, randomness from `seed`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from torch.func import functional_call
except ImportError:  # torch < 2.0, as still found on some Jetson images
    from torch.nn.utils.stateless import functional_call  # type: ignore[no-redef,assignment]

from ftte_cli.engine.models import frozen_prefix
from ftte_cli.engine.plan import Plan
from ftte_cli.engine.sparse import channel_index, materialize

if TYPE_CHECKING:
    from ftte_cli.config.recipe import TrainConfig
    from ftte_cli.engine.data import Dataset

# Evaluation batch: beyond ~64 images of 32x32 a conv net's activations outgrow glibc's mmap
# threshold, and every batch pays mmap + page faults (mobilenet_v2 0.5 on 256 images: 3.2 s at
# 512, 1.0 s at 64); small inputs like HAR windows lose little at 64.
EVAL_BATCH = 64
# Micro-batch of the frozen prefix (FTTE.md section 1): layers before the earliest trainable one
# need no backward, so they run without autograd a few samples at a time and only their output
# is held for the whole batch; 4 samples keep the prefix's transients a quarter of batch 16's.
PREFIX_CHUNK = 4
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


@dataclass(frozen=True)
class JobResult:
    """What a client sends back after a job."""

    delta: Dict[str, Tensor]  # w*_after - w*_t, over the plan's mask only
    num_samples: int  # n_i: samples the client holds
    grad_variance: float  # v_i = (1/Q) sum_q ||g_q - g_mean||^2 over w* minibatch gradients
    steps: int  # Q: optimizer steps taken
    loss: float  # mean training loss over the steps
    peak_memory: Optional[int]  # peak RSS of the process during the job, bytes; None if unknown


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) for this process; False where not possible."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> Optional[int]:
    """Peak resident memory of this process in bytes (VmHWM), or None off Linux."""
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


class DeviceUnavailable(RuntimeError):
    """The recipe asks for an accelerator this torch cannot use; the message says why."""


def resolve_device(name: str) -> torch.device:
    """cpu | cuda | auto -> a torch.device. auto picks CUDA (a Jetson's GPU), then Apple's MPS,
    then the CPU; cuda without a usable CUDA device raises DeviceUnavailable."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)  # absent on old (Jetson) torch builds
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = ("this torch was built without CUDA" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise DeviceUnavailable(f"train.device: cuda requested but {why} (torch "
                                f"{torch.__version__}); use device: auto or cpu")
    return torch.device(name)


def _reset_accelerator_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _accelerator_peak(device: torch.device) -> int:
    """Bytes the job held on the accelerator. Counted on top of RSS: on a Jetson CPU and GPU
    share one DRAM, so both come out of the same memory budget."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def _batches(n: int, batch_size: int, epochs: int, max_steps: Optional[int],
             gen: torch.Generator) -> List[Tensor]:
    """Index batches for the whole job: a seeded shuffle per epoch, last partial batch kept."""
    out: List[Tensor] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        out.extend(perm.split(batch_size))
        if max_steps is not None and len(out) >= max_steps:
            return out[:max_steps]
    return out


class _GradStats:
    """Running sums for v = (1/Q) sum ||g_q||^2 - ||(1/Q) sum g_q||^2, without storing gradients."""

    def __init__(self, like: List[Tensor]) -> None:
        self.sum = [torch.zeros_like(t) for t in like]
        self.sq = 0.0
        self.count = 0

    def add(self, grads: Tuple[Tensor, ...]) -> None:
        torch._foreach_add_(self.sum, grads)
        self.sq += float(torch.stack(torch._foreach_norm(grads)).double().pow(2).sum())
        self.count += 1

    def variance(self) -> float:
        if self.count == 0:
            return 0.0
        norms = torch.stack(torch._foreach_norm(self.sum)).double()
        mean_sq = float(norms.pow(2).sum()) / self.count**2
        return max(0.0, self.sq / self.count - mean_sq)


def train_job(model: nn.Module, frozen: Mapping[str, Tensor], plan: Plan,
              subset: Mapping[str, Tensor], data: Dataset, cfg: TrainConfig,
              seed: int, *, seed_global_rng: bool = True,
              measure_memory: bool = True) -> JobResult:
    """Train w* = `subset` for cfg.epochs (or cfg.max_steps) with SGD; frozen is never touched.

    Both flags are for callers that train several jobs at once in one process (the simulator's
    threads backend): `seed_global_rng=False` leaves torch's global RNG alone (it is one per
    process; the caller guarantees the model draws no random numbers), `measure_memory=False`
    leaves the process's peak-RSS mark alone and reports `peak_memory` None (the mark is one per
    process too, so it would be another job's peak)."""
    device = resolve_device(cfg.device)
    measured = reset_peak_rss() if measure_memory else False
    _reset_accelerator_peak(device)
    names = list(plan.subset_shapes())
    if not names:
        raise ValueError(f"plan for {plan.model} has no trainable parameters")
    index = channel_index(plan, device)
    base = {k: v.detach().to(device) for k, v in frozen.items()}
    start = {n: subset[n].detach().to(device=device, dtype=torch.float32) for n in names}
    leaves = [start[n].clone().requires_grad_(True) for n in names]
    trainable = dict(zip(names, leaves))
    momentum = [torch.zeros_like(t) for t in leaves] if cfg.momentum > 0 else []
    n = int(data.y.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    batches = _batches(n, cfg.batch_size, cfg.epochs, cfg.max_steps, gen) if n else []
    stats = _GradStats(leaves)
    total_loss = 0.0
    grads: Tuple[Tensor, ...] = ()
    micro = plan.pass_size(cfg.batch_size)
    prefix = chunked_prefix(model, plan, micro)
    was_training = model.training
    model.train()
    with _job_rng(seed if seed_global_rng else None):
        for idx in batches:
            if int(idx.shape[0]) <= micro:  # the whole batch in one pass
                params = materialize(base, plan, trainable, index)
                loss = _pass_loss(model, params, data, idx, prefix, device, int(idx.shape[0]))
                grads = torch.autograd.grad(loss, leaves)
                step_loss = float(loss.detach())
            else:
                step_loss, grads = _accumulated_grads(
                    model, lambda: materialize(base, plan, trainable, index), leaves, data, idx,
                    micro, prefix, device)
            _sgd_step(leaves, grads, momentum, cfg.lr, cfg.momentum)
            stats.add(grads)
            total_loss += step_loss
    model.train(was_training)
    variance = stats.variance()
    del stats, grads  # the gradient and its running sum are not needed for the delta
    with torch.no_grad():  # in place: the trained copy becomes the delta (no fifth copy of w*)
        delta = {n: t.detach().sub_(start[n]).cpu() for n, t in trainable.items()}
    return JobResult(
        delta=delta, num_samples=n, grad_variance=variance, steps=len(batches),
        loss=total_loss / len(batches) if batches else 0.0,
        peak_memory=_peak(measured, device),
    )


@contextlib.contextmanager
def _job_rng(seed: Optional[int]) -> Iterator[None]:
    """Dropout and the like draw from torch's global RNG: seeded per job, so reproducible, and
    restored afterwards, so no global effect. None: untouched (see train_job)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _pass_loss(model: nn.Module, params: Dict[str, Tensor], data: Dataset, idx: Tensor,
               prefix: int, device: torch.device, batch: int) -> Tensor:
    """Cross-entropy of samples `idx` summed and divided by `batch` (the whole step's size), so
    the gradients of a step's passes add up to the gradient of its mean loss."""
    y = data.y[idx].to(device)
    if prefix:
        # no name for the prefix output: it must be freed once the rest no longer needs it
        logits = functional_call(model, params,
                                 (_prefix_forward(model, params, data.x, idx, prefix),),
                                 {"start": prefix})
    else:
        logits = functional_call(model, params, (data.x[idx].to(device),))
    if int(idx.shape[0]) == batch:
        return F.cross_entropy(logits, y)
    return F.cross_entropy(logits, y, reduction="sum") / batch


def _accumulated_grads(model: nn.Module, params_fn: Callable[[], Dict[str, Tensor]],
                       leaves: List[Tensor], data: Dataset, idx: Tensor, micro: int, prefix: int,
                       device: torch.device) -> Tuple[float, Tuple[Tensor, ...]]:
    """(mean loss, gradient of w*) of batch `idx`, `micro` samples per forward/backward pass.

    Saved activations then scale with the micro-batch, not the batch (FTTE.md section 1); every
    model is per-sample (GroupNorm, no batch statistics), so the gradient is the whole batch's
    up to float rounding. backward() adds each pass into .grad in place, so only one layer's
    fresh gradient exists beside the running sum. The parameters are materialized per pass
    because backward frees the graph that holds them.
    """
    batch = int(idx.shape[0])
    total = 0.0
    for part in idx.split(micro):
        loss = _pass_loss(model, params_fn(), data, part, prefix, device, batch)
        torch.autograd.backward(loss, inputs=leaves)
        total += float(loss.detach())
    grads = tuple(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                  for leaf in leaves)
    for leaf in leaves:
        leaf.grad = None
    return total, grads


def chunked_prefix(model: nn.Module, plan: Plan, batch_size: int) -> int:
    """Leading feature blocks train_job runs in micro-batches for `plan` (0: none)."""
    return frozen_prefix(model, plan.trainable_names()) if batch_size > PREFIX_CHUNK else 0


@torch.no_grad()
def _prefix_forward(model: nn.Module, params: Mapping[str, Tensor], xs: Tensor, idx: Tensor,
                    blocks: int) -> Tensor:
    """features[:blocks] of samples `idx` of `xs`, PREFIX_CHUNK at a time (each gathered on its
    own, so the whole input batch is never held), into one preallocated output."""
    device = next(iter(params.values())).device
    out: Optional[Tensor] = None
    for i in range(0, int(idx.shape[0]), PREFIX_CHUNK):
        x = xs[idx[i:i + PREFIX_CHUNK]].to(device)
        part = functional_call(model, dict(params), (x,), {"stop": blocks})
        if out is None:
            out = part.new_empty((int(idx.shape[0]), *part.shape[1:]))
        out[i:i + part.shape[0]] = part
        del part  # free this micro-batch's output before the next one is computed
    assert out is not None
    return out


def _peak(measured: bool, device: torch.device) -> Optional[int]:
    rss = peak_rss() if measured else None
    return None if rss is None else rss + _accelerator_peak(device)


@torch.no_grad()
def _sgd_step(leaves: List[Tensor], grads: Tuple[Tensor, ...], bufs: List[Tensor],
              lr: float, momentum: float) -> None:
    """torch.optim.SGD semantics (no dampening, no weight decay), in place."""
    if bufs:
        for buf, g in zip(bufs, grads):
            buf.mul_(momentum).add_(g)
        grads = tuple(bufs)
    torch._foreach_add_(leaves, grads, alpha=-lr)


@torch.no_grad()
def evaluate(model: nn.Module, params: Mapping[str, Tensor], data: Dataset,
             batch_size: int = EVAL_BATCH) -> Tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` with `params` on `data`; (0.0, 0.0) when empty."""
    n = int(data.y.shape[0])
    if n == 0:
        return 0.0, 0.0
    device = next(iter(params.values())).device
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, n, batch_size):
        x = data.x[start:start + batch_size].to(device)
        y = data.y[start:start + batch_size].to(device)
        logits = functional_call(model, dict(params), (x,))
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    loss = loss_sum / n
    return correct / n, loss if math.isfinite(loss) else float("inf")
