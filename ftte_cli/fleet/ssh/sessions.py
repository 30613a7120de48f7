"""Sessions: an open connection to one device (SSH, or local subprocesses), and `connect`.

`connect(device, opts)` opens a `SshSession` (a paramiko client with host keys checked as
`hostkeys` says, key auth, and its own deadline on connect, banner, auth, channel open and each
command), through one jump host if the device names one, or a `LocalSession` for
`connection: local`. Both run commands through the device's shell and copy files.
"""

from __future__ import annotations

import getpass
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

import paramiko

from ftte_cli.config.inventory import Device
from ftte_cli.fleet.ssh.hostkeys import enforce_host_keys
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.results import CommandFailed, CommandResult, CommandTimeout, KeyFileError

log = logging.getLogger(__name__)

_POLL_S = 0.2  # how often a waiting command re-checks its deadline
_EOF_GRACE_S = 1.0  # after the exit status, how long to wait for output still in flight


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
