"""The connection settings every device of one fleet command shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class SshOptions:
    """Connection settings shared by every device of one fleet command."""

    known_hosts: Optional[Path] = None  # overrides every device's known_hosts file
    accept_new_host_keys: bool = False  # trust and record unknown keys (never changed ones)
    connect_timeout: float = 20.0  # TCP connect, SSH banner, auth and channel open, each
    command_timeout: float = 60.0  # default deadline of one `Session.run` / transfer
    forks: int = 10  # devices handled at once


# Training and profiling import torch on devices capped at a quarter of a core: commands get
# 300 s (`ftte train`, `ftte demo`, the API's train).
SLOW_DEVICE_SSH = SshOptions(command_timeout=300.0)
