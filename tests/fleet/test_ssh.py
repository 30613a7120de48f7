"""The SSH layer against real OpenSSH servers on loopback ports: outcomes, host keys, deadlines."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers.sshd import SshServer, free_port, make_key, start_sshd

from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh import (
    CommandFailed,
    CommandTimeout,
    Outcome,
    Session,
    SshOptions,
    connect,
    run_on_fleet,
)

pytestmark = pytest.mark.slow


def device(srv: SshServer, name: str = "good", **kw: object) -> Device:
    base: dict[str, object] = dict(
        name=name, host="127.0.0.1", port=srv.port, user=srv.user,
        key_file=srv.client_key, known_hosts=srv.known_hosts,
    )
    base.update(kw)
    return Device(**base)  # type: ignore[arg-type]


def run_cmd(session: Session) -> str:
    """The fleet step used below: each device's `cmd` var."""
    return session.run(str(session.device.vars.get("cmd", "echo ok"))).stdout.strip()


def test_session_runs_commands_and_copies_files(srv: SshServer, tmp_path: Path) -> None:
    with connect(device(srv), SshOptions(command_timeout=10)) as s:
        r = s.run("echo out; echo err >&2; exit 0")
        assert (r.rc, r.stdout, r.stderr) == (0, "out\n", "err\n")
        assert s.run("cat", stdin="from stdin").stdout == "from stdin"
        assert s.run("exit 3", check=False).rc == 3
        with pytest.raises(CommandFailed, match="exited 4: boom"):
            s.run("echo boom >&2; exit 4")
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(100_000))
        s.put(src, str(tmp_path / "remote.bin"))
        s.get(str(tmp_path / "remote.bin"), tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        assert s.transport is not None and s.transport.is_active()


def test_large_stdin_and_output_do_not_deadlock(srv: SshServer) -> None:
    # Bigger than paramiko's 2 MiB channel window both ways: `cat` echoes while we still send.
    blob = base64.b64encode(os.urandom(5 * 1024 * 1024)).decode()
    with connect(device(srv), SshOptions(command_timeout=30)) as s:
        assert s.run("cat", stdin=blob).stdout == blob
        assert s.run("true", stdin=blob).rc == 0  # exits without reading: no hang


def test_silent_port_is_a_timeout_bounded_by_the_connect_timeout(srv: SshServer) -> None:
    with socket.socket() as silent:  # the kernel accepts; nobody ever sends a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dev = device(srv, "silent", port=silent.getsockname()[1])
        start = time.monotonic()
        res = run_on_fleet([dev], run_cmd, SshOptions(connect_timeout=0.5))
        assert time.monotonic() - start < 3.0
    assert res["silent"].outcome == Outcome.timeout
    assert "no SSH banner" in res["silent"].detail
    assert res.exit_code() == ExitCode.TIMEOUT


def test_other_key_type_known_counts_as_changed(srv: SshServer, tmp_path: Path) -> None:
    rsa = make_key(tmp_path / "rsa_host", kind="rsa")
    kind, b64 = Path(f"{rsa}.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{srv.port} {kind} {b64}\n")
    res = run_on_fleet([device(srv, known_hosts=kh)], run_cmd,
                       SshOptions(accept_new_host_keys=True))
    assert res["good"].outcome == Outcome.hostkey_mismatch
    assert "changed" in res["good"].detail and "ssh-ed25519" in res["good"].detail
    assert kh.read_text().count("\n") == 1


def test_step_errors_after_connecting_are_failures_not_unreachable(srv: SshServer) -> None:
    def fetch_missing(s: Session) -> None:
        s.get("/nonexistent/file", "/tmp/never")

    devices = [device(srv, "sftp"), device(srv, "dns", host="no-such-host.invalid")]
    res = run_on_fleet(devices, fetch_missing, SshOptions())
    assert res["sftp"].outcome == Outcome.failed and "No such file" in res["sftp"].detail
    assert res["dns"].outcome == Outcome.unreachable
    assert "no-such-host.invalid: name not resolved" in res["dns"].detail


def test_background_child_holding_stdout_does_not_block(srv: SshServer) -> None:
    with connect(device(srv), SshOptions(command_timeout=10)) as s:
        start = time.monotonic()
        r = s.run("sleep 4 & echo started")
        assert (r.rc, r.stdout) == (0, "started\n")
        assert time.monotonic() - start < 3.0


def test_hung_command_times_out_without_blocking(srv: SshServer) -> None:
    with connect(device(srv), SshOptions()) as s:
        start = time.monotonic()
        with pytest.raises(CommandTimeout, match="still running after 0.5s"):
            s.run("sleep 5", timeout=0.5)
        assert time.monotonic() - start < 2.0
        assert s.run("echo still usable").stdout == "still usable\n"


def test_fleet_run_gives_each_device_its_own_outcome(srv: SshServer, tmp_path: Path) -> None:
    wrong_key = make_key(tmp_path / "id_wrong")
    changed = tmp_path / "known_hosts_changed"  # a different key recorded for the same port
    other = make_key(tmp_path / "other_host_key")
    kind, b64 = Path(f"{other}.pub").read_text().split()[:2]
    changed.write_text(f"[127.0.0.1]:{srv.port} {kind} {b64}\n")
    timeout = 4.0
    devices = [
        device(srv, "good1"),
        device(srv, "good2", vars={"cmd": "uname -s"}),
        device(srv, "closed", port=free_port()),
        device(srv, "wrongkey", key_file=wrong_key),
        device(srv, "changedkey", known_hosts=changed),
        device(srv, "hung", vars={"cmd": "sleep 9"}),
        device(srv, "failing", vars={"cmd": "echo nope >&2; exit 2"}),
        device(srv, "local", connection="local", vars={"cmd": "echo here"}),
    ]
    start = time.monotonic()
    res = run_on_fleet(devices, run_cmd, SshOptions(command_timeout=timeout, connect_timeout=5))
    wall = time.monotonic() - start

    outcomes = {name: r.outcome for name, r in res.results.items()}
    assert outcomes == {
        "good1": Outcome.ok, "good2": Outcome.ok, "local": Outcome.ok,
        "closed": Outcome.unreachable, "wrongkey": Outcome.auth_failed,
        "changedkey": Outcome.hostkey_mismatch, "hung": Outcome.timeout,
        "failing": Outcome.failed,
    }
    assert list(res.results) == [d.name for d in devices]  # inventory order kept
    assert res["good1"].value == "ok" and res["good2"].value == "Linux"
    assert "changed" in res["changedkey"].detail and "man-in-the-middle" in res["changedkey"].detail
    assert "connection refused" in res["closed"].detail
    assert "refused key" in res["wrongkey"].detail
    assert "exited 2: nope" in res["failing"].detail
    assert set(res.succeeded) == {"good1", "good2", "local"}
    assert res.exit_code() == ExitCode.HOSTKEY_MISMATCH
    # The hung device costs its own timeout once, in parallel; the others finish well before it.
    assert wall < timeout + 3.0
    assert res["hung"].elapsed >= timeout
    assert max(res[n].elapsed for n in ("good1", "good2", "failing", "wrongkey")) < timeout


def test_unknown_host_key_rejected_then_accepted_and_recorded(
    srv: SshServer, tmp_path: Path
) -> None:
    kh = tmp_path / "sub" / "known_hosts"  # does not exist yet
    dev = device(srv, "fresh", known_hosts=kh)
    res = run_on_fleet([dev], run_cmd, SshOptions())
    assert res["fresh"].outcome == Outcome.hostkey_mismatch
    assert "unknown" in res["fresh"].detail and "--accept-new-host-keys" in res["fresh"].detail
    assert res.exit_code() == ExitCode.HOSTKEY_MISMATCH
    assert not kh.exists()

    res = run_on_fleet([dev], run_cmd, SshOptions(accept_new_host_keys=True))
    assert res["fresh"].outcome == Outcome.ok
    assert kh.read_text() == srv.host_key_line()
    assert kh.stat().st_mode & 0o777 == 0o600

    res = run_on_fleet([dev], run_cmd, SshOptions())  # now known: no opt-in needed
    assert res["fresh"].outcome == Outcome.ok
    assert kh.read_text().count("\n") == 1  # recorded once


def test_accept_new_never_accepts_a_changed_key(srv: SshServer, tmp_path: Path) -> None:
    other = make_key(tmp_path / "other")
    kind, b64 = Path(f"{other}.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{srv.port} {kind} {b64}\n")
    opts = SshOptions(accept_new_host_keys=True)
    res = run_on_fleet([device(srv, known_hosts=kh)], run_cmd, opts)
    assert res["good"].outcome == Outcome.hostkey_mismatch
    assert "changed" in res["good"].detail
    assert kh.read_text() == f"[127.0.0.1]:{srv.port} {kind} {b64}\n"  # not overwritten


def test_cli_known_hosts_option_overrides_the_device(srv: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = run_on_fleet([device(srv)], run_cmd, SshOptions(known_hosts=empty))
    assert res["good"].outcome == Outcome.hostkey_mismatch


def test_missing_and_encrypted_key_files_are_auth_failures(
    srv: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(locked)],
                   check=True)
    srv_auth = srv.dir / "authorized_keys"
    srv_auth.write_text(srv_auth.read_text() + Path(f"{locked}.pub").read_text())
    devices = [
        device(srv, "missing", key_file=tmp_path / "nope"),
        device(srv, "locked", key_file=locked),
        device(srv, "unlocked", key_file=locked, vars={"ftte_password_env": "H4_TEST_PASS"}),
        device(srv, "unset", key_file=locked, vars={"ftte_password_env": "H4_UNSET_PASS"}),
    ]
    monkeypatch.delenv("H4_UNSET_PASS", raising=False)
    monkeypatch.setenv("H4_TEST_PASS", "s3cret")
    res = run_on_fleet(devices, run_cmd, SshOptions())
    assert res["missing"].outcome == Outcome.auth_failed and "not found" in res["missing"].detail
    assert res["locked"].outcome == Outcome.auth_failed
    assert "ftte_password_env" in res["locked"].detail
    assert "s3cret" not in res["locked"].detail
    assert res["unlocked"].outcome == Outcome.ok
    assert res["unset"].outcome == Outcome.auth_failed
    assert "environment variable H4_UNSET_PASS is not set" in res["unset"].detail


def test_proxy_jump_one_hop(srv: SshServer, tmp_path: Path) -> None:
    target = start_sshd(tmp_path / "target", authorized=[srv.client_key])
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text(srv.host_key_line() + target.host_key_line())
        dev = device(srv, "behind", port=target.port, known_hosts=kh,
                     proxy_jump=f"{srv.user}@127.0.0.1:{srv.port}")
        res = run_on_fleet([dev], run_cmd, SshOptions())
        assert res["behind"].outcome == Outcome.ok, res["behind"].detail
        log = (target.dir / "sshd.log").read_text()
        assert "Accepted publickey" in log
    finally:
        target.stop()


def test_local_devices_run_commands_copy_files_and_time_out(tmp_path: Path) -> None:
    dev = Device(name="me", host="localhost", connection="local")
    with connect(dev, SshOptions()) as s:
        assert s.transport is None
        assert s.run("cat; echo -n !", stdin=b"x").stdout == "x!"
        with pytest.raises(CommandFailed):
            s.run("exit 1")
        start = time.monotonic()
        with pytest.raises(CommandTimeout):
            # the grandchild holds the pipe; the whole process group must die
            s.run("sleep 7 & sleep 7; wait", timeout=0.5)
        assert time.monotonic() - start < 2.0
        src = tmp_path / "a"
        src.write_text("data")
        s.put(src, str(tmp_path / "b"))
        s.get(str(tmp_path / "b"), tmp_path / "c")
        assert (tmp_path / "c").read_text() == "data"


def test_local_background_child_and_unread_stdin_do_not_block() -> None:
    with connect(Device(name="me", host="localhost", connection="local"), SshOptions()) as s:
        start = time.monotonic()
        assert s.run("sleep 4 & echo started").stdout == "started\n"
        assert s.run("true", stdin=b"x" * 5_000_000).rc == 0
        assert s.run("wc -c", stdin=b"x" * 5_000_000).stdout.strip() == "5000000"
        assert time.monotonic() - start < 3.0
