"""Ad-hoc commands on the fleet (`ftte exec`), the `ansible pis -m shell -a ...` habit.

`run_command(devices, command, opts)` runs one shell command on every device through the same
`run_on_fleet` pool as every other fleet command, so forks, connect and command timeouts, host-key
rules and outcomes are theirs. Each device's `DeviceResult.value` is a `CommandOutput` (exit
status, stdout, stderr) when the command ran at all; a device that could not be reached, or whose
command ran past `opts.command_timeout`, has no output (value None).

Outcomes: exit status 0 is `ok` (ftte cannot tell whether an arbitrary command changed
anything, so it never claims `changed`); any other status is `failed` with the status and the
last line of output as detail. `--sudo` runs `sudo -n -- sh -c COMMAND`: never a password
prompt, which would hang a fleet run; a device that wants a password fails with sudo's message.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable, Optional

from ftte_cli.config.inventory import Device
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.pool import run_on_fleet
from ftte_cli.fleet.ssh.results import DeviceResult, FleetResults, Outcome
from ftte_cli.fleet.ssh.sessions import Session


@dataclass(frozen=True)
class CommandOutput:
    """What the command printed on one device and how it exited."""

    rc: int
    """The command's exit status (the shell's: 127 for a command not found)."""
    stdout: str
    stderr: str


def remote_command(command: str, sudo: bool = False) -> str:
    """The line the device's shell runs: the command as given, or wrapped in a non-interactive
    sudo (`-n`: fail instead of prompting for a password)."""
    return f"sudo -n -- sh -c {shlex.quote(command)}" if sudo else command


def _detail(out: CommandOutput) -> str:
    last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or [""]
    return f"exit {out.rc}: {last[0][:200]}".rstrip(": ")


def run_command(
    devices: list[Device],
    command: str,
    opts: SshOptions,
    *,
    sudo: bool = False,
    on_done: Optional[Callable[[DeviceResult], None]] = None,
) -> FleetResults:
    """Run `command` on every device, `opts.forks` at a time; values are `CommandOutput`."""
    line = remote_command(command, sudo)

    def step(session: Session) -> DeviceResult:
        res = session.run(line, check=False)
        out = CommandOutput(res.rc, res.stdout, res.stderr)
        if res.rc == 0:
            return DeviceResult(session.device, Outcome.ok, value=out)
        return DeviceResult(session.device, Outcome.failed, _detail(out), value=out)

    return run_on_fleet(devices, step, opts, on_done=on_done)
