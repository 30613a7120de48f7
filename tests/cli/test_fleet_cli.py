"""CLI level: `ftte inventory` JSON and exit codes and the recap's rows as table and JSON, in
process (the console script: test_console_script.py; the shared fleet options against a real
sshd: test_fleet_options_sshd.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ftte_cli.cli import app as ftte_app
from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh import DeviceResult, FleetResults, Outcome
from ftte_cli.output import Format
from ftte_cli.ui.recap import render_recap

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory" / "lab.yaml"
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("home")  # a private HOME: tests/conftest.py


def ftte(*args: str) -> Any:
    return runner.invoke(ftte_app, list(args))


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
