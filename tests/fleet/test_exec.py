"""`ftte exec`: one shell command on the fleet against a real sshd: every outcome and exit code,
per-device output in both formats, --sudo, host-key rules, bad input."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.sshd import SshServer, free_port, make_key
from typer.testing import CliRunner

from ftte_cli import api
from ftte_cli.cli import app
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.adhoc import CommandOutput, remote_command

# every test here spawns processes, sshd or the testbed; each gets a private HOME (conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("home")]

runner = CliRunner()


def ftte_exec(inv: Path, *args: str) -> Any:
    return runner.invoke(app, ["exec", "-i", str(inv), *args])


@pytest.fixture
def inv(srv: SshServer, tmp_path: Path) -> Path:
    """Two good devices, one bad one of each kind, and a local one; all the same sshd."""
    make_key(tmp_path / "id_wrong")
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(f"""
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
            g1:
            g2:
        bad:
          hosts:
            closed: {{ansible_port: {free_port()}}}
            wrongkey: {{ansible_ssh_private_key_file: id_wrong}}
            newkey: {{ftte_known_hosts: new_known_hosts}}
        here:
          hosts:
            me: {{ansible_connection: local}}
    """))
    return path


def test_output_of_every_device_in_json(inv: Path) -> None:
    res = ftte_exec(inv, "-l", "good,me", "--format", "json", "--",
                    "echo out-$((20 + 1)); echo warn >&2")
    assert res.exit_code == 0, res.stdout
    doc = json.loads(res.stdout)
    assert doc["command"] == "echo out-$((20 + 1)); echo warn >&2" and doc["sudo"] is False
    assert [d["device"] for d in doc["devices"]] == ["g1", "g2", "me"]
    for row in doc["devices"]:
        assert (row["outcome"], row["rc"], row["stdout"], row["stderr"]) == (
            "ok", 0, "out-21\n", "warn\n")
        assert row["elapsed"] > 0
    assert doc["summary"] == {"ok": 3} and doc["exit_code"] == 0


def test_table_prints_each_device_block_then_the_recap(inv: Path) -> None:
    res = ftte_exec(inv, "-l", "g1,g2", "--", "echo", "hello from", "$(hostname)")
    assert res.exit_code == 0, res.stdout
    lines = res.stdout.splitlines()
    heads = [ln for ln in lines if ln.startswith(("g1 | ", "g2 | "))]
    assert sorted(h.split(" | ")[:3] for h in heads) == [["g1", "ok", "rc=0"],
                                                         ["g2", "ok", "rc=0"]]
    assert all(h.endswith("s") for h in heads)  # the elapsed time
    for h in heads:  # each block: its header, then that device's own output
        assert lines[lines.index(h) + 1].startswith("hello from ")
    assert "Recap" in res.stdout and lines[-1] == "2 devices: ok=2 (exit 0)"


@pytest.mark.parametrize(
    ("limit", "command", "code", "outcomes"),
    [
        ("good", "true", ExitCode.OK, {"g1": "ok", "g2": "ok"}),
        ("g1,closed", "true", ExitCode.UNREACHABLE, {"g1": "ok", "closed": "unreachable"}),
        ("g1,me", "sleep 6", ExitCode.TIMEOUT, {"g1": "timeout", "me": "timeout"}),
        ("g1,closed", "exit 3", ExitCode.DEVICE_FAILED, {"g1": "failed", "closed": "unreachable"}),
        ("wrongkey,g1", "exit 3", ExitCode.AUTH_FAILED, {"wrongkey": "auth_failed",
                                                         "g1": "failed"}),
        ("bad,g1", "true", ExitCode.HOSTKEY_MISMATCH, {"closed": "unreachable", "wrongkey":
                                                       "auth_failed", "newkey":
                                                       "hostkey_mismatch", "g1": "ok"}),
    ],
)
def test_every_outcome_and_exit_code(inv: Path, limit: str, command: str, code: ExitCode,
                                     outcomes: dict[str, str]) -> None:
    res = ftte_exec(inv, "-l", limit, "--command-timeout", "2", "--connect-timeout", "5",
                    "--format", "json", "--", command)
    assert res.exit_code == code, res.stdout
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == code
    assert {d["device"]: d["outcome"] for d in doc["devices"]} == outcomes
    for row in doc["devices"]:  # output only where the command ran to its end
        assert (row["rc"] is None) == (row["outcome"] not in ("ok", "failed"))


def test_a_failing_command_keeps_its_output_and_names_its_status(inv: Path) -> None:
    res = ftte_exec(inv, "-l", "g1", "--format", "json", "--", "echo partial; ls /nonexistent")
    assert res.exit_code == ExitCode.DEVICE_FAILED
    (row,) = json.loads(res.stdout)["devices"]
    assert row["rc"] == 2 and row["stdout"] == "partial\n"
    assert row["detail"].startswith("exit 2: ls: ") and "/nonexistent" in row["detail"]


def test_timeout_detail_says_how_long(inv: Path) -> None:
    res = ftte_exec(inv, "-l", "g1", "--command-timeout", "1", "--", "sleep 5")
    assert res.exit_code == ExitCode.TIMEOUT
    assert "g1 | timeout | `sleep 5` still running after 1s; stopped" in res.stdout


def test_unknown_host_key_refused_until_accepted(inv: Path) -> None:
    res = ftte_exec(inv, "-l", "newkey", "--format", "json", "--", "true")
    (row,) = json.loads(res.stdout)["devices"]
    assert row["outcome"] == "hostkey_mismatch" and "--accept-new-host-keys" in row["detail"]
    res = ftte_exec(inv, "-l", "newkey", "--accept-new-host-keys", "--", "true")
    assert res.exit_code == 0, res.stdout
    assert ftte_exec(inv, "-l", "newkey", "--", "true").exit_code == 0  # recorded


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo not installed")
def test_sudo_runs_the_command_as_root_without_a_prompt(inv: Path) -> None:
    assert remote_command("id -u; echo 'a b'", sudo=True) == (
        "sudo -n -- sh -c 'id -u; echo '\"'\"'a b'\"'\"''")
    res = ftte_exec(inv, "-l", "g1,me", "--sudo", "--format", "json", "--", "id -u; echo 'a b'")
    assert res.exit_code == 0, res.stdout
    doc = json.loads(res.stdout)
    assert doc["sudo"] is True
    assert [d["stdout"] for d in doc["devices"]] == ["0\na b\n", "0\na b\n"]


def test_bad_input_is_a_usage_error(inv: Path) -> None:
    res = ftte_exec(inv, "-l", "tablets", "--format", "json", "--", "true")
    assert res.exit_code == ExitCode.USAGE
    assert "no host or group named 'tablets'" in json.loads(res.stdout)["error"]
    res = ftte_exec(inv, "--", " ")
    assert res.exit_code == ExitCode.USAGE and "exec: COMMAND is empty" in res.stderr


def test_api_run_command_returns_outputs(inv: Path) -> None:
    results = api.run_command(inv, "echo $((6 * 7))", limit="g1,me")
    assert results.exit_code() == 0
    assert [r.value for r in results] == [CommandOutput(0, "42\n", "")] * 2
