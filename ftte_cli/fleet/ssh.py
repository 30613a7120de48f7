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
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

import paramiko

from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode

log = logging.getLogger(__name__)
# paramiko logs every expected failure (refused key, silent port) as ERROR with a traceback,
# which would land in the user's terminal; the recap's detail says it in one line instead.
# FTTE_PARAMIKO_LOG=DEBUG brings paramiko's own log back.
_PARAMIKO_LEVEL = os.environ.get("FTTE_PARAMIKO_LOG", "CRITICAL").upper()
logging.getLogger("paramiko").setLevel(getattr(logging, _PARAMIKO_LEVEL, logging.CRITICAL))

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_POLL_S = 0.2  # how often a waiting command re-checks its deadline
_EOF_GRACE_S = 1.0  # after the exit status, how long to wait for output still in flight
_RECORD_LOCK = threading.Lock()  # workers append to the same known_hosts file


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


class HostKeyUnknown(paramiko.SSHException):
    """The device's host key is not in known_hosts and the operator did not opt in."""


class HostKeyChanged(paramiko.BadHostKeyException):
    """Known_hosts holds keys of other types for this host: treated like a changed key."""


class KeyFileError(paramiko.AuthenticationException):
    """The device's key file is missing, unreadable, or encrypted without a passphrase."""


