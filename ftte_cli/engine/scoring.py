"""Selectable units of a model and their scores (FTTE.md section 2, steps 1-2).

Units: per layer with parameters (the head excepted, it is always trained) its weight at each
input-channel ratio (the channels of largest L2 norm, TTE's magnitude+; one ratio per layer at
most), its bias, and a norm layer's affine pair. Scores: contribution analysis (fine-tune head +
one unit on the proxy data, score = drop of proxy loss against head only) or the gradient-norm
fallback. `engine/selection.py` puts them together with the knapsack and the cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.data import Dataset
from ftte_cli.engine.plan import (
    BYTES_PER_VALUE,
    FULL,
    MaskKind,
    ParamMask,
    build_plan,
)
from ftte_cli.engine.train import evaluate, train_job

EVAL_CAP = 256  # proxy samples used to score a unit (scoring cost grows with it)
GRADNORM_BATCHES = 4


# ---------------------------------------------------------------------------------------------
# units


@dataclass(frozen=True)
class Unit:
    """One selectable piece of a layer; units sharing a `group` are mutually exclusive."""

    name: str  # e.g. "features.0.conv.weight@0.25", "features.0.norm.affine", "fc.bias"
    layer: str  # owning module
    layer_index: int  # position of the layer in forward order
    group: str  # weight ratios of one layer share a group
    masks: Dict[str, ParamMask] = field(compare=False)
    values: int = 0  # trainable scalars
    extra_bytes: int = 0  # a channel weight is materialized full size and saved by autograd

    def cost(self, slots_per_value: int) -> int:
        """Bytes this unit adds to training memory (its activations aside)."""
        return self.values * BYTES_PER_VALUE * slots_per_value + self.extra_bytes


def layer_order(model: nn.Module) -> List[str]:
    """Modules that own parameters, in forward (registration) order; the last is the head."""
    return [name for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None]


def head_masks(model: nn.Module) -> Dict[str, ParamMask]:
    """The classifier head's parameters, always trained in full."""
    head = layer_order(model)[-1]
    mod = model.get_submodule(head)
    return {_pname(head, n): FULL for n, _ in mod.named_parameters(recurse=False)}


def _pname(layer: str, param: str) -> str:
    return f"{layer}.{param}" if layer else param


def magnitude_channels(weight: Tensor, k: int) -> Tuple[int, ...]:
    """The k input channels (dim 1) of largest L2 norm, sorted (TTE's magnitude+)."""
    dims = [d for d in range(weight.dim()) if d != 1]
    norms = weight.detach().pow(2).sum(dim=dims)  # (in,)
    top = torch.topk(norms, k).indices
    return tuple(sorted(int(i) for i in top))


def enumerate_units(model: nn.Module, ratios: Sequence[float]) -> List[Unit]:
    """Every selectable unit of `model` except the head."""
    units: List[Unit] = []
    layers = layer_order(model)
    for index, layer in enumerate(layers[:-1]):
        params = dict(model.get_submodule(layer).named_parameters(recurse=False))
        weight = params.get("weight")
        if weight is not None and weight.dim() == 1:  # norm: affine pair as one unit
            masks = {_pname(layer, n): FULL for n in params}
            units.append(Unit(f"{layer}.affine", layer, index, f"{layer}.affine", masks,
                              sum(p.numel() for p in params.values())))
            continue
        if weight is not None:
            units += _weight_units(layer, index, weight, ratios)
        if "bias" in params:
            units.append(Unit(f"{layer}.bias", layer, index, f"{layer}.bias",
                              {_pname(layer, "bias"): FULL}, params["bias"].numel()))
    return units


def _weight_units(layer: str, index: int, weight: Tensor, ratios: Sequence[float]) -> List[Unit]:
    name, c_in = _pname(layer, "weight"), int(weight.shape[1])
    out: List[Unit] = []
    seen = set()
    for r in sorted(ratios):
        k = min(c_in, max(1, round(r * c_in)))
        if k in seen:  # e.g. depthwise convs (c_in == 1) have a single full unit
            continue
        seen.add(k)
        per_channel = weight.numel() // c_in
        if k == c_in:
            out.append(Unit(f"{name}@1", layer, index, name, {name: FULL}, weight.numel()))
        else:
            mask = ParamMask(MaskKind.channels, magnitude_channels(weight, k))
            out.append(Unit(f"{name}@{r:g}", layer, index, name, {name: mask}, k * per_channel,
                            extra_bytes=weight.numel() * BYTES_PER_VALUE))
    return out


