"""Bring an emulated fleet up, report on it, and take it down again, leaving nothing behind.

Lifecycle: `up` makes a bridge, then per device a cgroup with caps, a network namespace with a
veth into the bridge (and tc caps), a host key, an sshd config and a wrapper, and starts sshd;
each step is recorded in the state file before the next. It then writes the client key pair,
`known_hosts` and `inventory.yaml`. `down` reads the state and undoes each recorded thing that
still exists, so it is idempotent and safe after a half-finished `up`. Without root there are no
namespaces or cgroups: each sshd listens on a loopback port, uncapped, and the notes say so.

Reaping: `up` makes the calling process a child subreaper (Linux prctl), so what the testbed
starts and orphans (sshd's sessions, processes left running over SSH) becomes its child rather
than PID 1's, and `down` reaps every process it stopped: no zombies, also under a PID 1 that
never reaps (many containers). A testbed brought up by one process and taken down by another
(two `ftte testbed` calls) leaves its sshds to PID 1 when the first exits; there, run under an
init that reaps (`docker run --init`, tini) or use `ftte demo`, which does both in one process.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from ftte_cli.errors import ConfigError
from ftte_cli.testbed import cgroups, netns, sshd
from ftte_cli.testbed import state as st
from ftte_cli.testbed.devices import TORCH_SHARED_BYTES, DeviceClass, parse_mix

log = logging.getLogger(__name__)

INVENTORY_FILE = "inventory.yaml"
CLIENT_KEY = "id_ed25519"
KNOWN_HOSTS = "known_hosts"
ISOLATED_PORT_BASE = 2200  # device k listens on 2200+k inside its own namespace
# Each device's emulated battery/temperature: <dir>/<device>/power.json, named in every SSH
# session by $FTTE_POWER_FILE (client/power.py reads it; absent: the real sensors, if any).
POWER_FILE = "power.json"
POWER_FILE_ENV = "FTTE_POWER_FILE"


def power_file(directory: Path, device: str) -> Path:
    """Where a testbed device's emulated power state lives (write JSON: battery, charging,
    temperature_c, power_w, throttled; delete it to go back to the machine's sensors)."""
    return Path(directory) / device / POWER_FILE


def set_power(directory: Path, device: str, values: Optional[dict[str, Any]]) -> Path:
    """Write (or with None remove) one device's emulated power state; ConfigError names an
    unknown device or testbed. Agents read it before their next job, the probe at once."""
    state = st.load(Path(directory))
    if state is None:
        raise ConfigError(f"{directory}: no testbed here (ftte testbed up first)")
    names = [d.name for d in state.devices]
    if device not in names:
        raise ConfigError(f"{directory}: no device {device!r} (devices: {', '.join(names)})")
    path = power_file(Path(state.dir), device)
    if values is None:
        path.unlink(missing_ok=True)
    else:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(values) + "\n")
        os.replace(tmp, path)  # an agent never reads half a file
    return path


@dataclass(frozen=True)
class DeviceStatus:
    """One row of `ftte testbed status`."""

    name: str
    device_class: str
    address: str
    port: int
    alive: bool
    pid: Optional[int]
    mem_cap_bytes: Optional[int]
    cpu_percent: Optional[int]
    bandwidth_mbit: Optional[float]
    mem_used_bytes: Optional[int]  # the cgroup's current usage, when capped


@dataclass(frozen=True)
class DownReport:
    """What `down` removed, and anything it could not."""

    killed: tuple[int, ...]
    cgroups: tuple[str, ...]
    namespaces: tuple[str, ...]
    links: tuple[str, ...]
    leftovers: tuple[str, ...]


def can_isolate() -> tuple[bool, str]:
    """(True, "") when namespaces and cgroups are available, else (False, the reason)."""
    if os.geteuid() != 0:
        return False, "not root: plain sshd on loopback ports, no memory/CPU/bandwidth caps"
    for tool in ("ip", "nsenter", "tc"):
        if shutil.which(tool) is None:
            return False, f"{tool} not found: plain sshd on loopback ports, no caps"
    mounts = cgroups.find_mounts()
    if mounts.memory is None or mounts.cpu is None:
        return False, "no memory/cpu cgroup controllers mounted: loopback sshd, no caps"
    return True, ""


