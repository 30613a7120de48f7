"""CLI level: `ftte inventory` JSON and exit codes; the shared fleet options, recap and exit codes
driven end to end against a real sshd."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from helpers.sshd import SshServer, free_port, make_key, running_sshd
from rich.console import Console
from typer.testing import CliRunner

from ftte_cli.cli import app as ftte_app
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
from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh import DeviceResult, FleetResults, Outcome, Session, run_on_fleet
from ftte_cli.output import Format, handle_errors
from ftte_cli.ui.recap import exit_with, render_recap

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory" / "lab.yaml"
runner = CliRunner()


def ftte(*args: str) -> Any:
    return runner.invoke(ftte_app, list(args))


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_inventory_list_json_is_shaped_like_ansible_inventory() -> None:
    res = ftte("inventory", "list", "-i", str(LAB), "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["all"]["children"] == ["pis", "jetsons", "phones", "laptop"]
    assert doc["pis"] == {"children": ["pi_zeros", "pi4s"]}
    assert doc["pi4s"] == {"hosts": ["pi4-a", "pi4-b"]}
    hv = doc["_meta"]["hostvars"]
    assert len(hv) == 8
    assert hv["pixel-6"]["ansible_port"] == 8022  # the group var, merged like Ansible
    assert hv["pixel-6"]["ftte_resolved"]["user"] == "u0_a245"
    assert hv["pi-zero-1"]["ftte_resolved"]["mem_cap_mb"] == 300
    assert hv["pi4-a"]["ftte_resolved"]["known_hosts"] == str(LAB.parent / "lab_known_hosts")


def test_inventory_list_limit_and_table() -> None:
    res = ftte("inventory", "list", "-i", str(LAB), "--limit", "phones,jetson-1", "--format",
               "json")
    doc = json.loads(res.stdout)
    assert sorted(doc["_meta"]["hostvars"]) == ["galaxy-a52", "jetson-1", "pixel-6"]
    assert set(doc) == {"_meta", "all", "jetsons", "phones"}
    assert doc["jetsons"] == {"hosts": ["jetson-1"]}
    res = ftte("inventory", "list", "-i", str(LAB), "-l", "pis")
    assert res.exit_code == 0
    assert "pi4-b" in res.stdout and "pixel-6" not in res.stdout and "3 devices" in res.stdout


def test_unknown_limit_is_a_usage_error_in_both_formats() -> None:
    res = ftte("inventory", "list", "-i", str(LAB), "--limit", "tablets", "--format", "json")
    assert res.exit_code == ExitCode.USAGE
    err = json.loads(res.stdout)
    assert err["exit_code"] == 2 and "no host or group named 'tablets'" in err["error"]
    res = ftte("inventory", "graph", "-i", str(LAB), "--limit", "tablets")
    assert res.exit_code == ExitCode.USAGE
    assert "lab.yaml: --limit: no host or group named 'tablets'" in res.stderr


def test_bad_inventory_gives_one_line_naming_file_host_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("all:\n  hosts:\n    pi9:\n      ansible_connection: serial\n")
    res = ftte("inventory", "list", "-i", str(bad))
    assert res.exit_code == ExitCode.USAGE
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{bad}: host pi9: ansible_connection: unknown connection 'serial'" in lines[0]


def test_inventory_graph_text_and_json() -> None:
    res = ftte("inventory", "graph", "-i", str(LAB), "--limit", "pis,phones")
    assert res.exit_code == 0
    assert res.stdout.splitlines() == [
        "@all:",
        "  |--@phones:",
        "  |  |--galaxy-a52",
        "  |  |--pixel-6",
        "  |--@pis:",
        "  |  |--@pi4s:",
        "  |  |  |--pi4-a",
        "  |  |  |--pi4-b",
        "  |  |--@pi_zeros:",
        "  |  |  |--pi-zero-1",
    ]
    tree = json.loads(ftte("inventory", "graph", "-i", str(LAB), "--format", "json").stdout)
    assert tree["name"] == "all"
    jetsons = next(c for c in tree["children"] if c["name"] == "jetsons")
    assert jetsons == {"name": "jetsons", "children": [], "hosts": ["jetson-1", "jetson-2"]}


@pytest.mark.slow
def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ftte"), "inventory", "list", "-i", str(LAB),
         "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "pixel-6" in json.loads(out.stdout)["_meta"]["hostvars"]


# --- a fleet command built only from the shared pieces, against a real sshd ---------------------

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


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_recap_renders_the_same_rows_as_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    devs = [Device(name="pi4-a", host="10.0.0.2"), Device(name="me", host="x", connection="local")]
    results = FleetResults({
        "pi4-a": DeviceResult(devs[0], Outcome.auth_failed, "root@10.0.0.2:22 refused key", 0.25),
        "me": DeviceResult(devs[1], Outcome.changed, "", 1.5),
    })
    buf = io.StringIO()
    render_recap(results, Format.table, out=Console(file=buf, width=100, color_system=None))
    assert [line.rstrip() for line in buf.getvalue().splitlines()] == [
        "Recap",
        "┏━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━┓",
        "┃ device ┃ host        ┃ outcome     ┃ detail                       ┃ elapsed ┃",
        "┡━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━┩",
        "│ pi4-a  │ 10.0.0.2:22 │ auth_failed │ root@10.0.0.2:22 refused key │    0.2s │",
        "│ me     │ local       │ changed     │                              │    1.5s │",
        "└────────┴─────────────┴─────────────┴──────────────────────────────┴─────────┘",
        "2 devices: changed=1 auth_failed=1 (exit 5)",
    ]
    render_recap(results, Format.json)
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "devices": [
            {"device": "pi4-a", "host": "10.0.0.2:22", "outcome": "auth_failed",
             "detail": "root@10.0.0.2:22 refused key", "elapsed": 0.25},
            {"device": "me", "host": "local", "outcome": "changed", "detail": "", "elapsed": 1.5},
        ],
        "summary": {"changed": 1, "auth_failed": 1},
        "exit_code": 5,
    }
