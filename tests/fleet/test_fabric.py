"""`api.fabric_group`: Fabric connections built from the inventory, against the testbed and real
sshd: commands on every device, ftte's host-key rules, jump host, timeouts, local devices."""

from __future__ import annotations

import textwrap
from pathlib import Path

import fabric
import paramiko
import pytest
from helpers.sshd import SshServer, start_sshd
from helpers.testbed import Testbed
from invoke.exceptions import CommandTimedOut

from ftte_cli import api
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.fabric_group import DeviceConnection
from ftte_cli.fleet.ssh import HostKeyUnknown, Outcome, SshOptions, classify

pytestmark = pytest.mark.usefixtures("home")  # a private HOME: tests/conftest.py


def inventory(tmp_path: Path, srv: SshServer, hosts: str, known_hosts: Path) -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(textwrap.dedent(f"""
    all:
      vars:
        ansible_host: 127.0.0.1
        ansible_port: {srv.port}
        ansible_user: {srv.user}
        ansible_ssh_private_key_file: {srv.client_key}
        ftte_known_hosts: {known_hosts}
      hosts:
    """) + textwrap.indent(textwrap.dedent(hosts), "    "))
    return path


@pytest.mark.slow
def test_a_group_from_the_testbed_runs_a_command_on_every_device(
        testbed: Testbed) -> None:
    group = api.fabric_group(testbed.inventory)
    try:
        assert isinstance(group, fabric.ThreadingGroup)
        results = group.run("echo ftte-$((40 + 2)); id -un", hide=True)
        names = sorted(conn.device.name for conn in results)
        assert names == sorted(d.name for d in testbed.devices())
        for conn, result in results.items():
            assert isinstance(conn, DeviceConnection)
            assert result.ok and result.stdout.splitlines()[0] == "ftte-42"
            assert (conn.host, conn.port, conn.user) == (
                conn.device.host, conn.device.port, result.stdout.split()[1])
    finally:
        group.close()


@pytest.mark.slow
def test_unknown_host_key_is_refused_without_the_opt_in(srv: SshServer, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"  # does not exist: the device is unknown
    inv = inventory(tmp_path, srv, "d1:\n", kh)
    group = api.fabric_group(inv)
    with pytest.raises(fabric.exceptions.GroupException) as info:
        group.run("true", hide=True)
    (err,) = info.value.result.values()
    assert isinstance(err, HostKeyUnknown) and "--accept-new-host-keys" in str(err)
    assert classify(err, next(iter(group)).device)[0] == Outcome.hostkey_mismatch
    assert not kh.exists()  # nothing recorded
    group = api.fabric_group(inv, accept_new_host_keys=True)
    assert group.run("true", hide=True).succeeded
    assert kh.read_text() == srv.host_key_line()  # recorded, like the fleet commands do
    group.close()
    group = api.fabric_group(inv)  # trusted from now on
    assert group.run("true", hide=True).succeeded
    group.close()


@pytest.mark.slow
def test_a_changed_host_key_is_refused_even_with_the_opt_in(
        srv: SshServer, tmp_path: Path) -> None:
    impostor = start_sshd(tmp_path / "impostor")  # another host key
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text(impostor.host_key_line().replace(str(impostor.port), str(srv.port)))
        group = api.fabric_group(inventory(tmp_path, srv, "d1:\n", kh), accept_new_host_keys=True)
        with pytest.raises(fabric.exceptions.GroupException) as info:
            group.run("true", hide=True)
        (err,) = info.value.result.values()
        assert isinstance(err, paramiko.BadHostKeyException)
        assert str(srv.port) in kh.read_text() and len(kh.read_text().splitlines()) == 1
    finally:
        impostor.stop()


@pytest.mark.slow
def test_jump_host_and_command_timeout(srv: SshServer, tmp_path: Path) -> None:
    target = start_sshd(tmp_path / "target", authorized=[srv.client_key])
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text(srv.host_key_line() + target.host_key_line())
        inv = inventory(tmp_path, srv, f"""\
            behind:
              ansible_port: {target.port}
              ftte_proxy_jump: {srv.user}@127.0.0.1:{srv.port}
            """, kh)
        group = api.fabric_group(inv, ssh=SshOptions(command_timeout=1.0))
        (conn,) = group
        assert isinstance(conn.gateway, fabric.Connection) and conn.gateway.port == srv.port
        assert group.run("true", hide=True).succeeded
        assert "Accepted publickey" in (target.dir / "sshd.log").read_text()
        with pytest.raises(CommandTimedOut):
            conn.run("sleep 5", hide=True)
        group.close()
    finally:
        target.stop()


def test_local_devices_cannot_join(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    me: {ansible_connection: local}\n")
    with pytest.raises(ConfigError, match="host me: connection local cannot join a Fabric"):
        api.fabric_group(inv)