def up(directory: Path, devices: int, mix: str, bandwidth: bool = True) -> st.TestbedState:
    """Start `devices` emulated devices in `directory`; returns the saved state."""
    classes = parse_mix(mix, devices)
    become_subreaper()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    _refuse_if_running(directory)
    isolated, why = can_isolate()
    state = st.TestbedState(id=_new_id(), dir=str(directory), isolated=isolated,
                            created_at=time.time(), notes=(why,) if why else ())
    st.save(state)
    try:
        return _build(state, classes, bandwidth)
    except BaseException:
        down(directory)
        raise


def _new_id() -> str:
    """A short id no other testbed on this host uses (names of namespaces, links, cgroups)."""
    mounts = cgroups.find_mounts()
    while True:
        tid = secrets.token_hex(2)
        taken = netns.exists_netns(f"ftte-{tid}-1") or any(
            root is not None and (root / "ftte" / tid).exists()
            for root in (mounts.memory, mounts.cpu))
        if not taken:
            return tid


def _refuse_if_running(directory: Path) -> None:
    old = st.load(directory)
    if old is None:
        return
    if any(d.pid is not None and sshd.pid_alive(d.pid, d.pid_start) for d in old.devices):
        raise ConfigError(f"{directory}: a testbed is already up (run `ftte testbed down "
                          f"--dir {directory}` first)")
    down(directory)  # a stale state from a crash or a reboot: clean what is left


def _build(state: st.TestbedState, classes: list[DeviceClass], bandwidth: bool) -> st.TestbedState:
    directory = Path(state.dir)
    client_pub = sshd.keygen(directory / CLIENT_KEY, f"ftte-testbed-{state.id}")
    (directory / "authorized_keys").write_text(client_pub + "\n")
    shared = 0
    if state.isolated:
        state = _make_network(state, len(classes))
        if any(c.mem_cap_bytes is not None for c in classes):
            shared = TORCH_SHARED_BYTES
            state = replace(state, notes=state.notes + (
                f"memory caps are each board's free memory; the cgroup limits are "
                f"{shared // 2**20} MiB lower: torch's shared library pages, which this host "
                "already holds and a board would not (testbed/devices.py)",))
    for k, cls in enumerate(classes, start=1):
        state = _make_device(state, k, cls, bandwidth, shared)
    for dev in state.devices:
        assert dev.pid is not None
        sshd.wait_listening(dev.pid, dev.address, dev.port, directory / dev.name / "sshd.log")
    _write_known_hosts(state)
    write_inventory(state)
    return state


def _make_network(state: st.TestbedState, devices: int) -> st.TestbedState:
    """The testbed's cgroup parents (with CPU weight) and its bridge on a free subnet."""
    mounts = cgroups.find_mounts()
    parents = []
    for root in {mounts.memory, mounts.cpu}:
        assert root is not None
        parents += [str(root / "ftte"), str(root / "ftte" / state.id)]
    state = replace(state, cgroup_parents=tuple(parents))
    st.save(state)
    for rel in ("ftte", f"ftte/{state.id}"):
        cgroups.weigh(mounts, rel, devices)
    with netns.allocation_lock():
        octet = netns.free_subnet()
        state = replace(state, subnet_octet=octet, bridge=f"ft{state.id}")
        st.save(state)  # recorded first: a crash inside make_bridge still gets cleaned
        netns.make_bridge(f"ft{state.id}", octet)
    return state


def _make_device(state: st.TestbedState, k: int, cls: DeviceClass,
                 bandwidth: bool, shared: int = 0) -> st.TestbedState:
    directory = Path(state.dir)
    name = f"{cls.name}-{k}"
    ddir = directory / name
    (ddir / "work").mkdir(parents=True, exist_ok=True)
    if state.isolated:
        assert state.subnet_octet is not None
        dev = st.DeviceState(name=name, device_class=cls.name,
                             address=netns.address(state.subnet_octet, k + 1),
                             port=ISOLATED_PORT_BASE + k, workdir=str(ddir / "work"),
                             netns=f"ftte-{state.id}-{k}", veth_host=f"ft{state.id}h{k}",
                             veth_dev=f"ft{state.id}d{k}")
        dev, state = _isolate(state, dev, cls, bandwidth, shared)
    else:
        dev = st.DeviceState(name=name, device_class=cls.name, address="127.0.0.1",
                             port=sshd.free_port(), workdir=str(ddir / "work"))
    return _start_sshd(state, dev, ddir)


