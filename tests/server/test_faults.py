"""Faults: a killed agent, a killed server, hostile updates, an interrupted run.

Real processes, real sockets, real torch; devices are `connection: local` or bare agent
processes, so these run without sshd.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers.loopback import Http, bundle_tokens, make_server, pid_alive, start_agent, tiny_run
from helpers.trainkit import (
    agent_pids,
    events,
    group_members,
    last_json,
    metrics,
    start_train,
    wait_for,
    write_inventory,
    write_recipe,
)

from ftte_cli.client import wire
from ftte_cli.rundir.store import load_checkpoint
from ftte_cli.rundir.train import RunDir
from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import DeviceStatus, StopReason

DEVICES = ["d1", "d2", "d3"]


def _row(server, name):  # type: ignore[no-untyped-def]
    return next(d for d in server.snapshot().devices if d.name == name)


@pytest.mark.slow
def test_killed_agent_goes_offline_run_goes_on_and_it_rejoins(tmp_path: Path) -> None:
    names = ["a", "b"]
    _, _, _, bundles, coord = tiny_run(tmp_path, names, buffer_size=1)
    log: list[dict] = []
    server = make_server(coord, bundle_tokens(bundles), log, offline_after=2.0)
    with ServerThread(server) as st:
        procs = {n: start_agent(bundles[n], st.url) for n in names}
        try:
            wait_for(lambda: _row(server, "b").accepted >= 1, 60, "b's first update")
            procs["b"].send_signal(signal.SIGKILL)
            procs["b"].wait(10)
            wait_for(lambda: _row(server, "b").status == DeviceStatus.offline, 15, "b offline")
            assert any(e["kind"] == "device_offline" and e["device"] == "b" for e in log)
            version = server.snapshot().version
            wait_for(lambda: server.snapshot().version >= version + 3, 60, "progress without b")
            assert _row(server, "b").status == DeviceStatus.offline
            accepted_b = _row(server, "b").accepted
            procs["b"] = start_agent(bundles["b"], st.url)  # the device comes back
            wait_for(lambda: _row(server, "b").accepted > accepted_b, 60, "b's update after rejoin")
            assert any(e["kind"] == "device_rejoined" and e["device"] == "b" for e in log)
            server.finish(StopReason.max_versions)
            assert all(p.wait(timeout=20) == 0 for p in procs.values())
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()


@pytest.mark.slow
def test_ftte_train_restarts_a_killed_agent_and_the_device_rejoins(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, target=0.99, max_versions=1000)
    inventory = write_inventory(tmp_path, DEVICES)
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir), "--offline-after", "3")
    try:
        wait_for(lambda: any(m["version"] >= 2 for m in metrics(run_dir)), 150, "version 2")
        victim = json.loads((run_dir / "manifest.json").read_text())["agent_pids"]["d2"]
        os.kill(victim, signal.SIGKILL)
        rejoined = wait_for(lambda: [e for e in events(run_dir) if e["device"] == "d2" and
                                     e["kind"] == "device_rejoined"], 120, "d2 to rejoin")
        kinds = [e["kind"] for e in events(run_dir) if e["device"] == "d2"]
        assert kinds.index("device_offline") < kinds.index("agent_restarted") \
            < kinds.index("device_rejoined")
        wait_for(lambda: [e for e in events(run_dir, "update_accepted") if e["device"] == "d2"
                          and e["t"] > rejoined[0]["t"]], 120, "d2's update after rejoining")
        offline = next(e["t"] for e in events(run_dir, "device_offline") if e["device"] == "d2")
        assert any(offline < e["t"] < rejoined[0]["t"] for e in events(run_dir, "update_accepted")
                   if e["device"] != "d2")  # the run went on without d2
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not pid_alive(victim)
    assert group_members(agent_pids(run_dir) | {victim}) == []


def _bad_delta(job: wire.JobMessage, kind: str) -> dict[str, torch.Tensor]:
    delta = {k: torch.full_like(v, 0.01) for k, v in job.subset.items()}
    if kind == "shape":
        delta["head.bias"] = torch.zeros(3)
    elif kind == "nan":
        delta["head.weight"][0, 0] = float("nan")
    elif kind == "oversized":
        delta["pad"] = torch.zeros(1 << 18)
    return delta


def test_hostile_updates_rejected_with_reason_in_events_jsonl(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run")
    _, _, _, bundles, coord = tiny_run(tmp_path, ["a"], buffer_size=1)
    tokens = bundle_tokens(bundles)
    server = make_server(coord, tokens, [], start_devices=1)
    server._on_event = rundir.event  # the run directory's events.jsonl, as `ftte train` wires it

    def model() -> tuple[dict[str, torch.Tensor], int]:
        return server.call(lambda c: ({k: v.clone() for k, v in c.params.items()}, c.version))

    with ServerThread(server) as st:
        assert Http(st.url, "a", "forged-token").call("POST", "/register", b"{}")[0] == 401
        dev = Http(st.url, "a", tokens["a"])
        dev.register()
        for kind, (code, reason) in {"shape": (422, "shape_mismatch"),
                                     "nan": (422, "non_finite"),
                                     "oversized": (413, "too_large")}.items():
            status, job = dev.task(wait=5)  # a rejected update ends its job: take a new one
            assert job is not None
            before = model()
            got, reply = dev.update(job, _bad_delta(job, kind))
            assert got == code and (not reply or reply["reason"] == reason), kind
            after = model()
            assert after[1] == before[1], kind
            assert all(torch.equal(after[0][k], v) for k, v in before[0].items()), kind
        # a genuine upload, then the same job replayed
        status, job = dev.task(wait=5)
        assert job is not None
        assert dev.update(job, _bad_delta(job, "good"))[0] == 200
        before = model()
        got, reply = dev.update(job, _bad_delta(job, "good"))
        assert got == 422 and reply["reason"] == "duplicate_job"
        after = model()
        assert after[1] == before[1]
        assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
    rundir.close()
    reasons = [e.get("reason") for e in events(rundir.path)]
    for reason in ("wrong_token", "shape_mismatch", "non_finite", "too_large", "duplicate_job"):
        assert reason in reasons, reason


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _checkpoint_versions(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.stem[1:]) for p in folder.glob("v*.json"))


@pytest.mark.slow
def test_killed_server_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, target=0.99, max_versions=9)
    inventory = write_inventory(tmp_path, DEVICES)
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir), "--offline-after", "3")
    try:
        wait_for(lambda: max(_checkpoint_versions(run_dir), default=0) >= 3, 150, "checkpoint v3")
        os.kill(proc.pid, signal.SIGKILL)  # the server dies with no chance to clean up
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first_agents = agent_pids(run_dir)
    assert group_members(first_agents)  # its agents are orphaned, still retrying
    last = max(_checkpoint_versions(run_dir))
    _, saved = load_checkpoint(run_dir / "checkpoints", f"v{last:06d}")
    before = [m for m in metrics(run_dir)]

    resumed = start_train(tmp_path, "--resume", str(run_dir), "--offline-after", "3")
    assert resumed.wait(timeout=200) == 0, (tmp_path / "train.err").read_text()[-3000:]
    result = last_json(tmp_path)
    assert result["resumed_from"] == last and result["version"] == 9
    assert result["stop_reason"] == "max_versions"
    after = metrics(run_dir)[len(before):]
    assert after[0]["version"] == last + 1  # continues right after the checkpoint
    assert [m["version"] for m in after] == list(range(last + 1, 10))
    assert {m["version"] for m in before} >= set(range(1, last + 1))  # nothing before it lost
    assert after[0]["accepted"] > saved["metrics"]["accepted"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumes"][0]["version"] == last
    assert group_members(first_agents | agent_pids(run_dir)) == []


@pytest.mark.slow
def test_interrupted_run_stops_every_agent(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, target=0.99)
    inventory = write_inventory(tmp_path, DEVICES[:2])
    run_dir = tmp_path / "run"
    port = _free_port()  # --direct: the agents dial the bound address, no tunnels
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir), "--direct", f"127.0.0.1:{port}")
    try:
        wait_for(lambda: any(m["version"] >= 2 for m in metrics(run_dir)), 150, "version 2")
        assert json.loads((run_dir / "manifest.json").read_text())["direct"] == f"127.0.0.1:{port}"
        pids = agent_pids(run_dir)
        assert pids and all(pid_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert last_json(tmp_path)["error"] == "interrupted"
    assert group_members(pids) == []
    assert any(e["kind"] == "run_finished" and e["reason"] == "interrupted"
               for e in events(run_dir))
    time.sleep(0.1)
    assert _checkpoint_versions(run_dir)  # the final state was saved
