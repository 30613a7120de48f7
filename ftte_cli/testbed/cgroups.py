"""Memory and CPU caps through cgroups (v1 `memory`/`cpu` hierarchies, or the v2 unified tree).

A device's cgroup is `ftte/<testbed id>/<device>` under each controller's mount point. Caps are
written before any process joins; the sshd wrapper then writes its own PID into every
`cgroup.procs` listed, so sshd and everything started over SSH inherit the caps.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000  # the kernel default period; quotas are percentages of it
TASKS_PER_DEVICE = 4  # CPU weight of one emulated device, in ordinary host tasks


@dataclass(frozen=True)
class CgroupMounts:
    """Where the controllers we use are mounted (v1: one per controller; v2: one tree)."""

    version: int  # 1 or 2
    memory: Optional[Path]
    cpu: Optional[Path]


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every mount of this process."""
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 3:
            rows.append((fields[4], rfields[0], rfields[2]))
    return rows


def find_mounts() -> CgroupMounts:
    """The v1 memory and cpu hierarchies when mounted, else the v2 tree with those controllers."""
    memory = cpu = None
    v2: Optional[Path] = None
    for point, fstype, opts in _mountinfo():
        options = set(opts.split(","))
        if fstype == "cgroup":
            if "memory" in options:
                memory = Path(point)
            if "cpu" in options:
                cpu = Path(point)
        elif fstype == "cgroup2":
            controllers = Path(point, "cgroup.controllers")
            have = set(controllers.read_text().split()) if controllers.exists() else set()
            if {"memory", "cpu"} <= have:
                v2 = Path(point)
    if memory is not None or cpu is not None:
        return CgroupMounts(1, memory, cpu)
    return CgroupMounts(2, v2, v2)


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def create(mounts: CgroupMounts, rel: str, mem_bytes: Optional[int],
           cpu_percent: Optional[int]) -> list[Path]:
    """Make the device's cgroup(s) with the caps; returns every directory made (for removal)."""
    made: list[Path] = []
    if mounts.version == 2 and mounts.memory is not None:
        _enable_v2_controllers(mounts.memory, rel)
        made += _mkdirs(mounts.memory, rel)
        leaf = mounts.memory / rel
        if mem_bytes is not None:
            _write(leaf / "memory.max", str(mem_bytes))
            if (leaf / "memory.swap.max").exists():  # swap never counts, so none is allowed
                _write(leaf / "memory.swap.max", "0")
        if cpu_percent is not None:
            _write(leaf / "cpu.max", f"{cpu_percent * CFS_PERIOD_US // 100} {CFS_PERIOD_US}")
        return made
    if mounts.memory is not None:
        made += _mkdirs(mounts.memory, rel)
        if mem_bytes is not None:
            _write(mounts.memory / rel / "memory.limit_in_bytes", str(mem_bytes))
    if mounts.cpu is not None:
        made += _mkdirs(mounts.cpu, rel)
        if cpu_percent is not None:
            leaf = mounts.cpu / rel
            _write(leaf / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(leaf / "cpu.cfs_quota_us", str(cpu_percent * CFS_PERIOD_US // 100))
    return made


def weigh(mounts: CgroupMounts, rel: str, devices: int) -> list[Path]:
    """Give `rel` the CPU weight of TASKS_PER_DEVICE ordinary tasks per device it holds.

    Group scheduling treats a cgroup like one task of its weight, so without this a whole fleet
    of emulated devices would share one task's slice of a busy host. Each device is meant to
    stand for a machine of its own: its CPU quota, not host load, should bound it. The weight is
    only raised, never lowered (another testbed may share the `ftte` parent). Returns dirs made.
    """
    if mounts.cpu is None:
        return []
    if mounts.version == 2:
        _enable_v2_controllers(mounts.cpu, rel)
    made = _mkdirs(mounts.cpu, rel)
    name, unit, top = ("cpu.weight", 100, 10_000) if mounts.version == 2 else (
        "cpu.shares", 1024, 262_144)
    path = mounts.cpu / rel / name
    if path.exists():
        current = int(path.read_text().strip() or 0)
        _write(path, str(max(current, min(top, TASKS_PER_DEVICE * unit * devices))))
    return made


def _mkdirs(root: Path, rel: str) -> list[Path]:
    """Create root/rel level by level; returns the levels that did not exist before."""
    made = []
    path = root
    for part in Path(rel).parts:
        path = path / part
        if not path.exists():
            path.mkdir()
            made.append(path)
    return made


def _enable_v2_controllers(root: Path, rel: str) -> None:
    """v2: a child can only cap what its parent delegates: enable memory and cpu down the path."""
    path = root
    for part in Path(rel).parts:
        control = path / "cgroup.subtree_control"
        if control.exists() and not {"memory", "cpu"} <= set(control.read_text().split()):
            _write(control, "+memory +cpu")
        path = path / part
        path.mkdir(exist_ok=True)


def procs(cgroup: Path) -> list[int]:
    """PIDs now in a cgroup (empty when it is gone)."""
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def remove(dirs: list[Path], timeout: float = 5.0) -> list[str]:
    """Remove cgroup directories deepest first; returns the ones that could not be removed."""
    left = []
    for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        deadline = time.monotonic() + timeout
        while path.exists():
            if any(child.is_dir() for child in path.iterdir()):
                break  # a shared parent still used by another testbed: leave it to that one
            try:
                os.rmdir(path)
            except OSError as err:  # still busy: a process is exiting, or a child dir exists
                if time.monotonic() > deadline:
                    left.append(f"{path} ({err.strerror})")
                    break
                time.sleep(0.05)
    return left
