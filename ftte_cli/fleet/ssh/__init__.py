"""Reach the fleet over SSH: checked host keys, key auth, a deadline on every step, one outcome.

Lifecycle: `run_on_fleet(devices, fn, opts)` runs `fn(session)` for every device in a pool of
`opts.forks` threads. Each worker opens a `Session` with `connect(device, opts)` (a paramiko
client for `connection: ssh`, local subprocesses for `connection: local`), calls `fn`, closes the
session, and turns the return value or the exception into one `DeviceResult`. Exceptions are
mapped to outcomes in exactly one place, `classify`. A device that hangs costs at most its
connect timeout plus its command timeouts; it never holds up the others beyond that.

Why paramiko directly and not Fabric: Fabric's `Connection` auto-adds unknown host keys
(`AutoAddPolicy`), its command timeout is a watcher thread in Invoke rather than a deadline on
the channel, and its errors surface as a mix of Invoke and paramiko types. Here unknown keys are
refused unless the operator opts in (`--accept-new-host-keys`, which trusts and records them,
like OpenSSH's StrictHostKeyChecking=accept-new), a changed key is always refused, and connect,
banner, auth, channel-open and each command run under their own timeout. User scripts that
want Fabric get it with these rules applied (`fleet/fabric_group.py`, `enforce_host_keys`).

Host keys come from `SshOptions.known_hosts` (a CLI flag), else the device's `ftte_known_hosts`,
else `~/.ssh/known_hosts` (the system-wide /etc/ssh/ssh_known_hosts is not read); non-22 ports
are stored as `[host]:port` as OpenSSH does; hashed entries are understood, new ones are
recorded in plain form. A device with keys of another type already known counts as changed,
never as new.

Known limits: name resolution (getaddrinfo) is not under the connect timeout, so a hanging DNS
server delays that device (only); a timed-out remote command is killed through the SSH "signal"
request, which OpenSSH honours for non-root logins only (for root, privilege separation is off
after login and sshd refuses it), so there the command may run on after its channel is closed.

ProxyJump: one hop is supported (`Device.proxy_jump`, "[user@]host[:port]"): we connect to the
jump host with the same host-key rules (and the device's key file or the agent) and open a
`direct-tcpip` channel to the device. Chains of several hops are refused.

Secrets are never logged: key passphrases come from the environment variable named by the
inventory's `ftte_password_env` and go straight to paramiko.

Layout: `options` (SshOptions), `results` (the result model and `classify`), `hostkeys` (the
known_hosts policy), `sessions` (the two session kinds, the jump host, `connect`) and `pool`
(`run_on_fleet`). Import from here or from the module; the names are the same. paramiko logs
every expected failure as ERROR with a traceback, so the CLI's entry point (`cli.py`) lowers its
logger (FTTE_PARAMIKO_LOG=DEBUG brings it back); importing this package changes no logging.
"""

from ftte_cli.fleet.ssh.hostkeys import (
    DEFAULT_KNOWN_HOSTS,
    HostKeyChanged,
    HostKeyUnknown,
    enforce_host_keys,
    fingerprint,
    host_key_name,
    known_hosts_path,
    record_host_key,
)
from ftte_cli.fleet.ssh.options import SLOW_DEVICE_SSH, SshOptions
from ftte_cli.fleet.ssh.pool import FleetInterrupted, StepResult, run_on_fleet, run_one
from ftte_cli.fleet.ssh.results import (
    EXIT_CODES,
    SEVERITY,
    CommandFailed,
    CommandResult,
    CommandTimeout,
    DeviceResult,
    FleetResults,
    KeyFileError,
    Outcome,
    classify,
)
from ftte_cli.fleet.ssh.sessions import (
    LocalSession,
    Session,
    SshSession,
    StdinData,
    connect,
    jump_host,
    key_passphrase,
)

__all__ = [
    "DEFAULT_KNOWN_HOSTS", "EXIT_CODES", "SEVERITY", "SLOW_DEVICE_SSH", "CommandFailed",
    "CommandResult", "CommandTimeout", "DeviceResult", "FleetInterrupted", "FleetResults",
    "HostKeyChanged", "HostKeyUnknown", "KeyFileError", "LocalSession", "Outcome", "Session",
    "SshOptions", "SshSession", "StdinData", "StepResult", "classify", "connect",
    "enforce_host_keys", "fingerprint", "host_key_name", "jump_host", "key_passphrase",
    "known_hosts_path", "record_host_key", "run_on_fleet", "run_one",
]
