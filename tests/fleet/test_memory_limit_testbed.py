"""A budget that holds near the limit (issue 11): the tightest device's cgroup cap is set so its
usable memory M_i is within 10% above the plan's estimate; training runs to the end under it.

The same cap under the old accounting (M_i without the runtime's cost of a training step, as
profiles recorded before the probe measured it) lets the planner choose a bigger plan, and the
device is killed for memory, shown as such. On the old code the first half fails: it counts the
baseline in RSS against the cgroup's limit (shared torch pages another cgroup loaded are in RSS,
not in the cgroup's charge), so under this cap no plan fits at all.

Peaks are the cgroup's own figures (memory.max_usage_in_bytes, the OOM kill counter): the cap
is enforced on the cgroup's charge, not on the agent's RSS.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.testbed import Testbed
from helpers.trainkit import last_json, start_train, wait_for
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.fleet import budget as bud

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

MIB = 2**20
RECIPE = """\
name: near-limit
seed: 1
data: {dataset: synthetic_har, windows: 1200, subjects: 6, partition: iid, clients: 4}
model: {name: har_cnn, width: 2.0}
train: {epochs: 1, batch_size: 256, lr: 0.05}
strategy: {name: ftte, buffer_size: 2, max_concurrency: 2}
plan: {method: gradnorm}
stop: {target_accuracy: 0.99, max_versions: 3, time_limit: 240, eval_every: 1}
"""


def _limit_file(testbed: Testbed, name: str) -> Path:
    dirs = [Path(d) for d in testbed.device_state(name).cgroups if "/memory/" in d]
    return dirs[0] / "memory.limit_in_bytes"


@pytest.fixture
def tight(testbed: Testbed, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(the device made tightest, its cgroup limit file); the cap is restored afterwards."""
    name = testbed.by_class("pi4").name
    path = _limit_file(testbed, name)
    before = path.read_text().strip()
    try:
        yield name, path
    finally:
        path.write_text(before)


def _inventory(testbed: Testbed, folder: Path) -> Path:
    """A copy of the testbed inventory, so its profiles cache lives in `folder`."""
    path = folder / "inventory.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(testbed.inventory.read_text())))
    return path


def _plan_estimate(recipe: Path, budget: int) -> int:
    out = CliRunner().invoke(app, ["plan", "--recipe", str(recipe), "--budget", str(budget),
                                   "--format", "json"])
    assert out.exit_code == 0, out.stdout
    return int(json.loads(out.stdout)["memory"]["plan"])