def _short(command: str, limit: int = 60) -> str:
    one_line = " ".join(command.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


# --- host keys ---------------------------------------------------------------------------------


def known_hosts_path(device: Device, opts: SshOptions) -> Path:
    """The known_hosts file used for `device`: CLI flag, then the device's, then ~/.ssh's."""
    path = opts.known_hosts or device.known_hosts or DEFAULT_KNOWN_HOSTS
    return Path(path).expanduser()


def host_key_name(host: str, port: int) -> str:
    """The known_hosts entry name OpenSSH uses: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append `name keytype base64` to `path` (created 0600 in a 0700 folder) unless present."""
    with _RECORD_LOCK:
        if path.exists():
            known = paramiko.HostKeys(str(path)).lookup(name)
            if known is not None and known.get(key.get_name()) == key:
                return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when the presented key type is not known for the host."""

    def __init__(self, path: Path, accept_new: bool) -> None:
        self.path = path
        self.accept_new = accept_new

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        others = client.get_host_keys().lookup(hostname)
        if others:  # keys of another type are known: a swap of key type is not "new"
            raise HostKeyChanged(hostname, key, next(iter(others.values())))
        if not self.accept_new:
            raise HostKeyUnknown(
                f"host key for {hostname} is unknown ({_fingerprint(key)}), not in {self.path}; "
                "verify it and rerun with --accept-new-host-keys to trust and record it"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        record_host_key(self.path, hostname, key)
        log.info("recorded new host key for %s in %s", hostname, self.path)


# --- sessions ----------------------------------------------------------------------------------

StdinData = Union[str, bytes, None]


class Session:
    """An open connection to one device: run commands, copy files. Use as a context manager."""

    device: Device
    transport: Optional[paramiko.Transport] = None

    def run(
        self, cmd: str, timeout: Optional[float] = None, stdin: StdinData = None, check: bool = True
    ) -> CommandResult:
        """Run `cmd` through the device's shell; raise CommandTimeout / CommandFailed."""
        raise NotImplementedError

    def put(self, local: Union[str, Path], remote: str) -> None:
        """Copy a local file to `remote` (a `~/` prefix means the login directory)."""
        raise NotImplementedError

    def get(self, remote: str, local: Union[str, Path]) -> None:
        """Copy `remote` from the device to a local file."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_bytes(data: StdinData) -> Optional[bytes]:
    return data.encode() if isinstance(data, str) else data


def _finish(cmd: str, rc: int, out: bytes, err: bytes, check: bool) -> CommandResult:
    result = CommandResult(rc, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and rc != 0:
        raise CommandFailed(cmd, result)
    return result


def _sftp_path(remote: str) -> str:
    # SFTP does not expand `~`; its relative paths start at the login directory.
    if remote == "~":
        return "."
    return remote[2:] if remote.startswith("~/") else remote


class SshSession(Session):
    """A paramiko client (and its jump host, if any) with deadlines on every step."""

    def __init__(
        self,
        device: Device,
        opts: SshOptions,
        client: paramiko.SSHClient,
        jump: Optional[paramiko.SSHClient] = None,
    ) -> None:
        self.device = device
        self.opts = opts
        self._client = client
        self._jump = jump
        self.transport = client.get_transport()

    def run(
        self, cmd: str, timeout: Optional[float] = None, stdin: StdinData = None, check: bool = True
    ) -> CommandResult:
        limit = self.opts.command_timeout if timeout is None else timeout
        assert self.transport is not None
        chan = self.transport.open_session(timeout=self.opts.connect_timeout)
        try:
            chan.exec_command(cmd)
            out, err = _exchange(chan, cmd, _as_bytes(stdin) or b"", limit)
            rc = chan.recv_exit_status()
        except CommandTimeout:
            _kill_remote(chan)
            raise
        finally:
            chan.close()
        return _finish(cmd, rc, out, err, check)

    def _sftp(self) -> paramiko.SFTPClient:
        sftp = self._client.open_sftp()
        sftp.get_channel().settimeout(self.opts.command_timeout)  # a stalled transfer times out
        return sftp

    def put(self, local: Union[str, Path], remote: str) -> None:
        with self._sftp() as sftp:
            sftp.put(str(local), _sftp_path(remote))

    def get(self, remote: str, local: Union[str, Path]) -> None:
        with self._sftp() as sftp:
            sftp.get(_sftp_path(remote), str(local))

    def close(self) -> None:
        self._client.close()
        if self._jump is not None:
            self._jump.close()


def _kill_remote(chan: paramiko.Channel) -> None:
    """Ask sshd to SIGKILL the command's process group (RFC 4254 "signal" request).

    Closing the channel alone leaves the command running on the device. OpenSSH >= 7.9 honours
    this request (killpg of the session); older servers ignore it, so it is best effort.
    paramiko has no public call for it, hence the hand-built message.
    """
    msg = paramiko.Message()
    msg.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    msg.add_int(chan.remote_chanid)
    msg.add_string("signal")
    msg.add_boolean(False)
    msg.add_string("KILL")
    try:
        chan.transport._send_user_message(msg)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - the channel is closed next anyway
        log.debug("could not send the kill signal request", exc_info=True)


def _exchange(
    chan: paramiko.Channel, cmd: str, data: bytes, limit: float
) -> tuple[bytes, bytes]:
    """Feed `data` to stdin while reading stdout/stderr, until the command exits or time is up.

    Sending and reading are interleaved so a command that prints a lot before it has read all
    of its input cannot deadlock on a full channel window.
    """
    deadline = time.monotonic() + limit
    out, err = bytearray(), bytearray()
    sent = 0
    exited_at: Optional[float] = None
    if not data:
        chan.shutdown_write()
    while True:
        if sent < len(data):
            sent = _send_some(chan, data, sent)
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            exited_at = exited_at or time.monotonic()
            # A background child may hold stdout open forever; ssh(1) would hang on it.
            if chan.eof_received or time.monotonic() - exited_at >= _EOF_GRACE_S:
                return bytes(out), bytes(err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandTimeout(cmd, limit)
        wait = _POLL_S if sent >= len(data) else 0.005  # poll the send window while sending
        select.select([chan], [], [], min(remaining, wait))


def _send_some(chan: paramiko.Channel, data: bytes, sent: int) -> int:
    """Send what the window allows now; past the end once the command stops listening."""
    if chan.exit_status_ready() or chan.closed:
        return len(data)  # it exited without reading everything: drop the rest, as ssh does
    if not chan.send_ready():
        return sent
    try:
        sent += chan.send(data[sent : sent + 65536])
    except OSError:
        return len(data)
    if sent >= len(data):
        chan.shutdown_write()
    return sent


class LocalSession(Session):
    """`connection: local`: the same commands as shell subprocesses, transfers as file copies."""

    def __init__(self, device: Device, opts: SshOptions) -> None:
        self.device = device
        self.opts = opts
        self.transport = None

    def run(
        self, cmd: str, timeout: Optional[float] = None, stdin: StdinData = None, check: bool = True
    ) -> CommandResult:
        limit = self.opts.command_timeout if timeout is None else timeout
        # Own process group, so a timeout kills the shell's children too.
        proc = subprocess.Popen(
            cmd, shell=True, cwd=Path.home(), start_new_session=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()
        pumps = [_thread(_feed, proc.stdin, _as_bytes(stdin) or b""),
                 _thread(_pump, proc.stdout, out), _thread(_pump, proc.stderr, err)]
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise CommandTimeout(cmd, limit) from None
        # As over SSH: a background child holding the pipes does not hold up the result.
        grace_end = time.monotonic() + _EOF_GRACE_S
        for t in pumps:
            t.join(max(0.0, grace_end - time.monotonic()))
        return _finish(cmd, proc.returncode, bytes(out), bytes(err), check)

    def put(self, local: Union[str, Path], remote: str) -> None:
        shutil.copyfile(Path(local).expanduser(), Path(remote).expanduser())

    def get(self, remote: str, local: Union[str, Path]) -> None:
        shutil.copyfile(Path(remote).expanduser(), Path(local).expanduser())


def _thread(target: Callable[..., None], *args: Any) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:  # it exited without reading everything, as over SSH: drop the rest
        pass


def _pump(pipe: IO[bytes], sink: bytearray) -> None:
    fd = pipe.fileno()
    for chunk in iter(lambda: os.read(fd, 65536), b""):
        sink += chunk
    pipe.close()


def _parse_jump(spec: str) -> tuple[Optional[str], str, int]:
    """`[user@]host[:port]` -> (user, host, port); several hops are refused."""
    if "," in spec:
        raise paramiko.SSHException(f"ProxyJump {spec!r}: only one jump host is supported")
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, 22
    if hostport.startswith("["):  # [v6addr]:port
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 22
    elif hostport.count(":") == 1:
        host, _, p = hostport.partition(":")
        port = int(p)
    return (user or None), host, port


def _passphrase(device: Device) -> Optional[str]:
    var = device.vars.get("ftte_password_env")
    return os.environ.get(str(var)) if var else None


def enforce_host_keys(client: paramiko.SSHClient, device: Device, opts: SshOptions) -> Path:
    """Give a client ftte's host-key rules for `device`: its known_hosts loaded, unknown keys
    refused unless `opts.accept_new_host_keys` (then recorded), changed keys always refused.
    Also for clients ftte does not open itself (Fabric's, `fleet/fabric_group.py`)."""
    path = known_hosts_path(device, opts)
    if path.is_file():
        client.get_host_keys().load(str(path))
    client.set_missing_host_key_policy(_HostKeyPolicy(path, opts.accept_new_host_keys))
    return path


def jump_host(device: Device) -> Optional[tuple[Optional[str], str, int]]:
    """(user, host, port) of the device's one jump host, or None (several hops: SSHException)."""
    return _parse_jump(device.proxy_jump) if device.proxy_jump else None


def key_passphrase(device: Device) -> Optional[str]:
    """The key passphrase from the variable named by `ftte_password_env` (None if unset)."""
    return _passphrase(device)


def _check_key_file(device: Device) -> None:
    if device.key_file is not None and not Path(device.key_file).expanduser().is_file():
        raise KeyFileError(f"key file {device.key_file} not found")


def _open_client(
    device: Device,
    host: str,
    port: int,
    user: Optional[str],
    opts: SshOptions,
    sock: Optional[paramiko.Channel] = None,
) -> paramiko.SSHClient:
    """A connected, authenticated paramiko client; host keys checked as the module doc says."""
    client = paramiko.SSHClient()
    enforce_host_keys(client, device, opts)
    key_file = str(Path(device.key_file).expanduser()) if device.key_file else None
    try:
        client.connect(
            hostname=host,
            port=port,
            username=user or getpass.getuser(),
            key_filename=key_file,
            passphrase=_passphrase(device),
            # A named key is the identity, like IdentitiesOnly: trying every ~/.ssh key first
            # can exhaust the server's MaxAuthTries. The agent is still asked, as OpenSSH does.
            look_for_keys=key_file is None,
            allow_agent=True,
            timeout=opts.connect_timeout,
            # paramiko waits for the whole negotiation with `timeout` too; a shorter banner
            # deadline makes a silent port fail as "no banner" instead of a racy generic error.
            banner_timeout=opts.connect_timeout * 0.8,
            auth_timeout=opts.connect_timeout,
            channel_timeout=opts.connect_timeout,
            sock=sock,
        )
    except paramiko.PasswordRequiredException:
        client.close()
        var = device.vars.get("ftte_password_env")
        how = (f"environment variable {var} is not set" if var else
               "set ftte_password_env to the NAME of a variable holding its passphrase")
        raise KeyFileError(
            f"key file {device.key_file} is encrypted: {how}, or load the key into ssh-agent"
        ) from None
    except BaseException:
        client.close()
        raise
    return client


def connect(device: Device, opts: SshOptions) -> Session:
    """Open a session to `device` (SSH, via one jump host if set, or local)."""
    if device.connection == "local":
        return LocalSession(device, opts)
    _check_key_file(device)
    jump: Optional[paramiko.SSHClient] = None
    sock: Optional[paramiko.Channel] = None
    if device.proxy_jump:
        juser, jhost, jport = _parse_jump(device.proxy_jump)
        jump = _open_client(device, jhost, jport, juser or device.user, opts)
        transport = jump.get_transport()
        assert transport is not None
        try:
            sock = transport.open_channel(
                "direct-tcpip", (device.host, device.port), ("127.0.0.1", 0),
                timeout=opts.connect_timeout,
            )
        except BaseException:
            jump.close()
            raise
    try:
        client = _open_client(device, device.host, device.port, device.user, opts, sock)
    except BaseException:
        if jump is not None:
            jump.close()
        raise
    return SshSession(device, opts, client, jump)


# --- fleet runs --------------------------------------------------------------------------------

StepResult = Union[DeviceResult, Outcome, None, Any]


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
            f"host key for {exc.hostname} changed (known {_fingerprint(exc.expected_key)}, "
            f"got {_fingerprint(exc.key)}): possible man-in-the-middle; if the device was "
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


def _to_result(device: Device, value: StepResult, elapsed: float) -> DeviceResult:
    if isinstance(value, DeviceResult):
        return replace(value, elapsed=value.elapsed or elapsed)
    if isinstance(value, Outcome):
        return DeviceResult(device, value, elapsed=elapsed)
    return DeviceResult(device, Outcome.ok, elapsed=elapsed, value=value)


def run_one(device: Device, fn: Callable[[Session], StepResult], opts: SshOptions) -> DeviceResult:
    """Connect, run `fn`, close; never raises (except KeyboardInterrupt and friends)."""
    start = time.monotonic()
    try:
        with connect(device, opts) as session:
            value = fn(session)
        return _to_result(device, value, time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome, by design
        outcome, detail = classify(exc, device)
        log.info("%s: %s: %s", device.name, outcome.value, detail)
        return DeviceResult(device, outcome, detail, time.monotonic() - start)


def run_on_fleet(
    devices: list[Device],
    fn: Callable[[Session], StepResult],
    opts: SshOptions,
    on_done: Optional[Callable[[DeviceResult], None]] = None,
) -> FleetResults:
    """Run `fn(session)` on every device, `opts.forks` at a time; results in `devices` order.

    `fn` may return a DeviceResult, an Outcome, or any value (stored as `value`, outcome ok).
    `on_done` is called from the worker thread as each device finishes (for live progress).
    """

    def work(device: Device) -> DeviceResult:
        result = run_one(device, fn, opts)
        if on_done is not None:
            on_done(result)
        return result

    if not devices:
        return FleetResults({})
    pool = ThreadPoolExecutor(max_workers=max(1, opts.forks), thread_name_prefix="ftte-ssh")
    futures = [pool.submit(work, d) for d in devices]
    try:
        done = [f.result() for f in futures]
    except KeyboardInterrupt:
        raise FleetInterrupted(_after_interrupt(devices, futures, pool)) from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return FleetResults({r.device.name: r for r in done})


class FleetInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fleet step: `results` says what each device ended with."""

    def __init__(self, results: FleetResults) -> None:
        super().__init__("interrupted")
        self.results = results


def _after_interrupt(devices: list[Device], futures: list[Any],
                     pool: ThreadPoolExecutor) -> FleetResults:
    """Ctrl-C: start no further device, let the steps in flight finish (each is atomic on its
    device, so finishing is the safe way to stop); a second Ctrl-C abandons them."""
    for f in futures:
        f.cancel()  # only those not started yet
    try:
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
    out = {}
    for device, f in zip(devices, futures):
        if f.cancelled():
            out[device.name] = DeviceResult(device, Outcome.interrupted,
                                            "not started: interrupted (Ctrl-C); left as it was")
        elif f.done() and f.exception() is None:
            out[device.name] = f.result()
        else:
            out[device.name] = DeviceResult(device, Outcome.interrupted,
                                            "abandoned mid-step by a second Ctrl-C")
    return FleetResults(out)

