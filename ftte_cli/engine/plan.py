"""The parameter plan: which parameters a job trains (full, some input channels, or frozen).

A plan is chosen once per run on the server (engine/selection.py) and shipped to every device as
`plan.json` (masks, shapes, figures) + `plan.safetensors` (the channel index lists, int64).
Device path: torch + safetensors + stdlib, Python 3.9.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ftte_cli.engine.serialize import (
    TensorPayloadError,
    atomic_write_bytes,
    load_tensors,
    save_tensors,
)
from ftte_cli.errors import ConfigError

PLAN_FORMAT = 1
BYTES_PER_VALUE = 4  # every parameter on the wire is float32


class MaskKind(str, Enum):
    """How one parameter takes part in a job."""

    full = "full"  # the whole tensor is trainable
    channels = "channels"  # only some input channels (dim 1) of a weight are trainable
    frozen = "frozen"  # never changes


@dataclass(frozen=True)
class ParamMask:
    """The trainable part of one parameter."""

    kind: MaskKind = MaskKind.frozen
    #: sorted input-channel indices on dim 1 (kind "channels" only)
    channels: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MaskKind(self.kind))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if (self.kind == MaskKind.channels) != bool(self.channels):
            raise ValueError(
                f"ParamMask: kind {self.kind.value} with {len(self.channels)} channels")

    @property
    def trainable(self) -> bool:
        """Whether any part of the parameter is trained."""
        return self.kind != MaskKind.frozen


FULL = ParamMask(MaskKind.full)
FROZEN = ParamMask(MaskKind.frozen)


@dataclass(frozen=True)
class Plan:
    """A chosen sparse plan and the figures it was chosen by (memory in bytes, per job payloads)."""

    model: str  # registered model name (or class name for ad-hoc models)
    masks: Dict[str, ParamMask]  # every parameter name, in model order
    shapes: Dict[str, Tuple[int, ...]]  # the full shape of every parameter
    units: List[str] = field(default_factory=list)  # chosen units, e.g. "conv1.weight@0.25"
    earliest_layer: Optional[str] = None  # first module with a trainable parameter
    budget_bytes: Optional[int] = None  # the memory budget the plan was chosen for
    estimated_bytes: Optional[int] = None  # training memory of this plan (engine/memory.py)
    full_training_bytes: Optional[int] = None  # training memory of the dense plan
    trainable_params: int = 0
    total_params: int = 0
    payload_bytes: int = 0  # per job: w* down + delta up
    full_payload_bytes: int = 0  # the same for the dense model
    method: str = "dense"  # contribution | gradnorm | dense
    notes: List[str] = field(default_factory=list)
    #: samples per forward/backward pass of a step (gradients accumulated over the batch);
    #: None: the whole batch at once (FTTE.md section 1)
    micro_batch: Optional[int] = None

    def trainable_names(self) -> List[str]:
        """Names of the parameters with a trainable part, in model order."""
        return [name for name, m in self.masks.items() if m.trainable]

    def pass_size(self, batch_size: int) -> int:
        """Samples per forward/backward pass at `batch_size`: the micro-batch, at most the batch."""
        return batch_size if self.micro_batch is None else max(1, min(batch_size, self.micro_batch))

    def subset_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Shape of every tensor of w* (a channel weight keeps only its chosen input channels)."""
        return {name: subset_shape(self.shapes[name], self.masks[name])
                for name in self.trainable_names()}


def subset_shape(shape: Tuple[int, ...], mask: ParamMask) -> Tuple[int, ...]:
    """Shape of the trainable part of a parameter of `shape` under `mask`."""
    if mask.kind == MaskKind.channels:
        return (shape[0], len(mask.channels), *shape[2:])
    return tuple(shape)


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_trainable(masks: Mapping[str, ParamMask], shapes: Mapping[str, Tuple[int, ...]]) -> int:
    """Number of scalar parameters trained under `masks`."""
    return sum(_numel(subset_shape(shapes[n], m)) for n, m in masks.items() if m.trainable)


