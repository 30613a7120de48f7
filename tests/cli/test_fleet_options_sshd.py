"""A fleet command built only from the shared pieces (options, ssh_options, recap, exit codes),
driven end to end against a real sshd."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import typer
from helpers.sshd import SshServer, free_port, make_key
from typer.testing import CliRunner

from ftte_cli.commands.options import (
    AcceptNewHostKeysOpt,
    CommandTimeoutOpt,
    ConnectTimeoutOpt,
    ForksOpt,
    FormatOpt,
    InventoryOpt,
    LimitOpt,
    select_devices,
    ssh_options,
)
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh import Session, run_on_fleet
from ftte_cli.output import Format, handle_errors
from ftte_cli.ui.recap import exit_with, render_recap

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("home")]

runner = CliRunner()


probe = typer.Typer()


@probe.command()
def run(
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    forks: ForksOpt = 10,
    accept_new_host_keys: AcceptNewHostKeysOpt = False,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    command_timeout: CommandTimeoutOpt = 60.0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Run each device's `cmd` var: the shape every fleet command has."""
    with handle_errors(fmt):
        _, devices = select_devices(inventory, limit)
        opts = ssh_options(forks=forks, accept_new_host_keys=accept_new_host_keys,
                           connect_timeout=connect_timeout, command_timeout=command_timeout)

        def step(s: Session) -> str:
            return s.run(str(s.device.vars.get("cmd", "true"))).stdout.strip()

        results = run_on_fleet(devices, step, opts)
    render_recap(results, fmt)
    exit_with(results)


@pytest.fixture
def fleet_inv(srv: SshServer, tmp_path: Path) -> Path:
    make_key(tmp_path / "id_wrong")
    (tmp_path / "empty_known_hosts").write_text("")
    inv = tmp_path / "fleet.yaml"
    inv.write_text(textwrap.dedent(f"""
    all:
      vars:
        ansible_host: 127.0.0.1
        ansible_port: {srv.port}
        ansible_user: {srv.user}
        ansible_ssh_private_key_file: {srv.client_key}
        ftte_known_hosts: {srv.known_hosts}
      children:
        good:
          hosts:
            g1: {{cmd: "echo one"}}
            g2: {{cmd: "echo two"}}
        bad:
          hosts:
            closed: {{ansible_port: {free_port()}}}
            wrongkey: {{ansible_ssh_private_key_file: id_wrong}}
            newkey: {{ftte_known_hosts: new_known_hosts}}
            hung: {{cmd: "sleep 6"}}
            failing: {{cmd: "exit 3"}}
    """))
    return inv


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        ("good", ExitCode.OK),
        ("good,closed", ExitCode.UNREACHABLE),
        ("good,hung", ExitCode.TIMEOUT),
        ("good,failing,hung", ExitCode.DEVICE_FAILED),
        ("wrongkey,failing", ExitCode.AUTH_FAILED),
        ("bad", ExitCode.HOSTKEY_MISMATCH),
    ],
)
def test_fleet_exit_codes(fleet_inv: Path, limit: str, code: ExitCode) -> None:
    res = runner.invoke(probe, ["-i", str(fleet_inv), "--limit", limit, "--command-timeout", "2.5",
                                "--format", "json"])
    assert res.exit_code == code, res.stdout
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == code
    outcomes = {d["device"]: d["outcome"] for d in doc["devices"]}
    assert all(outcomes[g] == "ok" for g in ("g1", "g2") if g in outcomes)


def test_fleet_recap_and_accept_new_host_keys(fleet_inv: Path) -> None:
    res = runner.invoke(probe, ["-i", str(fleet_inv), "-l", "g1,newkey"])
    assert res.exit_code == ExitCode.HOSTKEY_MISMATCH
    assert res.stdout.splitlines()[-1] == "2 devices: ok=1 hostkey_mismatch=1 (exit 6)"
    res = runner.invoke(probe, ["-i", str(fleet_inv), "-l", "newkey", "--format", "json"])
    (row,) = json.loads(res.stdout)["devices"]
    assert row["outcome"] == "hostkey_mismatch" and "unknown" in row["detail"]
    assert "--accept-new-host-keys" in row["detail"]
    res = runner.invoke(probe, ["-i", str(fleet_inv), "-l", "g1,newkey", "--accept-new-host-keys",
                                "--format", "json"])
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout)["summary"] == {"ok": 2}
    assert (fleet_inv.parent / "new_known_hosts").read_text().startswith("[127.0.0.1]:")
    res = runner.invoke(probe, ["-i", str(fleet_inv), "-l", "newkey"])
    assert res.exit_code == 0  # recorded: trusted from now on
