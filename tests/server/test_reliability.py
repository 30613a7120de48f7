"""The faults of issue 13 reproduced against the real server: real agents, real sockets, torch.

Each test names the fault it reproduces; README's "Reliability" section quotes the figures they
measure (updates tried, rejected, lost). The rules checked in process (watchdog, checkpoint
resume, input errors, event window) are in test_reliability_rules.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from helpers.loopback import Http, bundle_tokens, make_server, start_agent, tiny_run
from helpers.trainkit import wait_for

from ftte_cli.config.recipe import GuardConfig
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.rundir.store import load_checkpoint
from ftte_cli.rundir.train import RunDir
from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import StopReason

pytestmark = pytest.mark.slow


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (they are not JSON)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def strict_jsonl(path: Path) -> list[dict[str, Any]]:
    return [strict_json(line) for line in path.read_text().splitlines() if line.strip()]


def guarded_coordinator(coord: Coordinator, **guard: Any) -> Coordinator:
    """The same run as `coord` with strategy.guard set to `guard`."""
    scfg = replace(coord.config.strategy, guard=GuardConfig(**guard))
    clients = {cid: int(c["num_samples"]) for cid, c in coord.client_info().items()}
    return Coordinator(dict(coord.params), coord.plan, make_strategy(scfg), clients,
                       CoordinatorConfig(strategy=scfg, eval_every=coord.config.eval_every),
                       seed=1, evaluate=coord._evaluate)


# ---- fault 1: one poisoned update ends the run -------------------------------------------------

@pytest.mark.parametrize("guard, outcome", [
    ({"norm_bound": 10.0, "norm_action": "reject"}, "rejected"),
    ({"norm_bound": 10.0, "norm_action": "clip"}, "clipped"),
    ({"norm_bound": None}, "rolled_back"),  # no norm bound: the model check alone must hold
])
def test_a_poisoned_1e30_update_never_reaches_the_model(tmp_path: Path, guard: dict,
                                                         outcome: str) -> None:
    names = ["a", "b", "m"]  # a and b are real agents; m holds a valid token and attacks
    _, _, _, bundles, plain = tiny_run(tmp_path, names, buffer_size=2, concurrency=3)
    coord = guarded_coordinator(plain, **guard)
    tokens = bundle_tokens(bundles)
    rundir = RunDir(tmp_path / "run")
    server = make_server(coord, tokens, [], start_devices=3)
    server._on_event = rundir.event  # as `ftte train` wires them

    def on_version(c: Coordinator, now: float, result: Any) -> None:
        last = c.metrics.evals[-1] if c.metrics.evals else None
        rundir.metric({"t": now, "version": c.version, "accepted": c.metrics.accepted,
                       "accuracy": last.accuracy if last else None,
                       "loss": last.loss if last else None})

    server._on_version = on_version
    with ServerThread(server) as st:
        procs = [start_agent(bundles[n], st.url) for n in ("a", "b")]
        try:
            mallory = Http(st.url, "m", tokens["m"])
            mallory.register()
            wait_for(lambda: server.snapshot().accepted >= 4, 120, "4 honest updates")
            replies = []
            for _ in range(3):
                status, job = mallory.task(wait=30)
                assert status == 200 and job is not None
                poison = {k: torch.full_like(v, 1e30) for k, v in job.subset.items()}
                replies.append(mallory.update(job, poison))
            version = server.snapshot().version
            wait_for(lambda: server.snapshot().version >= version + 6, 120,
                     "6 more versions of honest training")
            server.finish(StopReason.max_versions)
            assert all(p.wait(timeout=30) == 0 for p in procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    rundir.close()
    events = strict_jsonl(rundir.path / "events.jsonl")
    metrics = strict_jsonl(rundir.path / "metrics.jsonl")
    params = coord.params  # the server has stopped: nothing changes it any more
    assert all(bool(torch.isfinite(t).all()) for t in params.values())
    assert all(t.abs().max() < 1e3 for t in params.values())
    honest = [e for e in events if e["kind"] == "update_accepted" and e["device"] != "m"]
    assert len(honest) >= 10
    # no honest update was ever refused: the model they trained on stayed sane
    assert not [e for e in events if e["kind"] == "update_rejected" and e["device"] != "m"]
    if outcome == "rejected":
        assert [r[0] for r in replies] == [422] * 3
        assert {r[1]["reason"] for r in replies} == {"norm_bound"}
        refused = [e for e in events if e["device"] == "m" and e["kind"] == "update_rejected"]
        assert len(refused) == 3 and all("over bound" in e["detail"] for e in refused)
    elif outcome == "clipped":
        assert [r[0] for r in replies] == [200] * 3
        clipped = [e for e in events if e["device"] == "m" and e.get("clipped")]
        assert len(clipped) == 3 and all("clipped: norm" in e["detail"] for e in clipped)
    else:
        assert [r[0] for r in replies] == [200] * 3
        rolled = [e for e in events if e["kind"] == "model_rolled_back"]
        assert 1 <= len(rolled) <= 3 and coord.metrics.rollbacks == len(rolled)
    accuracies = [m["accuracy"] for m in metrics if m["accuracy"] is not None]
    assert all(m["loss"] is not None and math.isfinite(m["loss"]) for m in metrics)
    assert accuracies[-1] >= max(accuracies[:4]) - 0.15  # training went on, it did not collapse
    print(f"\n{outcome}: poisoned tried 3, answered {[r[0] for r in replies]}; honest accepted "
          f"{len(honest)}, honest rejected 0, jobs lost {coord.metrics.jobs_lost}, rollbacks "
          f"{coord.metrics.rollbacks}, accuracy {accuracies[0]:.3f} -> {accuracies[-1]:.3f}")


def test_ftte_train_stops_as_stalled_when_no_version_advances(tmp_path: Path) -> None:
    import os
    import signal

    from helpers.trainkit import (
        agent_pids,
        events,
        group_members,
        metrics,
        start_train,
        write_inventory,
    )

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""
name: stall
data: {dataset: synthetic_har, windows: 600, subjects: 4, partition: iid}
model: {name: har_cnn, width: 0.5}
train: {epochs: 1, batch_size: 32, lr: 0.05}
strategy: {name: ftte, buffer_size: 1, max_concurrency: 2}
plan: {memory_budget: 40MB, method: gradnorm}
stop: {target_accuracy: 0.999, max_versions: 1000, time_limit: 300, eval_every: 1,
       stall_factor: 3, stall_min: 6}
""")
    inventory = write_inventory(tmp_path, ["d1", "d2"])
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir), "--offline-after", "120")
    pids: set[int] = set()
    try:
        wait_for(lambda: any(m["version"] >= 2 for m in metrics(run_dir)), 150, "version 2")
        pids = agent_pids(run_dir)
        for pid in pids:
            os.killpg(pid, signal.SIGSTOP)  # every device hangs: no version can appear
        assert proc.wait(timeout=90) == 1, (tmp_path / "train.err").read_text()[-2000:]
    finally:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "train.err").read_text()  # fault 8: every step before training shown
    steps = ["plan search", "checking that no other run holds", "deploy d1: changed",
             "deploy d2: changed", "starting 2 agents"]
    assert all(s in err for s in steps), err[-2000:]
    assert sorted(steps, key=err.index)[-1] == "starting 2 agents"
    stalled = events(run_dir, "run_stalled")
    assert len(stalled) == 1 and "no new model version" in stalled[0]["detail"]
    assert events(run_dir, "run_finished")[-1]["reason"] == "stalled"
    assert strict_json((run_dir / "summary.json").read_text())["stop_reason"] == "stalled"
    assert group_members(pids) == []


