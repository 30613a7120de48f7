"""The model a run starts from: random, a checkpoint, or warm-started on public data (cached).

This is the one home of the initial model: plan selection, bundles, the server and the simulator
all call `start_model`, so the devices' frozen weights and the server's model are the same bytes,
and every strategy of a comparison starts from the same point. A `pretrain` warm start is
computed once per (model, data, init settings, seed, torch build) and cached as safetensors
under `.ftte/init/`; its metadata keeps what it cost and how accurate it was, so a cached start
reports the same figures as a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ftte_cli.config.recipe import Recipe
from ftte_cli.engine.data import Dataset, FederatedData
from ftte_cli.engine.models import build_model
from ftte_cli.engine.serialize import TensorPayloadError, load_tensors_with_metadata, save_tensors
from ftte_cli.engine.train import evaluate
from ftte_cli.engine.warmstart import pretrain
from ftte_cli.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_DIR = Path(".ftte") / "init"
_CACHE_VERSION = 1  # bump when the warm start's procedure changes


@dataclass(frozen=True)
class StartInfo:
    """Where the initial model came from, and for a warm start what it cost and reached."""

    method: str  # random | checkpoint | pretrain
    accuracy: Optional[float] = None  # global test accuracy before federation
    seconds: float = 0.0  # wall time the pretraining took when it was computed
    public_samples: int = 0  # public samples it trained on (one pass)
    steps: int = 0  # optimiser steps
    cached: bool = False  # True when read back from the cache
    source: Optional[str] = None  # the checkpoint or cache file


def describe_start(start: Union[StartInfo, Mapping[str, Any]]) -> str:
    """One line on the initial model: where from, its accuracy, what a warm start cost."""
    info = asdict(start) if isinstance(start, StartInfo) else dict(start)
    acc = info.get("accuracy")
    acc_text = "" if acc is None else f", test accuracy {acc:.3f} before federation"
    if info.get("method") != "pretrain":
        return f"initial model: {info.get('method')}{acc_text}"
    how = "cached" if info.get("cached") else "computed"
    return (f"initial model: warm start on {info.get('public_samples')} public samples, "
            f"{info.get('steps')} steps, {float(info.get('seconds') or 0):.1f} s ({how})"
            f"{acc_text}")


def _seeded(recipe: Recipe, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The random initial model, seeded by the recipe alone (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return build_model(recipe.model, tuple(input_shape), num_classes)


def start_model(recipe: Recipe, input_shape: Sequence[int], num_classes: int,
                fed: Optional[FederatedData] = None,
                cache_dir: Path = CACHE_DIR) -> Tuple[nn.Module, StartInfo]:
    """The run's initial model and where it came from (`recipe.init`).

    `fed` (from `load_federated(..., init=recipe.init)`) is needed for `pretrain`: its public
    split trains the model and its test split measures the start.
    """
    model = _seeded(recipe, input_shape, num_classes)
    method = recipe.init.method
    if method == "checkpoint":
        return model, _load_checkpoint(model, recipe)
    if method == "pretrain":
        return model, _warm_start(model, recipe, fed, cache_dir)
    return model, StartInfo("random", _accuracy(model, fed))


def initial_model(recipe: Recipe, input_shape: Sequence[int], num_classes: int,
                  fed: Optional[FederatedData] = None) -> nn.Module:
    """`start_model` without the record."""
    return start_model(recipe, input_shape, num_classes, fed)[0]


def initial_params(recipe: Recipe, input_shape: Sequence[int], num_classes: int,
                   fed: Optional[FederatedData] = None) -> Dict[str, torch.Tensor]:
    """`initial_model`'s parameters as contiguous tensors (what model.safetensors holds)."""
    return model_params(initial_model(recipe, input_shape, num_classes, fed))


def model_params(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A model's parameters as fresh contiguous tensors, detached from the model."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def shape_model(recipe: Recipe, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The recipe's architecture with throwaway weights: memory and FLOP figures depend on
    shapes alone, so an infeasible budget is found before any warm start is paid for."""
    return build_model(recipe.model, tuple(input_shape), num_classes)


def _accuracy(model: nn.Module, fed: Optional[FederatedData]) -> Optional[float]:
    if fed is None or len(fed.test) == 0:
        return None
    return evaluate(model, dict(model.named_parameters()), fed.test)[0]


def _load_into(model: nn.Module, path: Path, where: str) -> dict[str, str]:
    """Copy a safetensors file's tensors into `model`; ConfigError naming `where` on mismatch."""
    try:
        tensors, meta = load_tensors_with_metadata(path)
    except TensorPayloadError as err:
        raise ConfigError(f"{where}: {err}") from None
    own = dict(model.named_parameters())
    if set(tensors) != set(own):
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        raise ConfigError(f"{where}: {path}: parameters differ from the recipe's model "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name in own:  # model order: the first mismatch named is always the same one
        value = tensors[name]
        if value.shape != own[name].shape or value.dtype != own[name].dtype:
            raise ConfigError(f"{where}: {path}: {name} is {value.dtype} {tuple(value.shape)}, "
                              f"the model has {own[name].dtype} {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value)
    return meta


def _load_checkpoint(model: nn.Module, recipe: Recipe) -> StartInfo:
    path = recipe.init.checkpoint
    assert path is not None  # InitConfig.validate
    _load_into(model, path, f"{recipe.source or 'recipe'}: init.checkpoint")
    return StartInfo("checkpoint", source=str(path))


def cache_key(recipe: Recipe, public: Dataset) -> str:
    """What a warm start depends on, hashed: model, init settings, seed, torch build, and the
    public data's own bytes (standardised as the federation sees them), so any change to the
    data, its generator or its statistics makes a new warm start rather than reusing a stale one."""
    from ftte_cli.rundir.jsonable import to_jsonable

    init = {k: v for k, v in asdict(recipe.init).items() if k != "checkpoint"}
    digest = hashlib.sha256()
    for t in (public.x, public.y):
        digest.update(t.contiguous().numpy().tobytes())
    doc = {"v": _CACHE_VERSION, "model": to_jsonable(recipe.model), "init": init,
           "seed": recipe.seed, "torch": torch.__version__, "public": digest.hexdigest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _warm_start(model: nn.Module, recipe: Recipe, fed: Optional[FederatedData],
                cache_dir: Path) -> StartInfo:
    if fed is None or fed.public is None or len(fed.public) == 0:
        raise ConfigError(f"{recipe.source or 'recipe'}: init.method: pretrain needs the "
                          "server's public data, and none was loaded for it")
    path = cache_dir / f"{recipe.name}-{cache_key(recipe, fed.public)}.safetensors"
    if path.is_file():
        try:
            meta = _load_into(model, path, f"warm-start cache {path}")
            info = json.loads(meta["start"])
            return StartInfo(**{**info, "cached": True, "source": str(path)})
        except (ConfigError, KeyError, ValueError, TypeError) as err:
            log.warning("ignoring a damaged warm-start cache %s (%s)", path, err)
            model.load_state_dict(_seeded(recipe, fed.input_shape, fed.num_classes).state_dict())
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        stats = pretrain(model, fed.public, recipe.init, recipe.seed)
    info = StartInfo("pretrain", _accuracy(model, fed), time.perf_counter() - start,
                     stats.samples, stats.steps, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in asdict(info).items() if k not in ("cached", "source")}
    params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_tensors(path, params, {"start": json.dumps(record)})
    return info
