"""The result model of a fleet command and the one place exceptions become outcomes.

A fleet step ends, per device, in one `DeviceResult` (an `Outcome`, a one-line detail, the time
taken, the step's value); `FleetResults` maps device name -> result with success and failure
views, and the exit code is that of the most severe outcome (`SEVERITY`). `classify` maps every
exception (SSH, socket, command, host key, key file) to an outcome and a hint for the recap.
"""

from __future__ import annotations

import errno
import getpass
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import paramiko

from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh.hostkeys import HostKeyUnknown, fingerprint

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """How one device ended a fleet command."""

    ok = "ok"
    changed = "changed"  # the step succeeded and changed something on the device
    unreachable = "unreachable"  # refused, no route, DNS failure, not an SSH server
    auth_failed = "auth_failed"  # the device refused our key
    hostkey_mismatch = "hostkey_mismatch"  # unknown (not opted in) or changed host key
    timeout = "timeout"  # connect or command ran past its deadline
    failed = "failed"  # the step ran and failed (non-zero exit, bad output, bug)
    busy = "busy"  # another run holds the device (fleet/locks.py); left untouched
    interrupted = "interrupted"  # Ctrl-C came before this device's step started: untouched

    @property
    def succeeded(self) -> bool:
        """True for ok and changed."""
        return self in (Outcome.ok, Outcome.changed)


# Most severe first: the exit code of a fleet run is that of its most severe outcome. A host-key
# problem may be an attack and auth failures need the operator, so they outrank a step that ran
# and failed; a timeout or an unreachable device is most often transient.
SEVERITY: tuple[Outcome, ...] = (
    Outcome.interrupted,
    Outcome.hostkey_mismatch,
    Outcome.auth_failed,
    Outcome.failed,
    Outcome.busy,
    Outcome.timeout,
    Outcome.unreachable,
)
EXIT_CODES: dict[Outcome, ExitCode] = {
    Outcome.ok: ExitCode.OK,
    Outcome.changed: ExitCode.OK,
    Outcome.hostkey_mismatch: ExitCode.HOSTKEY_MISMATCH,
    Outcome.auth_failed: ExitCode.AUTH_FAILED,
    Outcome.failed: ExitCode.DEVICE_FAILED,
    Outcome.busy: ExitCode.BUSY,
    Outcome.interrupted: ExitCode.INTERRUPTED,
    Outcome.timeout: ExitCode.TIMEOUT,
    Outcome.unreachable: ExitCode.UNREACHABLE,
}



@dataclass(frozen=True)
class CommandResult:
    """What one command printed and returned."""

    rc: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class DeviceResult:
    """How one device ended a fleet command; `value` carries the step's data (e.g. a profile)."""

    device: Device
    outcome: Outcome
    detail: str = ""  # one line for the recap: what happened, or what to do
    elapsed: float = 0.0  # seconds from the start of the worker to the end
    value: Any = None


@dataclass(frozen=True)
class FleetResults:
    """Device name -> result, in inventory order; partial failures never hide the successes."""

    results: dict[str, DeviceResult] = field(default_factory=dict)

    @property
    def succeeded(self) -> dict[str, DeviceResult]:
        """Devices that ended ok or changed."""
        return {k: r for k, r in self.results.items() if r.outcome.succeeded}

    @property
    def failed(self) -> dict[str, DeviceResult]:
        """Devices with any other outcome."""
        return {k: r for k, r in self.results.items() if not r.outcome.succeeded}

    def worst(self) -> Optional[Outcome]:
        """The most severe failing outcome present (SEVERITY order), None if all succeeded."""
        present = {r.outcome for r in self.results.values()}
        return next((o for o in SEVERITY if o in present), None)

    def exit_code(self) -> ExitCode:
        """0 when every device succeeded (or there were none), else the worst outcome's code."""
        worst = self.worst()
        return ExitCode.OK if worst is None else EXIT_CODES[worst]

    def __getitem__(self, name: str) -> DeviceResult:
        return self.results[name]

    def __iter__(self) -> Iterator[DeviceResult]:
        return iter(self.results.values())

    def __len__(self) -> int:
        return len(self.results)


