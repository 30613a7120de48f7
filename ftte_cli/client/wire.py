"""The wire format shared by the server and the device agent (ARCHITECTURE.md, "Wire protocol").

Device-side module: Python 3.9, torch + safetensors + stdlib only. Control messages are JSON;
tensors travel as safetensors with string metadata (never pickle). Decoding checks the size bound
before parsing anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ftte_cli.engine import serialize

API = "/v1"
AUTH_HEADER = "Authorization"
DEVICE_HEADER = "X-Ftte-Device"
TENSOR_TYPE = "application/octet-stream"
JSON_MAX_BYTES = 16 * 1024  # register, heartbeat, replies: small JSON documents
METADATA_SLACK = 64 * 1024  # safetensors header (names, shapes, offsets) + metadata per body

# HTTP status codes with a protocol meaning.
NO_JOB = 204  # long-poll ended without a job
UNAUTHORIZED = 401  # unknown device or wrong token
REGISTER_AGAIN = 409  # the server does not know this device as online: register first
RUN_OVER = 410  # the run has ended: the agent exits with code 0
TOO_LARGE = 413
MAX_SAMPLES = 2**31 - 1  # num_samples above this is no shard a device holds


class WireError(ValueError):
    """A body that does not follow the protocol; the message says what is wrong."""


class BodyTooLarge(WireError):
    """A body over its size bound (checked before parsing)."""


@dataclass(frozen=True)
class JobMessage:
    """Server -> device: train from `version` starting at `subset` (the trainable part w*)."""

    job_id: str
    version: int
    seed: int  # for the client's data shuffling, drawn by the coordinator
    subset: Dict[str, torch.Tensor]


@dataclass(frozen=True)
class UpdateMessage:
    """Device -> server: the delta over the mask and what the aggregation weights need."""

    job_id: str
    version: int
    num_samples: int
    grad_variance: float
    peak_memory: Optional[int]
    delta: Dict[str, torch.Tensor]
    cpu_seconds: Optional[float] = None  # process CPU time of the job on the device
    energy_j: Optional[float] = None  # the job's energy, joules (client/power.job_energy)
    energy_source: str = ""  # "measured" (a power sensor) or "estimated" (CPU x class figure)


def auth_headers(device: str, token: str) -> Dict[str, str]:
    """The headers every request carries."""
    return {AUTH_HEADER: f"Bearer {token}", DEVICE_HEADER: device}


def tensor_bytes(tensors: Dict[str, torch.Tensor]) -> int:
    """Raw data bytes of a tensor dict (what a safetensors body holds besides its header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def body_bound(tensors: Dict[str, torch.Tensor]) -> int:
    """Size bound for a safetensors body carrying tensors shaped like these."""
    return tensor_bytes(tensors) + METADATA_SLACK


def _decode(data: bytes, max_bytes: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    try:
        return serialize.tensors_and_metadata_from_bytes(data, max_bytes)
    except serialize.PayloadTooLarge as err:
        raise BodyTooLarge(str(err)) from None
    except serialize.TensorPayloadError as err:
        raise WireError(str(err)) from None


def _field(meta: Dict[str, str], key: str, kind: type) -> Any:
    if key not in meta:
        raise WireError(f"metadata: missing {key}")
    try:
        value = kind(meta[key])
    except ValueError:
        raise WireError(f"metadata: {key}: not a {kind.__name__}: {meta[key]!r}") from None
    if kind is float and not math.isfinite(value):
        raise WireError(f"metadata: {key}: not finite")
    return value


def encode_job(job: JobMessage) -> bytes:
    """A job body: w* tensors with the job id and version as metadata."""
    meta = {"job_id": job.job_id, "version": str(job.version), "seed": str(job.seed)}
    return serialize.tensors_to_bytes(job.subset, meta)


def decode_job(data: bytes, max_bytes: int) -> JobMessage:
    """Parse a job body; WireError if malformed or over `max_bytes`."""
    tensors, meta = _decode(data, max_bytes)
    return JobMessage(job_id=_field(meta, "job_id", str), version=_field(meta, "version", int),
                      seed=_field(meta, "seed", int), subset=tensors)


def encode_update(update: UpdateMessage) -> bytes:
    """An update body: the delta with job id, version, n, variance and peak memory as metadata."""
    meta = {
        "job_id": update.job_id,
        "version": str(update.version),
        "num_samples": str(update.num_samples),
        "grad_variance": repr(float(update.grad_variance)),
        "peak_memory": "" if update.peak_memory is None else str(update.peak_memory),
    }
    if update.energy_j is not None:  # optional keys: older servers simply ignore them
        meta.update(energy_j=repr(float(update.energy_j)), energy_source=update.energy_source,
                    cpu_seconds=repr(float(update.cpu_seconds or 0.0)))
    return serialize.tensors_to_bytes(update.delta, meta)


def decode_update(data: bytes, max_bytes: int) -> UpdateMessage:
    """Parse an update body; WireError if malformed or over `max_bytes`."""
    tensors, meta = _decode(data, max_bytes)
    peak = meta.get("peak_memory", "")
    num_samples = _field(meta, "num_samples", int)
    if not 0 < num_samples <= MAX_SAMPLES:
        raise WireError(f"metadata: num_samples: must be in 1..{MAX_SAMPLES}")
    grad_variance = _field(meta, "grad_variance", float)
    if grad_variance < 0:  # a mean of squares: a negative one would flip the variance weight
        raise WireError("metadata: grad_variance: must be >= 0")
    version = _field(meta, "version", int)
    if version < 0:
        raise WireError("metadata: version: must be >= 0")
    return UpdateMessage(
        job_id=_field(meta, "job_id", str), version=version,
        num_samples=num_samples, grad_variance=grad_variance,
        peak_memory=int(peak) if peak.isdigit() else None, delta=tensors,
        cpu_seconds=_optional_float(meta, "cpu_seconds"),
        energy_j=_optional_float(meta, "energy_j"),
        energy_source=meta.get("energy_source", "")[:16],
    )


def _optional_float(meta: Dict[str, str], key: str) -> Optional[float]:
    """A non-negative finite float metadata value, or None when absent or malformed."""
    try:
        value = float(meta[key])
    except (KeyError, ValueError):
        return None
    return value if 0.0 <= value < float("inf") else None


def dumps(obj: Dict[str, Any]) -> bytes:
    """A JSON control body."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def loads(data: bytes, max_bytes: int = JSON_MAX_BYTES) -> Dict[str, Any]:
    """Parse a JSON control body within its bound; WireError if malformed."""
    if len(data) > max_bytes:
        raise BodyTooLarge(f"body of {len(data)} bytes over the bound of {max_bytes}")
    try:
        obj = json.loads(data.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        raise WireError("body is not JSON") from None
    if not isinstance(obj, dict):
        raise WireError("body must be a JSON object")
    return obj
