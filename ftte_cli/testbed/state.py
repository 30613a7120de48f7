"""The testbed state file (`<dir>/state.json`): every PID, cgroup, namespace and link made.

It is written after each thing is made, so a crash half-way through `up` still leaves a file
`down` can use to undo exactly what exists, and nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional

from ftte_cli.errors import ConfigError

STATE_FILE = "state.json"


@dataclass(frozen=True)
class DeviceState:
    """One emulated device and what it is made of."""

    name: str
    device_class: str
    address: str  # where its sshd listens (namespace address, or 127.0.0.1)
    port: int
    workdir: str  # absolute ftte_workdir
    mem_cap_bytes: Optional[int] = None  # the board's free memory (inventory cap); None: uncapped
    cgroup_limit_bytes: Optional[int] = None  # applied limit: the cap less shared torch pages
    cpu_percent: Optional[int] = None  # applied CFS quota (% of one CPU); None: uncapped
    bandwidth_mbit: Optional[float] = None  # applied tc rate; None: uncapped
    netns: Optional[str] = None
    veth_host: Optional[str] = None
    veth_dev: Optional[str] = None
    cgroups: tuple[str, ...] = ()  # directories made, under each controller
    pid: Optional[int] = None  # sshd
    pid_start: Optional[int] = None  # its start time, so a recycled PID is never killed


@dataclass(frozen=True)
class TestbedState:
    """A whole testbed."""

    __test__ = False  # not a pytest test class despite the name

    id: str
    dir: str
    isolated: bool  # True: namespaces and cgroups (root); False: loopback only, no caps
    created_at: float
    subnet_octet: Optional[int] = None
    bridge: Optional[str] = None
    cgroup_parents: tuple[str, ...] = ()  # ftte/<id> (and ftte) when we made them
    devices: tuple[DeviceState, ...] = ()
    notes: tuple[str, ...] = ()

    def with_device(self, dev: DeviceState) -> TestbedState:
        """This state with `dev` added or replaced (by name)."""
        others = tuple(d for d in self.devices if d.name != dev.name)
        order = [d.name for d in self.devices]
        merged = others + (dev,)
        if dev.name in order:
            merged = tuple(sorted(merged, key=lambda d: order.index(d.name)))
        return replace(self, devices=merged)


def state_path(directory: Path) -> Path:
    """Where the state of the testbed in `directory` lives."""
    return Path(directory) / STATE_FILE


def save(state: TestbedState) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    path = state_path(Path(state.dir))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def load(directory: Path) -> Optional[TestbedState]:
    """The state in `directory`, or None when there is no testbed there."""
    path = state_path(Path(directory))
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        devices = tuple(DeviceState(**{**_known(DeviceState, d),
                                       "cgroups": tuple(d.get("cgroups", ()))})
                        for d in raw.get("devices", []))
        return TestbedState(**{**_known(TestbedState, raw), "devices": devices,
                               "cgroup_parents": tuple(raw.get("cgroup_parents", ())),
                               "notes": tuple(raw.get("notes", ()))})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: not a testbed state file ({err})") from err


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Only the keys `cls` has (a state file from another ftte version still loads)."""
    return {k: v for k, v in raw.items() if k in {f.name for f in fields(cls)}}


def clear(directory: Path) -> None:
    """Remove the state file (after a complete `down`)."""
    state_path(Path(directory)).unlink(missing_ok=True)
