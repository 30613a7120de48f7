"""Network isolation: one bridge per testbed, one namespace and veth pair per device, tc caps.

Layout for testbed id `ab12` on subnet 10.213.X.0/24: bridge `ftab12` holds 10.213.X.1 on the
host; device k lives in namespace `ftte-ab12-k` with address 10.213.X.(k+1) on its end of the
veth pair `ftab12hk` (host side, enslaved to the bridge) / `ftab12dk` (device side). Everything
goes through `ip` and `tc` so the state file can name each thing made and `down` can undo it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ftte_cli.errors import FtteError

log = logging.getLogger(__name__)

NETNS_DIR = Path("/var/run/netns")
SUBNET_BASE = "10.213"  # our own private /24s: 10.213.0.0/24 .. 10.213.255.0/24
_LOCK = Path("/run/ftte-testbed.lock")


class NetError(FtteError):
    """An `ip` or `tc` command failed while building the testbed network."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; a failure raises NetError with ip's own message."""
    return _run(["ip", *args], check)


def tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `tc ARGS`."""
    return _run(["tc", *args], check)


def _run(cmd: list[str], check: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


@contextmanager
def allocation_lock() -> Iterator[None]:
    """Serialise subnet choice between testbeds brought up at the same time."""
    with open(_LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_subnet() -> int:
    """The third octet X of a 10.213.X.0/24 no interface on this host uses (call under the lock)."""
    used = set()
    for line in ip("-o", "-4", "addr", "show").stdout.splitlines():
        for word in line.split():
            if word.startswith(SUBNET_BASE + "."):
                used.add(int(word.split(".")[2]))
    for octet in range(0, 256):
        if octet not in used:
            return octet
    raise NetError(f"no free subnet left in {SUBNET_BASE}.0.0/16")


def address(octet: int, host: int) -> str:
    """10.213.<octet>.<host>, validated."""
    return str(ipaddress.IPv4Address(f"{SUBNET_BASE}.{octet}.{host}"))


def make_bridge(name: str, octet: int) -> None:
    """The host end of the testbed network: a bridge holding .1/24."""
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", f"{address(octet, 1)}/24", "dev", name)
    ip("link", "set", name, "up")


def make_device_net(netns: str, bridge: str, veth_host: str, veth_dev: str, addr: str) -> None:
    """A namespace with loopback up and one veth into the bridge carrying `addr`/24."""
    ip("netns", "add", netns)
    ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_dev, "netns", netns)
    ip("link", "set", veth_host, "master", bridge)
    ip("link", "set", veth_host, "up")
    ip("-n", netns, "link", "set", "lo", "up")  # agents reach tunnels on 127.0.0.1
    ip("-n", netns, "addr", "add", f"{addr}/24", "dev", veth_dev)
    ip("-n", netns, "link", "set", veth_dev, "up")


def cap_bandwidth(netns: str, veth_host: str, veth_dev: str, mbit: float) -> None:
    """A token bucket each way: host->device on the host end, device->host inside the namespace."""
    rate = f"{mbit:g}mbit"
    tbf = ["root", "tbf", "rate", rate, "burst", "64kb", "latency", "200ms"]
    tc("qdisc", "add", "dev", veth_host, *tbf)
    tc("-n", netns, "qdisc", "add", "dev", veth_dev, *tbf)


def netns_path(netns: str) -> Path:
    """The bind-mounted namespace file nsenter --net= takes."""
    return NETNS_DIR / netns


def exists_netns(netns: str) -> bool:
    """True while the namespace is still there."""
    return netns_path(netns).exists()


def exists_link(name: str) -> bool:
    """True while a host link of that name exists."""
    return ip("link", "show", name, check=False).returncode == 0


def delete_netns(netns: str) -> Optional[str]:
    """Remove a namespace (its veth end goes with it, and so does the peer); error text or None."""
    if not exists_netns(netns):
        return None
    proc = ip("netns", "del", netns, check=False)
    return None if proc.returncode == 0 else f"netns {netns}: {proc.stderr.strip()}"


def delete_link(name: str) -> Optional[str]:
    """Remove a host link (bridge or stray veth) if present; error text or None."""
    if not exists_link(name):
        return None
    proc = ip("link", "del", name, check=False)
    if proc.returncode == 0 or not exists_link(name):  # a veth may vanish with its namespace
        return None
    return f"link {name}: {proc.stderr.strip()}"
