"""Who may use a device, and an inventory, right now: one run at a time (issue 13, fault 2).

Lifecycle: `ftte train` takes the local `InventoryLock` (a flock on
`<inventory dir>/.ftte/<inventory file>.lock`) for its whole life, then asks every device
`busy_devices` before it deploys; each agent is started holding the device's lock (a flock on
`<workdir>/ftte-run.lock`, passed to the agent process by fleet/launch.py), so the lock lives
exactly as long as the run's agent. A second run against the same inventory is refused with the
holder's run id; one that reaches the same devices another way (another inventory file) gets
the outcome `busy` naming the holder's run for each of them and leaves them alone.

Why flock: the kernel drops it when its last holder exits (a crash, a reboot), so a dead run
never blocks the next; there is nothing to take over, and no `--force` is needed. The holder
record (run id, pid, boot id, host) is only there for the messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

from ftte_cli.config.inventory import Device
from ftte_cli.errors import RunError
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.pool import run_on_fleet
from ftte_cli.fleet.ssh.results import DeviceResult, FleetResults, Outcome
from ftte_cli.fleet.ssh.sessions import Session

DEVICE_LOCK = "ftte-run.lock"  # in the device's workdir

# argv: lock path. Prints "free" or "busy <holder json>"; takes nothing (the agent will).
_PROBE = r"""
import fcntl, os, sys
p = os.path.expanduser(sys.argv[1])
try:
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
except OSError as e:
    print("free"); sys.exit(0)  # no workdir yet: nobody can hold it
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except OSError:
    print("busy " + os.read(fd, 4096).decode("utf-8", "replace").strip())
"""


def boot_id() -> str:
    """This machine's boot id (Linux), so a holder record tells reboots apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def holder_text(record: str) -> str:
    """A holder record as words: 'run R (pid P on H)'."""
    try:
        data = json.loads(record)
    except ValueError:
        return "another run (no holder record)"
    return f"run {data.get('run', '?')} (pid {data.get('pid', '?')} on {data.get('host', '?')})"


def busy_devices(devices: Sequence[Device], opts: SshOptions) -> FleetResults:
    """Ask every device whether another run holds it; busy ones get Outcome.busy naming the
    holder, free ones ok (and devices that cannot be asked keep their SSH outcome)."""
    def probe(session: Session) -> DeviceResult:
        device = session.device
        lock = f"{device.workdir.rstrip('/')}/{DEVICE_LOCK}"
        out = session.run(f"{device.python} -c {shlex.quote(_PROBE)} {shlex.quote(lock)}")
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "free"
        if line.startswith("busy"):
            return DeviceResult(device, Outcome.busy, f"in use by {holder_text(line[5:])}")
        return DeviceResult(device, Outcome.ok, "free")

    return run_on_fleet(list(devices), probe, opts)


class InventoryLock:
    """The local lock of one inventory file, held by one `ftte train` while it runs."""

    def __init__(self, inventory: Path, run_id: str) -> None:
        inventory = Path(inventory).resolve()
        self.path = inventory.parent / ".ftte" / f"{inventory.name}.lock"
        self.inventory = inventory
        self.run_id = run_id
        self._fd: Optional[int] = None

    def __enter__(self) -> InventoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise RunError(f"{self.inventory}: in use by {holder_text(holder)}; wait for it, "
                           "or stop it (Ctrl-C), before starting another run") from None
        self._fd = fd
        self.name(self.run_id)
        return self

    def name(self, run_id: str) -> None:
        """Record the holder's run id (known once the run is set up) for other runs' messages."""
        assert self._fd is not None
        self.run_id = run_id
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"run": run_id, "pid": os.getpid(),
                                        "host": socket.gethostname(),
                                        "boot_id": boot_id()}).encode(), 0)

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