def plan_masks(model: nn.Module, units: Sequence[Unit]) -> Dict[str, ParamMask]:
    """The masks of head + `units` (every other parameter frozen)."""
    masks = head_masks(model)
    for unit in units:
        masks.update(unit.masks)
    return masks


# ---------------------------------------------------------------------------------------------
# scores


def contribution_scores(model: nn.Module, units: Sequence[Unit], proxy: Dataset,
                        cfg: TrainConfig, steps: int, seed: int) -> Dict[str, float]:
    """Drop in proxy loss from fine-tuning head + unit for `steps` steps, against head only."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    job_cfg = replace(cfg, epochs=max(1, math.ceil(steps * cfg.batch_size / max(1, len(proxy)))),
                      max_steps=steps, device="cpu")
    evalset = _sample(proxy, EVAL_CAP, seed)

    def loss_after(masks: Dict[str, ParamMask]) -> float:
        plan = build_plan(model, masks)
        start = sparse.extract(params, plan)
        res = train_job(model, params, plan, start, proxy, job_cfg, seed)
        trained = sparse.insert(params, plan, {k: start[k] + d for k, d in res.delta.items()})
        return evaluate(model, trained, evalset)[1]

    base = loss_after(head_masks(model))
    return {u.name: base - loss_after(plan_masks(model, [u])) for u in units}


def gradnorm_scores(model: nn.Module, units: Sequence[Unit], data: Optional[Dataset],
                    input_shape: Tuple[int, ...], num_classes: int, batch_size: int,
                    seed: int) -> Dict[str, float]:
    """Squared gradient norm of each unit's values over a few batches of the initial model."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    sq = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(GRADNORM_BATCHES):
        x, y = _batch(data, input_shape, num_classes, batch_size, gen)
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            sq[k] += g.pow(2)
    scores: Dict[str, float] = {}
    for unit in units:
        total = 0.0
        for name, mask in unit.masks.items():
            g2 = sq[name]
            if mask.kind == MaskKind.channels:
                g2 = g2.index_select(1, torch.tensor(mask.channels, dtype=torch.int64))
            total += float(g2.sum())
        scores[unit.name] = total
    return scores


# Relative edge a larger channel set gets over an equally scored smaller one (nested_scores).
NESTED_TIE = 1e-6


def nested_scores(units: Sequence[Unit], scores: Mapping[str, float]) -> Dict[str, float]:
    """Scores made monotone in a weight's channel ratio, ties going to the larger ratio.

    Magnitude+ channel sets are nested (the top k of a layer are inside its top 2k), so a unit
    that trains more channels can reach whatever the smaller one reaches: it is worth at least
    as much. A short proxy fine-tune is noisy and can rank the smaller set higher (har_cnn
    width 3, warm start: features.0.conv 0.226 at half its 9 input channels, 0.209 at all of
    them), and the knapsack then trains the half, which federates far worse (docs/
    synthetic_har.md). Each ratio's score is raised to the best score of the ratios below it,
    plus NESTED_TIE of its size when raised, so that among equally scored sets the larger one, when
    it fits, is chosen. Units of other groups and unscored units are left as they are.
    """
    out = dict(scores)
    groups: Dict[str, List[Unit]] = {}
    for unit in units:
        if unit.name in scores:
            groups.setdefault(unit.group, []).append(unit)
    for members in groups.values():
        best = -math.inf
        for unit in sorted(members, key=lambda u: u.values):
            own = scores[unit.name]
            out[unit.name] = own if own > best else best + abs(best) * NESTED_TIE
            best = max(best, out[unit.name])
    return out


def _batch(data: Optional[Dataset], input_shape: Tuple[int, ...], num_classes: int,
           batch_size: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    if data is not None and len(data) > 0:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        return data.x[idx], data.y[idx]
    x = torch.randn((batch_size, *input_shape), generator=gen)
    return x, torch.randint(num_classes, (batch_size,), generator=gen)


def _sample(data: Dataset, n: int, seed: int) -> Dataset:
    """At most n samples of `data`, drawn without replacement by a seeded generator."""
    if len(data) <= n:
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return type(data)(data.x[idx], data.y[idx])