# ---- fault 6: a stalled device's late update was dropped silently ------------------------------

def _row(server: Any, name: str) -> Any:
    return next(d for d in server.snapshot().devices if d.name == name)


@pytest.mark.parametrize("max_staleness, verdict", [(None, "accepted"), (1, "too_stale")])
def test_a_stalled_devices_late_update_is_judged_by_the_staleness_rule(
        tmp_path: Path, max_staleness: Any, verdict: str) -> None:
    import signal
    import time

    from ftte_cli.server.snapshot import DeviceStatus

    names = ["a", "b"]
    _, _, _, bundles, plain = tiny_run(tmp_path, names, buffer_size=1, concurrency=2)
    # Only the staleness rule judges here: b's job is from early training, when updates are far
    # larger than the median of the latest ones, so the default norm bound would refuse it.
    scfg = replace(plain.config.strategy, max_staleness=max_staleness,
                   guard=GuardConfig(norm_bound=None))
    coord = Coordinator(dict(plain.params), plain.plan, make_strategy(scfg), {"a": 60, "b": 60},
                        CoordinatorConfig(strategy=scfg, eval_every=5), seed=1,
                        evaluate=plain._evaluate)
    rundir = RunDir(tmp_path / "run")
    server = make_server(coord, bundle_tokens(bundles), [], offline_after=2.0, start_devices=2)
    server._on_event = rundir.event
    with ServerThread(server) as st:
        procs = {n: start_agent(bundles[n], st.url) for n in names}
        try:
            wait_for(lambda: _row(server, "b").accepted >= 1, 60, "b's first update")
            for _ in range(200):  # stop b while it holds a job it fetched
                procs["b"].send_signal(signal.SIGSTOP)
                time.sleep(0.3)
                if _row(server, "b").status == DeviceStatus.training:
                    break
                procs["b"].send_signal(signal.SIGCONT)
                time.sleep(0.05)
            else:
                raise AssertionError("never caught b holding a job")
            held = _row(server, "b")
            wait_for(lambda: _row(server, "b").status == DeviceStatus.offline, 15, "b offline")
            version = server.snapshot().version
            wait_for(lambda: server.snapshot().version >= version + 3, 60, "a goes on alone")
            procs["b"].send_signal(signal.SIGCONT)  # b wakes up and delivers its old job
            wait_for(lambda: [e for e in read_events(rundir) if e["device"] == "b" and
                              e["kind"] in ("update_accepted", "update_rejected") and
                              "late" in e["detail"]], 60, "b's late update judged")
            wait_for(lambda: _row(server, "b").status in (DeviceStatus.idle,
                                                          DeviceStatus.training), 30, "b rejoins")
            server.finish(StopReason.max_versions)
            assert all(p.wait(timeout=30) == 0 for p in procs.values())
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
    rundir.close()
    judged = [e for e in strict_jsonl(rundir.path / "events.jsonl") if e["device"] == "b"
              and "late" in e.get("detail", "")]
    assert len(judged) == 1, judged
    event = judged[0]
    log = (bundles["b"] / "agent.log").read_text()
    assert "job j" in event["detail"]
    if verdict == "accepted":
        assert event["kind"] == "update_accepted" and event["late"] is True
        assert f"v{held.version} staleness" in event["detail"]  # the job b held when stopped
        assert event["staleness"] >= 3  # its weight came from the staleness rule
        assert "late update for job" in log and '"staleness"' in log
        assert coord.metrics.jobs_lost == 0  # released, then delivered: nothing lost
    else:
        assert event["kind"] == "update_rejected" and event["reason"] == "too_stale"
        assert "refused (422)" in log and "too_stale" in log
    assert any(e["kind"] == "device_rejoined" and e["device"] == "b"
               for e in strict_jsonl(rundir.path / "events.jsonl"))


