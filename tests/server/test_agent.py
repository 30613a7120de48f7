"""The device agent as a real process (its bundle's zipapp) against a loopback server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from helpers.loopback import bundle_tokens, make_server, start_agent, tiny_run

from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import DeviceStatus, StopReason

pytestmark = pytest.mark.slow


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agents_train_and_exit_cleanly_when_the_run_ends(tmp_path: Path) -> None:
    names = ["a", "b"]
    _, _, _, bundles, coord = tiny_run(tmp_path, names)
    events: list[dict] = []
    server = make_server(coord, bundle_tokens(bundles), events)
    with ServerThread(server) as st:
        procs = {n: start_agent(bundles[n], st.url) for n in names}
        try:
            _wait(lambda: server.snapshot().version >= 6, 90, "6 versions")
            # 10 classes: chance is 0.1; the head and a few channels learn the patterns
            _wait(lambda: (server.snapshot().best_accuracy or 0) >= 0.4, 90, "accuracy 0.4")
            snap = server.snapshot()
            assert all(d.accepted > 0 and d.peak_memory and d.peak_memory > 50 * 2**20
                       for d in snap.devices)  # torch alone is tens of MiB
            assert all((bundles[n] / "agent.pid").read_text().strip() == str(p.pid)
                       for n, p in procs.items())
            server.finish(StopReason.max_versions)
            for p in procs.values():
                assert p.wait(timeout=20) == 0
        finally:
            for p in procs.values():
                p.kill() if p.poll() is None else None
    assert all(not (b / "agent.pid").exists() for b in bundles.values())
    assert all(d.status == DeviceStatus.done for d in server.snapshot().devices)


def test_agent_waits_for_the_server_and_reregisters_after_restart(tmp_path: Path) -> None:
    _, _, _, bundles, coord = tiny_run(tmp_path, ["a"], buffer_size=1)
    port = _free_port()
    proc = start_agent(bundles["a"], f"http://127.0.0.1:{port}")
    try:
        time.sleep(1.5)  # the agent retries with backoff while nothing listens
        assert proc.poll() is None
        events: list[dict] = []
        server = make_server(coord, bundle_tokens(bundles), events)
        with ServerThread(server, port=port):
            _wait(lambda: server.snapshot().version >= 2, 60, "2 versions")
        # a fresh server (as after a crash) on the same port: the agent registers again
        _, _, _, _, coord2 = tiny_run(tmp_path / "second", ["a"], buffer_size=1)
        events2: list[dict] = []
        server2 = make_server(coord2, bundle_tokens(bundles), events2)
        with ServerThread(server2, port=port):
            _wait(lambda: server2.snapshot().version >= 1, 60, "a version on the new server")
            assert any(e["kind"] == "device_registered" for e in events2)
            server2.finish(StopReason.target)
            assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_agent_with_wrong_token_exits_5(tmp_path: Path) -> None:
    _, _, _, bundles, coord = tiny_run(tmp_path, ["a"])
    events: list[dict] = []
    server = make_server(coord, {"a": "not-the-bundle-token"}, events)
    with ServerThread(server) as st:
        proc = start_agent(bundles["a"], st.url)
        assert proc.wait(timeout=60) == 5
    assert [e["reason"] for e in events if "reason" in e] == ["wrong_token"]


def test_bad_bundle_exits_2(tmp_path: Path) -> None:
    _, _, _, bundles, _ = tiny_run(tmp_path, ["a"])
    (bundles["a"] / "plan.json").write_text("{not json")
    proc = start_agent(bundles["a"], "http://127.0.0.1:9")
    assert proc.wait(timeout=60) == 2
    assert "plan.json" in (bundles["a"] / "agent.log").read_text()
