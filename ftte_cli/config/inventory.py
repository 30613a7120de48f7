"""Fleet inventories (inventory/*.yaml): an Ansible-compatible YAML subset, validated once.

Loader and settings resolution follow below; `Device` is the resolved, frozen view of one host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Device:
    """One device of the fleet with every connection setting already resolved."""

    name: str  # inventory host name (also the alias looked up in ~/.ssh/config)
    host: str  # address or DNS name actually dialled
    port: int = 22
    user: Optional[str] = None  # None: the local user name, as OpenSSH does
    connection: str = "ssh"  # "ssh" | "local"
    key_file: Optional[Path] = None  # private key; None: the agent and ~/.ssh/id_* keys
    python: str = "python3"  # interpreter on the device
    device_class: Optional[str] = None  # free-form label: pi4, jetson_nano, phone...
    mem_cap_mb: Optional[int] = None  # cap on usable memory set by the operator
    workdir: str = "~/.ftte"  # where bundles and caches live on the device
    data: Optional[str] = None  # device-local dataset path (no shard is shipped)
    known_hosts: Optional[Path] = None  # per-device known_hosts file (ftte_known_hosts)
    proxy_jump: Optional[str] = None  # "[user@]host[:port]" of one jump host
    groups: tuple[str, ...] = ()  # every group the host belongs to, outermost first
    vars: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