def read_events(rundir: RunDir) -> list[dict[str, Any]]:
    path = rundir.path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ftte_train_resume_after_a_kill_stops_old_agents_and_skips_a_torn_checkpoint(
        tmp_path: Path) -> None:
    import os
    import shutil
    import signal

    from helpers.trainkit import (
        agent_pids,
        group_members,
        last_json,
        start_train,
        write_inventory,
        write_recipe,
    )

    recipe = write_recipe(tmp_path, target=0.999, max_versions=10)
    inventory = write_inventory(tmp_path, ["d1", "d2", "d3"])
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"

    def versions() -> list[int]:
        return sorted(int(p.stem[1:]) for p in folder.glob("v*.json")) if folder.exists() else []

    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir), "--offline-after", "3")
    try:
        wait_for(lambda: len(versions()) >= 3 and versions()[-1] >= 4, 150, "3 checkpoints")
        os.kill(proc.pid, signal.SIGKILL)  # the server dies mid-run; its agents live on
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first_agents = agent_pids(run_dir)
    assert group_members(first_agents)
    kept = versions()
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    # 1. every checkpoint torn: the resume fails, naming them, and still stops the old agents
    for meta in folder.glob("v*.json"):
        meta.write_text(meta.read_text()[:50])
    failed = start_train(tmp_path, "--resume", str(run_dir), "--offline-after", "3")
    assert failed.wait(timeout=120) != 0
    assert "no complete checkpoint" in (tmp_path / "train.out").read_text()
    assert group_members(first_agents) == []
    # 2. only the newest torn, plus the temporary file of a write the kill cut short
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    newest = folder / f"v{kept[-1]:06d}.json"
    newest.write_text(newest.read_text()[:80])
    (folder / f".v{kept[-1] + 1:06d}.json.tmp99999").write_text("{")
    _, saved = load_checkpoint(folder, f"v{kept[-2]:06d}")
    resumed = start_train(tmp_path, "--resume", str(run_dir), "--offline-after", "3")
    assert resumed.wait(timeout=200) == 0, (tmp_path / "train.err").read_text()[-3000:]
    result = last_json(tmp_path)
    assert result["resumed_from"] == kept[-2] and result["version"] == 10
    assert not list(folder.glob(".*.tmp*"))
    accepted = sum(d["accepted"] for d in result["devices"])
    assert accepted == result["summary"]["accepted"] > saved["metrics"]["accepted"]
    assert group_members(agent_pids(run_dir)) == []


