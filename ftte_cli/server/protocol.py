"""Server side of the wire protocol: settings, size bounds from the plan, authentication.

The byte format itself lives in `ftte_cli/client/wire.py`, shared with the device agent.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Optional

import torch

from ftte_cli.client.wire import (
    DEVICE_HEADER,
    JSON_MAX_BYTES,
    METADATA_SLACK,
    tensor_bytes,
)


class ServerReason(str, Enum):
    """Rejections the server decides before the coordinator sees anything."""

    wrong_token = "wrong_token"  # unknown device or bad token
    too_large = "too_large"  # body over its bound
    malformed = "malformed"  # not JSON / not safetensors / missing metadata
    wrong_device = "wrong_device"  # an update for a job issued to another device


@dataclass(frozen=True)
class ServerConfig:
    """What the server needs besides the coordinator."""

    run_id: str
    tokens: Mapping[str, str]  # device name -> token (the same as in its bundle)
    plan_sha256: str
    update_max_bytes: int  # bound on an update body (from the plan)
    json_max_bytes: int = JSON_MAX_BYTES
    offline_after: float = 15.0  # seconds without a request before a device is offline
    long_poll_max: float = 30.0  # cap on ?wait=
    memory_budgets: Mapping[str, int] = field(default_factory=dict)  # device -> bytes
    start_devices: Optional[int] = None  # first dispatch once this many registered (None: all)
    start_grace: float = 20.0  # ... or this long after the first one registered
    event_log_lines: int = 200
    # Updates being handled at once (body read to reply) past which a new one is answered
    # 503 + Retry-After instead of queueing behind them; 0: no bound (the default: under a
    # closed loop of devices the resends cost more end-to-end time than the queue they avoid,
    # docs/SCALING.md). The agent resends the same update after its back-off: nothing is lost.
    max_updates_in_flight: int = 0
    retry_after_s: int = 1  # the Retry-After of that 503 (whole seconds, as HTTP says)

    @property
    def client_max_size(self) -> int:
        """aiohttp's own cap on any body: the largest per-route bound."""
        return max(self.update_max_bytes, self.json_max_bytes)


def update_bound(subset: Mapping[str, torch.Tensor]) -> int:
    """Bound on an update body: the trainable subset's bytes plus header/metadata slack."""
    return tensor_bytes(dict(subset)) + METADATA_SLACK


def parse_bearer(header: Optional[str]) -> Optional[str]:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header or not header.startswith("Bearer "):
        return None
    return header[len("Bearer "):].strip() or None


def authenticate(tokens: Mapping[str, str], headers: Mapping[str, str]) -> Optional[str]:
    """The device name when its token matches (constant-time compare), else None."""
    device = headers.get(DEVICE_HEADER, "")
    token = parse_bearer(headers.get("Authorization"))
    expected = tokens.get(device)
    # Compare even for unknown devices so timing does not reveal which names exist.
    ok = hmac.compare_digest((token or "").encode(), (expected or "\0" * 43).encode())
    return device if ok and expected is not None and token is not None else None
