"""The emulated testbed of fleet tests (profile, deploy, train); the session fixture `testbed`
is in tests/conftest.py:

    def test_something(testbed: Testbed) -> None:
        devices = testbed.devices()          # resolved from testbed.inventory
        ...

Four devices, one of each class of the default mix (pi-zero-2, pi4, jetson-nano, phone), each a
real sshd with its cgroup caps and network namespace when the tests run as root (CI does), or a
plain loopback sshd otherwise (`testbed.isolated` says which). Brought up once per session and
taken down at the end; the teardown fails loudly if anything was left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftte_cli.config.inventory import Device, load_inventory
from ftte_cli.testbed import lifecycle
from ftte_cli.testbed.devices import DEFAULT_MIX
from ftte_cli.testbed.state import DeviceState, TestbedState


@dataclass(frozen=True)
class Testbed:
    """A running testbed: its folder, inventory and state."""

    __test__ = False  # not a test class

    dir: Path
    inventory: Path
    state: TestbedState

    @property
    def isolated(self) -> bool:
        """True with namespaces and cgroup caps (root), False for the loopback fallback."""
        return self.state.isolated

    def devices(self, limit: str | None = None) -> list[Device]:
        """The inventory's devices (optionally `--limit`-style filtered)."""
        return load_inventory(self.inventory).select(limit)

    def device_state(self, name: str) -> DeviceState:
        """What the testbed made for one device (caps, namespace, PID)."""
        return next(d for d in self.state.devices if d.name == name)

    def by_class(self, device_class: str) -> DeviceState:
        """The first device of a class."""
        return next(d for d in self.state.devices if d.device_class == device_class)


def start_testbed(directory: Path, devices: int = 4, mix: str = ",".join(DEFAULT_MIX),
                  bandwidth: bool = True) -> Testbed:
    """Bring a testbed up in `directory` (callers must `lifecycle.down(directory)`)."""
    state = lifecycle.up(directory, devices, mix, bandwidth)
    return Testbed(Path(state.dir), Path(state.dir) / lifecycle.INVENTORY_FILE, state)