# ---- fault 9: the testbed reaps what it starts -------------------------------------------------

def _in_proc(pid: int) -> Optional[str]:
    """The process state letter (Z for a zombie), or None when the pid is gone entirely."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and cgroups need root (CI is root)")
def test_testbed_down_leaves_no_zombie_of_what_it_started(tmp_path: Path) -> None:
    from ftte_cli.config.inventory import load_inventory
    from ftte_cli.fleet.ssh import SshOptions, connect
    from ftte_cli.testbed import lifecycle

    state = lifecycle.up(tmp_path, 2, "pi-zero-2,phone")
    device = load_inventory(tmp_path / lifecycle.INVENTORY_FILE).devices[state.devices[0].name]
    with connect(device, SshOptions()) as session:  # outlives its session: an orphan
        assert session.run("setsid nohup sleep 600 >/dev/null 2>&1 & echo ok").rc == 0
    started = [p for dev in state.devices for cg in dev.cgroups
               for p in map(int, Path(cg, "cgroup.procs").read_text().split())]
    started += [dev.pid for dev in state.devices if dev.pid is not None]
    assert len(set(started)) >= 3  # two sshds and the sleep
    report = lifecycle.down(tmp_path)
    assert report.leftovers == ()
    left = {p: _in_proc(p) for p in set(started)}
    assert all(s is None for s in left.values()), left  # gone, not dead-but-unreaped (Z)


# ---- fault 2: two runs against one fleet ------------------------------------------------------

def test_a_second_run_is_refused_and_leaves_the_first_runs_devices_alone(tmp_path: Path) -> None:
    import shutil

    from helpers.trainkit import (
        agent_pids,
        group_members,
        kill_group,
        start_train,
        write_inventory,
        write_recipe,
    )

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    recipe = write_recipe(first, target=0.999, max_versions=1000)
    inventory = write_inventory(first, ["d1", "d2"])
    run_dir = first / "run"
    proc = start_train(first, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir))
    try:
        wait_for(lambda: run_dir.joinpath("manifest.json").exists() and agent_pids(run_dir)
                 and any(True for _ in (run_dir / "events.jsonl").open()), 150, "first run")
        pids = agent_pids(run_dir)
        # 1. the same inventory: refused at once by the local lock, naming the first run
        again = start_train(second, "--recipe", str(recipe), "--inventory", str(inventory),
                            "--run-dir", str(second / "run"))
        assert again.wait(timeout=60) == 1
        run_id = json.loads((run_dir / "manifest.json").read_text())["run_id"]
        assert f"in use by run {run_id}" in (second / "train.out").read_text()
        # 2. the same devices through another inventory file: each device is busy
        other = second / "inventory.yaml"
        shutil.copy(inventory, other)
        busy = start_train(second, "--recipe", str(recipe), "--inventory", str(other),
                           "--run-dir", str(second / "run2"))
        assert busy.wait(timeout=150) == 1, (second / "train.err").read_text()[-2000:]
        out = (second / "train.out").read_text()
        assert "every device is busy" in out and f"run {run_id}" in out
        assert sorted(group_members(pids)) == sorted(group_members(agent_pids(run_dir)))
        assert len(agent_pids(run_dir)) == 2 and group_members(pids)  # still the first run's 2
    finally:
        kill_group(proc, signal.SIGINT)
        proc.wait(60)
    logs = [p for p in (first / "work").rglob("agent-*.log")]
    assert len(logs) == 2 and all(b"\0" not in p.read_bytes() for p in logs)
    assert all(run_id in p.name for p in logs)  # per run, never shared
    assert (run_dir / "devices" / "d1.log").read_bytes().count(b"registered as d1") >= 1


# ---- fault 5: Ctrl-C during `ftte deploy` ------------------------------------------------------

def test_ctrl_c_during_deploy_starts_no_new_upload_and_prints_what_each_device_ended_with(
        tmp_path: Path) -> None:
    import subprocess
    import time

    from helpers.sshd import running_sshd
    from helpers.trainkit import FTTE, env, write_recipe

    with running_sshd(tmp_path / "sshd") as srv:
        names = [f"d{i}" for i in range(1, 7)]
        hosts = "\n".join(f"    {n}: {{ftte_workdir: {tmp_path / 'work' / n}}}" for n in names)
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(f"""all:
  vars:
    ansible_host: 127.0.0.1
    ansible_port: {srv.port}
    ansible_user: {srv.user}
    ansible_ssh_private_key_file: {srv.client_key}
    ansible_python_interpreter: {sys_executable()}
    ftte_known_hosts: {srv.known_hosts}
  hosts:
{hosts}
""")
        recipe = write_recipe(tmp_path)
        out = open(tmp_path / "deploy.out", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([*FTTE, "deploy", "-r", str(recipe), "-i", str(inventory),
                                 "--forks", "1", "--format", "json"], cwd=tmp_path, env=env(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            first = tmp_path / "work" / "d1" / "bundle"
            wait_for(lambda: first.exists(), 180, "d1's bundle in place", every=0.01)
            proc.send_signal(signal.SIGINT)  # Ctrl-C while the fleet is being deployed
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
            out.close()
        time.sleep(1.0)  # nothing may still be running on a device after the exit
        text = (tmp_path / "deploy.out").read_text()
        doc = json.loads(text[text.index("{"):])
        rows = {r["device"]: r for r in doc["devices"]}
        assert list(rows) == names and doc["exit_code"] == 130
        assert rows["d1"]["outcome"] == "changed"
        interrupted = [n for n in names if rows[n]["outcome"] == "interrupted"]
        assert interrupted and interrupted == names[len(names) - len(interrupted):]
        for name in names:  # each device is as the recap says: whole new bundle, or untouched
            work = tmp_path / "work" / name
            if rows[name]["outcome"] == "changed":
                assert (work / "bundle" / "manifest.json").exists()
            else:
                assert not work.exists() or not list(work.rglob("*")), list(work.rglob("*"))


def sys_executable() -> str:
    import sys

    return sys.executable
