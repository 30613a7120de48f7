"""`ftte train` over the emulated testbed: real sshd per device, reverse tunnels, cgroup caps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.testbed import Testbed
from helpers.trainkit import (
    agent_pids,
    group_members,
    last_json,
    start_train,
    wait_for,
    write_recipe,
)

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed


def test_train_over_testbed_reaches_target_under_every_cap(tmp_path: Path,
                                                           testbed: Testbed) -> None:
    recipe = write_recipe(tmp_path, target=0.75, time_limit=200.0)
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(testbed.inventory),
                       "--run-dir", str(run_dir), "--offline-after", "20")
    assert proc.wait(timeout=400) == 0, (tmp_path / "train.err").read_text()[-3000:]
    result = last_json(tmp_path)
    assert result["target_reached"], result
    rows = {d["name"]: d for d in result["devices"]}
    assert set(rows) == {d.name for d in testbed.state.devices}
    for dev in testbed.state.devices:
        row = rows[dev.name]
        assert row["accepted"] > 0, dev.name
        assert row["peak_memory"] is not None
        if dev.mem_cap_bytes is not None:  # measured on the device, under its cgroup cap
            assert row["peak_memory"] < dev.mem_cap_bytes, (dev.name, row["peak_memory"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["direct"] is None  # agents came through SSH reverse tunnels
    assert group_members(agent_pids(run_dir)) == []  # nothing of the run is left


def _inventory_with_data(testbed: Testbed, folder: Path, host: str, data: Path) -> Path:
    """A copy of the testbed inventory where `host` trains on a device-local data file."""
    import yaml

    inv = yaml.safe_load(testbed.inventory.read_text())
    for group in inv["all"]["children"].values():
        if host in group.get("hosts", {}):
            group["hosts"][host]["ftte_data"] = str(data)
    path = folder / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv))
    return path


@pytest.mark.timeout(600)  # two OOM kills at a 25% CPU quota; a fresh venv's cap is higher
def test_lenient_fedavg_capped_device_fails_visibly(tmp_path: Path,
                                                    testbed: Testbed) -> None:
    """Full training at a large batch cannot fit the Pi Zero 2's cap: its agent is OOM-killed,
    restarted once, killed again and shown killed for memory (with the peak and the cap); the
    other device carries the rounds."""
    import os
    import signal

    import torch

    from ftte_cli.engine.serialize import save_tensors

    if not testbed.isolated:  # without root there are no cgroup caps to run out of
        return
    small = testbed.by_class("pi-zero-2").name
    big = testbed.by_class("pi4").name
    n = 8192  # one batch of 8192 windows: far more activation memory than 352 MiB allows
    gen = torch.Generator().manual_seed(0)
    data = tmp_path / "local.safetensors"
    save_tensors(data, {"train_x": torch.randn(n, 9, 128, generator=gen),
                        "train_y": torch.randint(0, 6, (n,), generator=gen)})
    inventory = _inventory_with_data(testbed, tmp_path, small, data)
    recipe = write_recipe(tmp_path, strategy="fedavg", target=0.99, max_versions=1000,
                          time_limit=560.0)
    text = recipe.read_text().replace("batch_size: 32", "batch_size: 8192")
    text = text.replace("strategy: {name: fedavg,", "strategy: {name: fedavg, "
                        "baseline_memory: lenient,")
    recipe.write_text(text)
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--limit", f"{small},{big}", "--run-dir", str(run_dir),
                       "--offline-after", "5")
    try:
        wait_for(lambda: [e for e in _events(run_dir) if e["kind"] == "device_failed"], 480,
                 "the capped device to fail")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = {d["name"]: d for d in summary["devices"]}
    assert rows[small]["status"] == "killed_for_memory" and rows[small]["accepted"] == 0
    assert rows[big]["accepted"] >= 1 and summary["versions"] >= 1
    kinds = [(e["kind"], e["device"]) for e in _events(run_dir)]
    assert ("agent_restarted", small) in kinds  # restarted once after the first OOM kill
    assert kinds.count(("killed_for_memory", small)) == 2
    failed = next(e for e in _events(run_dir) if e["kind"] == "device_failed")
    assert failed["detail"].startswith("killed for memory: peak ") and "cap " in failed["detail"]
    assert [d for k, d in kinds if k == "device_failed"] == [small]
    assert group_members(agent_pids(run_dir)) == []


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