def _isolate(state: st.TestbedState, dev: st.DeviceState, cls: DeviceClass,
             bandwidth: bool, shared: int) -> tuple[st.DeviceState, st.TestbedState]:
    """Cgroup caps, namespace and veth (and tc caps) for one device, each recorded as made;
    the memory limit is the class's free memory less `shared` (see testbed/devices.py)."""
    mounts = cgroups.find_mounts()
    rel = f"ftte/{state.id}/{dev.name}"
    leaves = sorted({str(root / rel) for root in (mounts.memory, mounts.cpu) if root is not None})
    dev = replace(dev, cgroups=tuple(leaves))
    state = state.with_device(dev)
    st.save(state)
    limit = None if cls.mem_cap_bytes is None else max(cls.mem_cap_bytes - shared,
                                                        cls.mem_cap_bytes // 2)
    cgroups.create(mounts, rel, limit, cls.cpu_percent)
    dev = replace(dev, mem_cap_bytes=cls.mem_cap_bytes, cgroup_limit_bytes=limit,
                  cpu_percent=cls.cpu_percent)
    assert dev.netns and state.bridge and dev.veth_host and dev.veth_dev
    netns.make_device_net(dev.netns, state.bridge, dev.veth_host, dev.veth_dev, dev.address)
    if bandwidth and cls.bandwidth_mbit is not None:
        try:
            netns.cap_bandwidth(dev.netns, dev.veth_host, dev.veth_dev, cls.bandwidth_mbit)
            dev = replace(dev, bandwidth_mbit=cls.bandwidth_mbit)
        except netns.NetError as err:  # e.g. no sch_tbf in this kernel: run uncapped, say so
            state = replace(state, notes=state.notes + (f"{dev.name}: link not capped: {err}",))
    state = state.with_device(dev)
    st.save(state)
    return dev, state


def _start_sshd(state: st.TestbedState, dev: st.DeviceState, ddir: Path) -> st.TestbedState:
    sshd.keygen(ddir / "ssh_host_ed25519_key", f"{dev.name}-host")
    sshd.write_config(ddir / "sshd_config", port=dev.port, listen=dev.address,
                      host_key=ddir / "ssh_host_ed25519_key",
                      authorized_keys=Path(state.dir) / "authorized_keys",
                      pid_file=ddir / "sshd.pid", root=os.geteuid() == 0,
                      env={POWER_FILE_ENV: str(ddir / POWER_FILE)})
    sshd.write_wrapper(ddir / "start-sshd.sh", config=ddir / "sshd_config",
                       cgroup_procs=[Path(c) / "cgroup.procs" for c in dev.cgroups],
                       netns_file=netns.netns_path(dev.netns) if dev.netns else None)
    pid = sshd.start(ddir / "start-sshd.sh", ddir / "sshd.log")
    dev = replace(dev, pid=pid, pid_start=sshd.pid_start_time(pid))
    state = state.with_device(dev)
    st.save(state)
    return state


def _write_known_hosts(state: st.TestbedState) -> None:
    lines = []
    for dev in state.devices:
        pub = (Path(state.dir) / dev.name / "ssh_host_ed25519_key.pub").read_text().split()
        lines.append(f"[{dev.address}]:{dev.port} {pub[0]} {pub[1]}")
    (Path(state.dir) / KNOWN_HOSTS).write_text("\n".join(lines) + "\n")


def inventory_data(state: st.TestbedState) -> dict[str, Any]:
    """The Ansible-style inventory of a testbed: one child group per device class."""
    directory = Path(state.dir)
    groups: dict[str, dict[str, Any]] = {}
    for dev in state.devices:
        host: dict[str, Any] = {"ansible_host": dev.address, "ansible_port": dev.port,
                                "ftte_device_class": dev.device_class,
                                "ftte_workdir": dev.workdir}
        if dev.mem_cap_bytes is not None:
            host["ftte_mem_cap_mb"] = dev.mem_cap_bytes // (1024 * 1024)
        groups.setdefault(dev.device_class, {"hosts": {}})["hosts"][dev.name] = host
    return {"all": {
        "vars": {
            "ansible_user": "root" if os.geteuid() == 0 else getpass.getuser(),
            "ansible_ssh_private_key_file": str(directory / CLIENT_KEY),
            "ansible_python_interpreter": sys.executable,  # the venv: devices have torch
            "ftte_known_hosts": str(directory / KNOWN_HOSTS),
        },
        "children": groups,
    }}


def write_inventory(state: st.TestbedState) -> Path:
    """Write `<dir>/inventory.yaml` (with a header saying what made it)."""
    import yaml

    path = Path(state.dir) / INVENTORY_FILE
    header = (f"# Emulated testbed {state.id}, written by `ftte testbed up`; "
              f"removed from service by `ftte testbed down --dir {state.dir}`.\n")
    path.write_text(header + yaml.safe_dump(inventory_data(state), sort_keys=False))
    return path


def status(directory: Path) -> tuple[Optional[st.TestbedState], list[DeviceStatus]]:
    """The state in `directory` (None if no testbed) and one live row per device."""
    state = st.load(Path(directory).resolve())
    if state is None:
        return None, []
    return state, [_device_status(d) for d in state.devices]


def _device_status(dev: st.DeviceState) -> DeviceStatus:
    alive = dev.pid is not None and sshd.pid_alive(dev.pid, dev.pid_start)
    return DeviceStatus(name=dev.name, device_class=dev.device_class, address=dev.address,
                        port=dev.port, alive=alive, pid=dev.pid, mem_cap_bytes=dev.mem_cap_bytes,
                        cpu_percent=dev.cpu_percent, bandwidth_mbit=dev.bandwidth_mbit,
                        mem_used_bytes=_mem_used(dev))


def _mem_used(dev: st.DeviceState) -> Optional[int]:
    for cg in dev.cgroups:
        for name in ("memory.usage_in_bytes", "memory.current"):
            path = Path(cg) / name
            if path.exists():
                return int(path.read_text().strip())
    return None


def down(directory: Path) -> DownReport:
    """Stop every process and remove every cgroup, namespace and link the state lists."""
    directory = Path(directory).resolve()
    state = st.load(directory)
    if state is None:
        return DownReport((), (), (), (), ())
    killed: list[int] = []
    removed_cg: list[str] = []
    spaces: list[str] = []
    links: list[str] = []
    left: list[str] = []
    for dev in state.devices:
        killed += _stop_device(dev)
        left += cgroups.remove([Path(c) for c in dev.cgroups])
        removed_cg += [c for c in dev.cgroups if not Path(c).exists()]
        if dev.netns and netns.exists_netns(dev.netns):
            _undo(netns.delete_netns, dev.netns, spaces, left)
        if dev.veth_host and netns.exists_link(dev.veth_host):  # normally gone with the netns
            _undo(netns.delete_link, dev.veth_host, links, left)
    if state.bridge and netns.exists_link(state.bridge):
        _undo(netns.delete_link, state.bridge, links, left)
    left += cgroups.remove([Path(c) for c in state.cgroup_parents], timeout=0.5)
    if not left:
        st.clear(directory)
    return DownReport(tuple(killed), tuple(removed_cg), tuple(spaces), tuple(links), tuple(left))


def _undo(remove: Callable[[str], Optional[str]], name: str, done: list[str],
          left: list[str]) -> None:
    """Call a remover; file the name under done, or its error under left."""
    err = remove(name)
    (left if err else done).append(err or name)


def _stop_device(dev: st.DeviceState) -> list[int]:
    """Kill the device's sshd, its descendants and whatever else sits in its cgroups."""
    targets: list[int] = []
    if dev.pid is not None and sshd.pid_alive(dev.pid, dev.pid_start):
        targets += [dev.pid] + _descendants(dev.pid)
    for cg in dev.cgroups:
        targets += cgroups.procs(Path(cg))
    targets = sorted(set(targets) - {os.getpid()})
    _signal_all(targets, signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(sshd.pid_alive(p) for p in targets):
        time.sleep(0.05)
    _signal_all([p for p in targets if sshd.pid_alive(p)], signal.SIGKILL)
    for cg in dev.cgroups:  # anything forked in between the two passes
        _signal_all(cgroups.procs(Path(cg)), signal.SIGKILL)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(sshd.pid_alive(p) for p in targets):
        time.sleep(0.05)
    _reap_all(targets)
    return targets


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (PR_SET_CHILD_SUBREAPER, Linux only);
    False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_all(pids: list[int], timeout: float = 3.0) -> None:
    """Collect the exit status of every stopped process that is our child (sshd, and what we
    adopted as subreaper), waiting briefly for the last ones to turn into zombies."""
    todo = set(pids)
    deadline = time.monotonic() + timeout
    while todo and time.monotonic() < deadline:
        for pid in list(todo):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours (or already collected): nothing to reap
                todo.discard(pid)
                continue
            if done:
                todo.discard(pid)
        if todo:
            time.sleep(0.02)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (sessions sshd forked; found through /proc PPid links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
