"""A real OpenSSH server on a loopback port for tests: own host key, own authorized client key.

    with running_sshd(tmp_path) as srv:
        device = Device(name="d", host="127.0.0.1", port=srv.port, user=srv.user,
                        key_file=srv.client_key, known_hosts=srv.known_hosts)

`srv.known_hosts` already trusts the server's host key (`trust=False` leaves it empty).
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_key(path: Path, kind: str = "ed25519") -> Path:
    """A new passphrase-less key pair at `path` and `path.pub` (ssh-keygen)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)],
        check=True, stdin=subprocess.DEVNULL,
    )
    return path


def host_entry(port: int, host: str = "127.0.0.1") -> str:
    """How OpenSSH names the host in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass
class SshServer:
    """One running sshd and the files a client needs to reach it."""

    dir: Path
    port: int
    user: str
    host_key: Path  # private host key (public at .pub)
    client_key: Path  # private client key, authorized on this server
    known_hosts: Path  # trusts this server's host key (unless started with trust=False)
    proc: subprocess.Popen[bytes]

    def host_key_line(self) -> str:
        """The known_hosts line for this server."""
        kind, b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"{host_entry(self.port)} {kind} {b64}\n"

    def stop(self) -> None:
        """Terminate sshd (the listener) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_sshd(
    dir: Path,
    *,
    port: Optional[int] = None,
    host_key: Optional[Path] = None,
    authorized: Optional[list[Path]] = None,
    trust: bool = True,
    extra_config: str = "",
) -> SshServer:
    """Start `sshd -D -e` on 127.0.0.1 with fresh keys in `dir`; returns once the port accepts."""
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    host_key = host_key or make_key(dir / "ssh_host_ed25519_key")
    client_key = make_key(dir / "id_client")
    pubs = [client_key] + list(authorized or [])
    auth_file = dir / "authorized_keys"
    auth_file.write_text("".join(Path(f"{k}.pub").read_text() for k in pubs))
    known_hosts = dir / "known_hosts"
    cfg = dir / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {auth_file}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
        f"UsePAM no\nPidFile {dir / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        "MaxStartups 100\nLogLevel VERBOSE\n" + extra_config
    )
    log = open(dir / "sshd.log", "wb")  # noqa: SIM115 - sshd writes here until stopped
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log)
    log.close()
    srv = SshServer(dir, port, getpass.getuser(), host_key, client_key, known_hosts, proc)
    known_hosts.write_text(srv.host_key_line() if trust else "")
    _wait_listening(srv)
    return srv


def _wait_listening(srv: SshServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(srv.dir / 'sshd.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    srv.stop()
    raise RuntimeError(f"sshd did not listen on {srv.port} within {timeout}s")


@contextmanager
def running_sshd(dir: Path, **kwargs: object) -> Iterator[SshServer]:
    """`start_sshd` as a context manager that always stops the server."""
    srv = start_sshd(dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.stop()