class CommandFailed(Exception):
    """A command exited non-zero (with `check=True`)."""

    def __init__(self, command: str, result: CommandResult) -> None:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
        super().__init__(f"`{_short(command)}` exited {result.rc}: {last[0][:200]}".rstrip(": "))
        self.command = command
        self.result = result


class CommandTimeout(Exception):
    """A command or transfer ran past its deadline; its channel (or process group) was closed."""

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__(f"`{_short(command)}` still running after {timeout:g}s; stopped")
        self.command = command
        self.timeout = timeout


class KeyFileError(paramiko.AuthenticationException):
    """The device's key file is missing, unreadable, or encrypted without a passphrase."""


def _short(command: str, limit: int = 60) -> str:
    one_line = " ".join(command.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EPIPE, errno.EADDRNOTAVAIL,
})


def _errno(exc: BaseException) -> Optional[int]:
    return exc.errno if isinstance(exc, OSError) else None


def classify(exc: BaseException, device: Device) -> tuple[Outcome, str]:
    """The one place exceptions become outcomes; the detail is a one-line hint for the recap."""
    outcome, detail = _classify(exc, device)
    one_line = " ".join(detail.split())
    return outcome, one_line if len(one_line) <= 400 else one_line[:397] + "..."


def _classify(exc: BaseException, device: Device) -> tuple[Outcome, str]:
    where = f"{device.host}:{device.port}" if device.connection == "ssh" else "local"
    if isinstance(exc, CommandTimeout):
        return Outcome.timeout, str(exc)
    if isinstance(exc, CommandFailed):
        return Outcome.failed, str(exc)
    if isinstance(exc, HostKeyUnknown):
        return Outcome.hostkey_mismatch, str(exc)
    if isinstance(exc, paramiko.BadHostKeyException):
        return Outcome.hostkey_mismatch, (
            f"host key for {exc.hostname} changed (known {fingerprint(exc.expected_key)}, "
            f"got {fingerprint(exc.key)}): possible man-in-the-middle; if the device was "
            "reinstalled, remove its old line from known_hosts after checking the new key"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        if isinstance(exc, KeyFileError):
            return Outcome.auth_failed, str(exc)
        key = f"key {device.key_file}" if device.key_file else "the agent and ~/.ssh keys"
        user = device.user or getpass.getuser()
        return Outcome.auth_failed, f"{user}@{where} refused {key}: {exc}"
    if isinstance(exc, paramiko.SSHException) and isinstance(exc.__context__, socket.timeout):
        return Outcome.timeout, f"{where}: port open but no SSH banner in time (hung sshd?)"
    if isinstance(exc, paramiko.SSHException) and "timed out" in str(exc).lower():
        return Outcome.timeout, f"{where}: SSH negotiation timed out"
    if isinstance(exc, (socket.timeout, TimeoutError)) or _errno(exc) == errno.ETIMEDOUT:
        return Outcome.timeout, f"{where}: no answer in time ({exc or 'timed out'})"
    if isinstance(exc, socket.gaierror):
        return Outcome.unreachable, f"{device.host}: name not resolved ({exc.strerror})"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return Outcome.unreachable, f"{where}: connection refused"
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.unreachable, f"{where}: connection refused"
    if isinstance(exc, paramiko.ChannelException):
        return Outcome.unreachable, f"{where}: jump host could not open a channel ({exc.text})"
    if isinstance(exc, (paramiko.SSHException, EOFError)):
        return Outcome.unreachable, f"{where}: SSH failed: {exc or type(exc).__name__}"
    if _errno(exc) in _NETWORK_ERRNOS:  # not file errors (SFTP's ENOENT is a failed step)
        return Outcome.unreachable, f"{where}: {getattr(exc, 'strerror', None) or exc}"
    log.debug("step failed on %s", device.name, exc_info=exc)
    return Outcome.failed, f"{type(exc).__name__}: {exc}"
