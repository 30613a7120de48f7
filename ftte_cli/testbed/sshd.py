"""One real OpenSSH server per emulated device: its own host key, config, port and log.

sshd is started through a tiny shell wrapper that first writes its own PID into the device's
cgroups and then execs (nsenter into the device's network namespace and) `sshd -D`, so the PID
we record is sshd itself and every session it forks inherits the caps and the namespace.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from ftte_cli.errors import FtteError

log = logging.getLogger(__name__)


class SshdError(FtteError):
    """An emulated device's sshd could not be set up or did not start."""


def sshd_binary() -> str:
    """Absolute path of sshd (often outside a non-root PATH)."""
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if found is None:
        raise SshdError("sshd not found: install openssh-server (scripts/setup.sh does)")
    return found


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at path (+ .pub); returns the public key line."""
    if path.exists():
        path.unlink()
    Path(f"{path}.pub").unlink(missing_ok=True)
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise SshdError(f"ssh-keygen {path}: {proc.stderr.strip()}")
    return Path(f"{path}.pub").read_text().strip()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, *, port: int, listen: str, host_key: Path, authorized_keys: Path,
                 pid_file: Path, root: bool, env: Optional[dict[str, str]] = None) -> None:
    """An sshd_config for one device: key-only login, no PAM, SFTP and forwarding allowed;
    `env` is set in every session (SetEnv: the per-device power file, for example)."""
    lines = [
        f"Port {port}",
        f"ListenAddress {listen}",
        f"HostKey {host_key}",
        f"PidFile {pid_file}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password" if root else "PermitRootLogin no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # keys live under temp folders with loose modes
        "PrintMotd no",
        "UseDNS no",
        "MaxStartups 64:30:128",
        "MaxSessions 64",
        "AllowTcpForwarding yes",  # the training agent reaches the server through a tunnel
        "Subsystem sftp internal-sftp",
        "LogLevel ERROR",
    ]
    lines += [f'SetEnv "{k}={v}"' for k, v in (env or {}).items()]
    path.write_text("\n".join(lines) + "\n")


def write_wrapper(path: Path, *, config: Path, cgroup_procs: list[Path],
                  netns_file: Optional[Path]) -> None:
    """The start script: join the cgroups, then exec [nsenter --net=NS] sshd -D -e -f CONFIG."""
    joins = "".join(f"echo $$ > {shlex.quote(str(p))}\n" for p in cgroup_procs)
    sshd = [sshd_binary(), "-D", "-e", "-f", str(config)]
    # nsenter --net only: `ip netns exec` would also remount /sys and hide the cgroup tree.
    prefix = ["nsenter", f"--net={netns_file}"] if netns_file is not None else []
    path.write_text("#!/bin/sh\nset -e\n" + joins + "exec " + shlex.join(prefix + sshd) + "\n")
    path.chmod(0o755)


def start(wrapper: Path, log_file: Path) -> int:
    """Start the wrapper detached (own session, survives this process); returns sshd's PID."""
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([str(wrapper)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    return proc.pid


def wait_listening(pid: int, host: str, port: int, log_file: Path, timeout: float = 15.0) -> None:
    """Block until sshd accepts TCP on host:port; SshdError with its log if it died or hung."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise SshdError(f"sshd for {host}:{port} exited: {_tail(log_file)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SshdError(f"sshd for {host}:{port} not listening after {timeout:.0f}s: {_tail(log_file)}")


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"


def pid_start_time(pid: int) -> Optional[int]:
    """The process start time in clock ticks (field 22 of /proc/PID/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rpartition(")")[2].split()[19])


def pid_alive(pid: int, start_time: Optional[int] = None) -> bool:
    """True if PID runs (and, when given, is the same process: same start time, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":
        _reap(pid)
        return False
    return start_time is None or int(fields[19]) == start_time


def _reap(pid: int) -> None:
    """Collect a zombie child of ours (sshd started by this very process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