def job_payload_bytes(trainable_params: int) -> int:
    """Bytes a job moves: w* down plus delta up, float32 (safetensors headers not counted)."""
    return 2 * BYTES_PER_VALUE * trainable_params


def param_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """name -> shape of every parameter of `model`, in model order."""
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def module_of(param_name: str) -> str:
    """The module that owns a parameter ("features.0.conv.weight" -> "features.0.conv")."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def earliest_trainable_layer(masks: Mapping[str, ParamMask]) -> Optional[str]:
    """The first module (model order) with a trainable parameter."""
    for name, mask in masks.items():
        if mask.trainable:
            return module_of(name)
    return None


def build_plan(
    model: nn.Module,
    masks: Mapping[str, ParamMask],
    *,
    model_name: Optional[str] = None,
    **figures: object,
) -> Plan:
    """A Plan for `model` with the derived counts filled in; `figures` set the remaining fields."""
    shapes = param_shapes(model)
    unknown = set(masks) - set(shapes)
    if unknown:
        raise ValueError(f"plan masks name unknown parameters: {sorted(unknown)}")
    full_masks = {name: masks.get(name, FROZEN) for name in shapes}
    for name, mask in full_masks.items():
        _check_mask(name, mask, shapes[name])
    trainable = count_trainable(full_masks, shapes)
    total = sum(_numel(s) for s in shapes.values())
    return Plan(
        model=model_name or type(model).__name__,
        masks=full_masks,
        shapes=shapes,
        earliest_layer=earliest_trainable_layer(full_masks),
        trainable_params=trainable,
        total_params=total,
        payload_bytes=job_payload_bytes(trainable),
        full_payload_bytes=job_payload_bytes(total),
        **figures,  # type: ignore[arg-type]
    )


def _check_mask(name: str, mask: ParamMask, shape: Tuple[int, ...]) -> None:
    if mask.kind != MaskKind.channels:
        return
    if len(shape) < 2:
        raise ValueError(f"{name}: channel mask on a parameter of rank {len(shape)}")
    ch = mask.channels
    if list(ch) != sorted(set(ch)) or ch[0] < 0 or ch[-1] >= shape[1]:
        raise ValueError(f"{name}: channels must be sorted, distinct and in [0, {shape[1]})")


def dense_plan(model: nn.Module, model_name: Optional[str] = None) -> Plan:
    """Everything trainable (FedBuff, FedAsync, FedAvg); memory figures are left unestimated."""
    masks = {name: FULL for name, _ in model.named_parameters()}
    return build_plan(model, masks, model_name=model_name, units=["all"], method="dense")


# ---------------------------------------------------------------------------------------------
# save / load: plan.json + plan.safetensors


def plan_paths(path: Union[str, Path]) -> Tuple[Path, Path]:
    """(json, safetensors) paths: `x.json` -> x.json + x.safetensors; a folder -> plan.json + ..."""
    path = Path(path)
    if path.suffix == ".json":
        return path, path.with_suffix(".safetensors")
    return path / "plan.json", path / "plan.safetensors"


def plan_to_dict(plan: Plan) -> Dict[str, object]:
    """The JSON part of a plan (channel lists go to safetensors, marked by their count here)."""
    return {
        "format": PLAN_FORMAT,
        "model": plan.model,
        "masks": {n: {"kind": m.kind.value, "channels": len(m.channels)}
                  for n, m in plan.masks.items()},
        "shapes": {n: list(s) for n, s in plan.shapes.items()},
        "units": list(plan.units),
        "earliest_layer": plan.earliest_layer,
        "budget_bytes": plan.budget_bytes,
        "estimated_bytes": plan.estimated_bytes,
        "full_training_bytes": plan.full_training_bytes,
        "trainable_params": plan.trainable_params,
        "total_params": plan.total_params,
        "payload_bytes": plan.payload_bytes,
        "full_payload_bytes": plan.full_payload_bytes,
        "method": plan.method,
        "notes": list(plan.notes),
        "micro_batch": plan.micro_batch,
    }


def channel_tensors(plan: Plan) -> Dict[str, torch.Tensor]:
    """int64 index tensors of every channel-masked parameter."""
    return {n: torch.tensor(m.channels, dtype=torch.int64)
            for n, m in plan.masks.items() if m.kind == MaskKind.channels}


def save_plan(plan: Plan, path: Union[str, Path]) -> Tuple[Path, Path]:
    """Write plan.json + plan.safetensors (atomically) into folder `path` (or next to `x.json`)."""
    json_path, st_path = plan_paths(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(st_path, channel_tensors(plan), metadata={"format": str(PLAN_FORMAT)})
    text = json.dumps(plan_to_dict(plan), indent=1) + "\n"
    atomic_write_bytes(json_path, text.encode("utf-8"))
    return json_path, st_path


def load_plan(path: Union[str, Path]) -> Plan:
    """Read a plan written by save_plan; ConfigError naming the file and field when malformed."""
    json_path, st_path = plan_paths(path)
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{json_path}: cannot read plan: {err.strerror or err}") from None
    except ValueError as err:
        raise ConfigError(f"{json_path}: not JSON: {err}") from None
    try:
        channels = load_tensors(st_path)
    except TensorPayloadError as err:
        raise ConfigError(str(err)) from None
    try:
        return _plan_from_dict(raw, channels)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{json_path}: invalid plan: {err}") from None


def _plan_from_dict(raw: Mapping[str, object], channels: Mapping[str, torch.Tensor]) -> Plan:
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        raise ValueError(f"format: expected {PLAN_FORMAT}")
    shapes = {str(n): tuple(int(d) for d in s) for n, s in raw["shapes"].items()}
    masks: Dict[str, ParamMask] = {}
    for name, entry in raw["masks"].items():
        kind = MaskKind(entry["kind"])
        idx: Tuple[int, ...] = ()
        if kind == MaskKind.channels:
            if name not in channels:
                raise ValueError(f"masks.{name}: channel indices missing from plan.safetensors")
            idx = tuple(int(i) for i in channels[name].tolist())
            if len(idx) != int(entry["channels"]):
                raise ValueError(f"masks.{name}: expected {entry['channels']} channels")
        if name not in shapes:
            raise ValueError(f"masks.{name}: no shape")
        masks[name] = ParamMask(kind, idx)
        _check_mask(name, masks[name], shapes[name])
    if set(masks) != set(shapes):
        raise ValueError("masks and shapes name different parameters")
    return Plan(
        model=str(raw["model"]), masks=masks, shapes=shapes,
        units=[str(u) for u in raw["units"]],
        earliest_layer=_opt_str(raw["earliest_layer"]),
        budget_bytes=_opt_int(raw["budget_bytes"]),
        estimated_bytes=_opt_int(raw["estimated_bytes"]),
        full_training_bytes=_opt_int(raw["full_training_bytes"]),
        trainable_params=int(raw["trainable_params"]),  # type: ignore[arg-type]
        total_params=int(raw["total_params"]),  # type: ignore[arg-type]
        payload_bytes=int(raw["payload_bytes"]),  # type: ignore[arg-type]
        full_payload_bytes=int(raw["full_payload_bytes"]),  # type: ignore[arg-type]
        method=str(raw["method"]),
        notes=[str(n) for n in raw["notes"]],
        micro_batch=_micro_batch(raw.get("micro_batch")),  # absent in plans from before it
    )


def _micro_batch(value: object) -> Optional[int]:
    micro = _opt_int(value)
    if micro is not None and micro < 1:
        raise ValueError(f"micro_batch: must be >= 1, got {micro}")
    return micro


def _opt_int(value: object) -> Optional[int]:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _opt_str(value: object) -> Optional[str]:
    return None if value is None else str(value)