def _train(folder: Path, recipe: Path, inventory: Path, limit: str) -> tuple[int, Path]:
    run_dir = folder / "run"
    proc = start_train(folder, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--limit", limit, "--run-dir", str(run_dir), "--offline-after", "10")
    try:
        return proc.wait(timeout=420), run_dir
    finally:
        if proc.poll() is None:
            proc.kill()


def _shard_bytes(recipe: Path, testbed: Testbed) -> dict[str, int]:
    """Each device's data shard, split as `ftte train` splits it (the whole inventory)."""
    from ftte_cli.api import shard_bytes
    from ftte_cli.config.recipe import load_recipe
    from ftte_cli.engine.data import load_federated

    devices = testbed.devices()
    loaded = load_recipe(recipe)
    return shard_bytes(load_federated(loaded.data, len(devices), loaded.seed), devices)


def _profile(inventory: Path, recipe: Path, limit: str) -> dict[str, dict]:
    out = CliRunner().invoke(app, ["profile", "-i", str(inventory), "--recipe", str(recipe),
                                   "--limit", limit, "--format", "json"])
    assert out.exit_code == 0, out.stdout
    return bud.load_profiles(bud.profiles_path(inventory))


def test_near_limit_budget_trains_to_the_end_and_old_accounting_is_killed(
        testbed: Testbed, tight: tuple[str, Path], tmp_path: Path) -> None:
    if not testbed.isolated:  # without root there are no cgroup caps to hold
        pytest.skip("needs root: cgroup memory caps")
    name, limit_file = tight
    other = testbed.by_class("jetson-nano").name
    limit = f"{name},{other}"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    full = _plan_estimate(recipe, 2**40)  # a budget above everything: the dense plan
    estimate = _plan_estimate(recipe, full // 5)
    assert estimate < full // 5

    # profile once at the class's cap: baseline and runtime overhead of this device
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    inventory = _inventory(testbed, new_dir)
    records = _profile(inventory, recipe, limit)
    rec = records[name]
    assert rec["runtime_overhead_bytes"] > 4 * MIB, rec["runtime_note"]

    # the cap that leaves M_i = 1.05 x the plan's estimate; the record says what the probe would
    # read from the cgroup now (profiling again would only add a few MiB of RSS noise)
    shard = _shard_bytes(recipe, testbed)[name]
    cap = (rec["baseline_cgroup_bytes"] + rec["runtime_overhead_bytes"]
           + rec["safety_margin_bytes"] + shard + int(1.05 * estimate))
    limit_file.write_text(str(cap))
    (limit_file.parent / "memory.max_usage_in_bytes").write_text("0")  # peak from here on
    kills = _oom_kills(limit_file)
    records[name] = {**rec, "cgroup_mem_limit_bytes": cap}
    bud.profiles_path(inventory).write_text(bud.dump_profiles(records))

    code, run_dir = _train(new_dir, recipe, inventory, limit)
    assert code == 0, (new_dir / "train.err").read_text()[-3000:]
    result = last_json(new_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    usable = {d["name"]: d["usable_bytes"] for d in manifest["budget"]["devices"]}
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["estimated_bytes"] <= usable[name] <= 1.1 * plan["estimated_bytes"], (
        usable, plan["estimated_bytes"])
    assert result["stop_reason"] == "max_versions", result
    rows = {d["name"]: d for d in result["devices"]}
    assert rows[name]["status"] == "done" and rows[name]["accepted"] > 0, rows[name]
    assert _oom_kills(limit_file) == kills  # the kernel never killed anything for memory
    for dev in (name, other):  # what the cgroup was charged for at its peak, against its cap
        peak = int((_limit_file(testbed, dev).parent / "memory.max_usage_in_bytes").read_text())
        assert peak <= int(_limit_file(testbed, dev).read_text()), dev
        assert rows[dev]["peak_memory"] is not None, dev  # the agent's own (RSS) peak
    events = _events(run_dir)
    assert not [e for e in events if e["kind"] in ("agent_restarted", "device_failed")], events

    # the same cap, profiles as the old probe left them (no runtime overhead): killed for memory
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    inventory = _inventory(testbed, old_dir)
    records[name] = {k: v for k, v in records[name].items() if k != "runtime_overhead_bytes"}
    bud.profiles_path(inventory).parent.mkdir(parents=True)
    bud.profiles_path(inventory).write_text(bud.dump_profiles(records))
    endless = tmp_path / "endless.yaml"  # the same plan; the run lasts until the kill shows
    endless.write_text(RECIPE.replace("max_versions: 3", "max_versions: 10000"))
    run_dir = old_dir / "run"
    proc = start_train(old_dir, "--recipe", str(endless), "--inventory", str(inventory),
                       "--limit", limit, "--run-dir", str(run_dir), "--offline-after", "5")
    try:
        try:
            failed = wait_for(lambda: [e for e in _events(run_dir)
                                       if e["kind"] == "device_failed"],
                              120, "the tightest device to be killed")
        except AssertionError:
            failed = []
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    if not failed:
        # seen only in a venv installed minutes before (a fresh CI clone): its library files map
        # ~55 MiB more pages, the probe's overhead grows with them, but the device's cgroup is
        # not charged for pages the host loaded first, so the old, larger plan can still fit
        # (docs/demo.md, "The budget swings"); the first half above holds either way
        pytest.xfail("old accounting not killed within 120 s: probed overhead "
                     f"{rec['runtime_overhead_bytes'] // MIB} MiB includes uncharged pages")
    assert [e["device"] for e in failed] == [name], failed
    assert failed[0]["detail"].startswith("killed for memory: peak"), failed
    assert _oom_kills(limit_file) > kills
    rows = {d["name"]: d for d in json.loads((run_dir / "summary.json").read_text())["devices"]}
    assert rows[name]["status"] == "killed_for_memory", rows[name]
    assert rows[other]["status"] != "killed_for_memory" and rows[other]["accepted"] > 0
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["estimated_bytes"] > 2 * estimate  # the old budget bought a bigger plan


def _oom_kills(limit_file: Path) -> int:
    """OOM kills the kernel counted in this memory cgroup (v1 memory.oom_control)."""
    text = (limit_file.parent / "memory.oom_control").read_text()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill "))


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
