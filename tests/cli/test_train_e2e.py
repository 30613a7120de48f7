"""`ftte train` end to end: real deploy, real agent processes, real server and torch training.

Devices are `connection: local` (the same deploy/launch code without sshd); the testbed version
with real sshd and memory caps is in test_train_testbed.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.trainkit import (
    agent_pids,
    events,
    group_members,
    last_json,
    metrics,
    start_train,
    write_inventory,
    write_recipe,
)

from ftte_cli.engine.plan import load_plan
from ftte_cli.rundir.store import load_checkpoint

pytestmark = pytest.mark.slow

DEVICES = ["d1", "d2", "d3"]


def test_train_reaches_target_and_leaves_a_complete_run_dir(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, target=0.75)
    inventory = write_inventory(tmp_path, DEVICES)
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(run_dir))
    assert proc.wait(timeout=240) == 0, (tmp_path / "train.err").read_text()[-3000:]
    result = last_json(tmp_path)
    assert result["stop_reason"] == "target_accuracy" and result["target_reached"]
    assert result["best_accuracy"] >= 0.75
    assert {d["name"] for d in result["devices"]} == set(DEVICES)
    assert all(d["accepted"] > 0 and d["status"] == "done" for d in result["devices"])

    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("recipe", "inventory_sha256", "profiles", "plan", "bundles", "seed", "packages"):
        assert key in manifest, key
    assert set(manifest["bundles"]) == set(DEVICES) and manifest["packages"]["torch"]
    assert load_plan(run_dir).trainable_params == manifest["plan"]["trainable_params"]
    versions = [m["version"] for m in metrics(run_dir)]
    assert versions == list(range(1, result["version"] + 1))
    assert max(m.get("accuracy", 0) for m in metrics(run_dir)) >= 0.75
    kinds = {e["kind"] for e in events(run_dir)}
    assert {"device_registered", "update_accepted", "run_finished"} <= kinds
    tensors, meta = load_checkpoint(run_dir / "checkpoints", f"v{result['version']:06d}")
    assert meta["version"] == result["version"] and tensors
    for name in DEVICES:  # agent logs fetched into the run directory
        assert "registered as" in (run_dir / "devices" / f"{name}.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["time_to_target"] is not None and summary["stop_reason"] == "target_accuracy"
    assert group_members(agent_pids(run_dir)) == []  # no process of the run is left


def test_strict_fedavg_refuses_when_no_device_can_hold_full_training(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, strategy="fedavg")
    text = recipe.read_text().replace("memory_budget: 40MB", "memory_budget: 10KB")
    recipe.write_text(text)
    inventory = write_inventory(tmp_path, DEVICES)
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(inventory),
                       "--run-dir", str(tmp_path / "run"))
    assert proc.wait(timeout=120) == 3  # ExitCode.INFEASIBLE
    error = last_json(tmp_path)
    assert "strict FedAvg excludes every device" in error["error"]
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("agent*.pid"))


def test_cli_errors_are_one_line_json_with_exit_codes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ftte_cli.cli import app

    def ftte(*args: str) -> tuple[int, dict]:
        done = CliRunner().invoke(app, ["train", *args, "--format", "json"])
        return done.exit_code, json.loads(done.stdout)

    recipe = write_recipe(tmp_path)
    inventory = write_inventory(tmp_path, DEVICES)
    code, doc = ftte("--recipe", str(recipe))
    assert code == 2 and "--inventory" in doc["error"]
    code, doc = ftte("--recipe", str(recipe), "--inventory", str(inventory), "--strategy", "sgd")
    assert code == 2 and "sgd" in doc["error"]
    code, doc = ftte("--recipe", str(recipe), "--inventory", str(inventory), "--limit", "nope")
    assert code == 2 and "nope" in doc["error"]
    code, doc = ftte("--resume", str(tmp_path))
    assert code == 1 and "manifest.json" in doc["error"]
    code, doc = ftte("--recipe", str(recipe), "--inventory", str(inventory), "--direct", "x")
    assert code == 2 and "HOST:PORT" in doc["error"]
