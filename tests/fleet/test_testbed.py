"""The emulated testbed: real sshd per device, caps that bind, and a `down` that leaves nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.testbed import Testbed, start_testbed
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh import SshOptions, connect
from ftte_cli.testbed import lifecycle, netns
from ftte_cli.testbed import state as st

pytestmark = pytest.mark.slow

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="namespaces and cgroups need root (CI is root)")
runner = CliRunner()


def _ssh(bed: Testbed, name: str, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
    device = next(d for d in bed.devices() if d.name == name)
    with connect(device, SshOptions()) as session:
        res = session.run(cmd, timeout=timeout, check=False)
    return res.rc, res.stdout + res.stderr


def _live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_inventory_and_known_hosts_reach_every_device(testbed: Testbed) -> None:
    devices = testbed.devices()
    assert len(devices) == 4
    assert len({(d.host, d.port) for d in devices}) == 4
    for dev in devices:
        assert dev.known_hosts == testbed.dir / "known_hosts"
        assert Path(dev.workdir).is_absolute() and Path(dev.workdir).is_dir()
        rc, out = _ssh(testbed, dev.name, "echo hello-$(id -u)")
        assert rc == 0 and out.strip() == f"hello-{os.getuid()}"


@needs_root
def test_each_device_has_its_own_namespace_and_address(testbed: Testbed) -> None:
    for dev in testbed.state.devices:
        rc, out = _ssh(testbed, dev.name, "readlink /proc/self/ns/net; ip -4 -o addr show")
        assert rc == 0
        assert out.splitlines()[0] != os.readlink("/proc/self/ns/net"), dev.name
        addresses = {w.split("/")[0] for w in out.split() if w.startswith("10.213.")}
        assert addresses == {dev.address}, dev.name


@needs_root
def test_memory_cap_binds_processes_started_over_ssh(testbed: Testbed) -> None:
    small = testbed.by_class("pi-zero-2")
    assert small.mem_cap_bytes is not None
    over = small.mem_cap_bytes + 64 * 2**20
    # Touch every page so the allocation is real; the cgroup OOM killer must stop it.
    script = f"b = bytearray({over}); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    rc, out = _ssh(testbed, small.name, f"python3 -c \"{script}\"")
    assert rc != 0 and "survived" not in out
    rc, out = _ssh(testbed, small.name, "python3 -c \"b = bytearray(64 << 20); print('ok')\"")
    assert rc == 0 and "ok" in out


@needs_root
def test_cpu_quota_is_set_on_the_sessions_cgroup(testbed: Testbed) -> None:
    small = testbed.by_class("pi-zero-2")
    rc, out = _ssh(testbed, small.name,
                   "cat /sys/fs/cgroup/cpu$(grep ':cpu:' /proc/self/cgroup | cut -d: -f3)"
                   "/cpu.cfs_quota_us")
    assert rc == 0 and int(out.strip()) == 25_000


def test_status_json_lists_every_device_alive(testbed: Testbed) -> None:
    res = runner.invoke(app, ["testbed", "status", "--dir", str(testbed.dir), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [d["name"] for d in data["devices"]] == [d.name for d in testbed.state.devices]
    assert all(d["alive"] for d in data["devices"])
    assert data["isolated"] == ROOT


def test_second_up_in_same_dir_is_refused(testbed: Testbed) -> None:
    res = runner.invoke(app, ["testbed", "up", "--devices", "1", "--dir", str(testbed.dir)])
    assert res.exit_code == ExitCode.USAGE
    assert "already up" in res.output


@needs_root
def test_down_leaves_no_process_cgroup_or_namespace(tmp_path: Path) -> None:
    res = runner.invoke(app, ["testbed", "up", "--devices", "2", "--mix", "pi-zero-2,phone",
                              "--dir", str(tmp_path), "--format", "json"])
    assert res.exit_code == 0, res.output
    state = st.load(tmp_path)
    assert state is not None
    bed = Testbed(tmp_path, tmp_path / lifecycle.INVENTORY_FILE, state)
    # A detached process started over SSH must go too (it sits in the device's cgroup).
    rc, _ = _ssh(bed, state.devices[0].name, "nohup sleep 600 >/dev/null 2>&1 & echo started")
    assert rc == 0
    stray = [p for cg in state.devices[0].cgroups
             for p in map(int, Path(cg, "cgroup.procs").read_text().split())]
    assert len(stray) >= 2  # sshd and sleep

    res = runner.invoke(app, ["testbed", "down", "--dir", str(tmp_path), "--format", "json"])
    assert res.exit_code == 0, res.output
    for dev in state.devices:
        assert dev.pid is not None and not _live(dev.pid)
        assert all(not Path(cg).exists() for cg in dev.cgroups)
        assert dev.netns and not netns.exists_netns(dev.netns)
        assert dev.veth_host and not netns.exists_link(dev.veth_host)
    assert not any(_live(p) for p in stray)
    assert state.bridge and not netns.exists_link(state.bridge)
    assert not any(Path(c).exists() for c in state.cgroup_parents if state.id in c)
    assert st.load(tmp_path) is None
    again = runner.invoke(app, ["testbed", "down", "--dir", str(tmp_path), "--format", "json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["leftovers"] == []


def test_loopback_fallback_without_isolation(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "can_isolate", lambda: (False, "forced for the test"))
    bed = start_testbed(tmp_path, devices=1, mix="pi4")
    try:
        assert not bed.isolated and bed.state.notes == ("forced for the test",)
        dev = bed.state.devices[0]
        assert dev.address == "127.0.0.1" and dev.cgroups == () and dev.mem_cap_bytes is None
        rc, out = _ssh(bed, dev.name, "echo up")
        assert rc == 0 and out.strip() == "up"
    finally:
        report = lifecycle.down(tmp_path)
    assert report.leftovers == () and not _live(dev.pid or 0)
