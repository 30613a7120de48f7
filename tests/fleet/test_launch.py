"""Agents over real SSH: reverse tunnels carry HTTP, launch/restart/stop leave no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zipapp
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers.sshd import SshServer, running_sshd

from ftte_cli.config.inventory import Device
from ftte_cli.fleet.launch import start_agents
from ftte_cli.fleet.ssh import Outcome, SshOptions, connect
from ftte_cli.fleet.tunnel import ReverseTunnel

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

OPTS = SshOptions(connect_timeout=10, command_timeout=60)

# A stand-in runtime with the real agent's command line: it calls the server once through the
# URL it was given, records the answer, and leaves a child process behind to prove that
# stopping kills the whole process group.
FAKE_AGENT = r'''
import argparse, os, subprocess, sys, time, urllib.request
p = argparse.ArgumentParser()
p.add_argument("--bundle")
p.add_argument("--server")
a = p.parse_args()
body = urllib.request.urlopen(a.server + "/v1/hello", timeout=10).read().decode()
with open(os.path.join(a.bundle, "answer.txt"), "w") as f:
    f.write(body)
print("agent got", body, flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
time.sleep(300)
'''


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _ssh_device(srv: SshServer, name: str, workdir: Path) -> Device:
    return Device(name=name, host="127.0.0.1", port=srv.port, user=srv.user,
                  key_file=srv.client_key, known_hosts=srv.known_hosts,
                  python=sys.executable, workdir=str(workdir))


def _bundle(root: Path) -> Path:
    """A bundle folder holding only the stand-in runtime (what launch needs)."""
    src = root / "src"
    src.mkdir(parents=True)
    (src / "__main__.py").write_text(FAKE_AGENT)
    bundle = root / "bundle"
    bundle.mkdir()
    zipapp.create_archive(src, bundle / "ftte-agent.pyz")
    return bundle


def _pgrep(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [pid for pid in out.stdout.split() if pid]


def _wait_for(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} never written")


def test_reverse_tunnel_carries_http_from_device(sshd: SshServer, http_server: int,
                                                 tmp_path: Path) -> None:
    device = _ssh_device(sshd, "d0", tmp_path)
    fetch = ("import sys, urllib.request; "
             "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
    with connect(device, OPTS) as session:
        assert session.transport is not None
        tunnel = ReverseTunnel(session.transport, http_server)
        port = tunnel.open()
        assert port != http_server  # the device's own listener, not ours
        for i in range(3):  # several connections over the same forward
            url = f"http://127.0.0.1:{port}/v1/status{i}"
            out = session.run(f"{sys.executable} -c '{fetch}' {url}")
            assert out.stdout.strip() == f"hello /v1/status{i}"
        tunnel.close()
        tunnel.close()  # idempotent
        after = session.run(f"{sys.executable} -c '{fetch}' http://127.0.0.1:{port}/x",
                            check=False)
        assert after.rc != 0 and "refused" in after.stderr.lower()


def test_launch_restart_stop_leaves_no_process(sshd: SshServer, http_server: int,
                                               tmp_path: Path) -> None:
    ssh_dev = _ssh_device(sshd, "ssh0", tmp_path / "w0")
    local_dev = Device(name="local0", host="localhost", connection="local",
                       python=sys.executable, workdir=str(tmp_path / "w1"))
    bundles = {"ssh0": _bundle(tmp_path / "w0"), "local0": _bundle(tmp_path / "w1")}
    run_dir = tmp_path / "run"
    fleet = start_agents([ssh_dev, local_dev], {k: str(v) for k, v in bundles.items()},
                         http_server, OPTS, run_dir)
    try:
        assert {r.outcome for r in fleet.results} == {Outcome.changed}
        assert fleet.server_url("local0") == f"http://127.0.0.1:{http_server}"
        assert fleet.server_url("ssh0") != fleet.server_url("local0")  # via the tunnel
        for name, bundle in bundles.items():
            assert _wait_for(bundle / "answer.txt") == "hello /v1/hello"
            assert fleet.alive(name)
            assert _pgrep(str(bundle))  # the agent runs, found by its command line
        old = fleet.pid("ssh0")
        (bundles["ssh0"] / "answer.txt").unlink()
        new = fleet.restart("ssh0")
        assert new != old and fleet.alive("ssh0")
        assert _wait_for(bundles["ssh0"] / "answer.txt") == "hello /v1/hello"
    finally:
        stopped = fleet.stop_all()
    assert {r.outcome for r in stopped} == {Outcome.ok}
    for name, bundle in bundles.items():
        assert _pgrep(str(bundle)) == []
        assert "agent got hello" in (run_dir / "devices" / f"{name}.log").read_text()
    # The sleeping children (no bundle path in their command line) died with their group.
    assert not [p for p in _pgrep("import time; time.sleep(300)")
                if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()
                .rsplit(")", 1)[1].split()[0]]
    assert len(fleet.stop_all()) == 0  # idempotent


def test_direct_mode_skips_tunnels_and_unreachable_device_is_reported(
        sshd: SshServer, http_server: int, tmp_path: Path) -> None:
    dev = _ssh_device(sshd, "ssh0", tmp_path / "w0")
    dead = Device(name="dead", host="127.0.0.1", port=1, python=sys.executable)
    empty = _ssh_device(sshd, "empty", tmp_path / "w2")  # reachable, but no bundle there
    bundle = _bundle(tmp_path / "w0")
    fleet = start_agents([dev, dead, empty],
                         {"ssh0": str(bundle), "dead": "/nowhere", "empty": str(tmp_path / "no")},
                         1, OPTS, tmp_path / "run", direct=f"127.0.0.1:{http_server}")
    try:
        assert fleet.results["dead"].outcome == Outcome.unreachable
        assert fleet.results["empty"].outcome == Outcome.failed
        assert "No such file" in fleet.results["empty"].detail
        assert fleet.names == ["ssh0"]
        assert fleet.server_url("ssh0") == f"http://127.0.0.1:{http_server}"
        assert _wait_for(bundle / "answer.txt") == "hello /v1/hello"
    finally:
        fleet.stop_all()
    assert _pgrep(str(bundle)) == []


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_restart_after_the_ssh_session_dropped_opens_a_new_tunnel(
        sshd: SshServer, http_server: int, tmp_path: Path) -> None:
    dev = _ssh_device(sshd, "ssh0", tmp_path / "w0")
    bundle = _bundle(tmp_path / "w0")
    fleet = start_agents([dev], {"ssh0": str(bundle)}, http_server, OPTS, tmp_path / "run")
    try:
        assert _wait_for(bundle / "answer.txt") == "hello /v1/hello"
        old_pid, old_url = fleet.pid("ssh0"), fleet.server_url("ssh0")
        for child in _children(sshd.proc.pid):  # the per-connection sshd: the link "drops"
            os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while fleet.connected("ssh0") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fleet.connected("ssh0")
        (bundle / "answer.txt").unlink()
        new_pid = fleet.restart("ssh0")
        assert fleet.connected("ssh0") and new_pid != old_pid
        assert fleet.server_url("ssh0") != old_url  # a new device-side port
        assert _wait_for(bundle / "answer.txt") == "hello /v1/hello"  # through the new tunnel
        assert not Path(f"/proc/{old_pid}").exists() or "Z" in \
            Path(f"/proc/{old_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    finally:
        fleet.stop_all()
    assert _pgrep(str(bundle)) == []


def test_sshd_without_forwarding_fails_with_a_hint(tmp_path: Path) -> None:
    with running_sshd(tmp_path / "sshd", extra_config="AllowTcpForwarding no\n") as srv:
        dev = _ssh_device(srv, "strict", tmp_path / "w0")
        fleet = start_agents([dev], {"strict": str(_bundle(tmp_path / "w0"))}, 1, OPTS,
                             tmp_path / "run")
        fleet.stop_all()
    result = fleet.results["strict"]
    assert result.outcome == Outcome.failed and fleet.names == []
    assert "refused the reverse tunnel" in result.detail and "--direct" in result.detail
