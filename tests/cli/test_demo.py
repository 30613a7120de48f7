"""`ftte demo` end to end on its own emulated testbed (a smaller recipe keeps CI time down).

The full README job (`ftte demo`, 4 devices, recipes/har.yaml to 90%) takes about 4 minutes
here; these tests run the same code with 2 devices and a small, quick recipe.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.testbed import state as testbed_state

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _small_recipe(tmp: Path, **overrides: dict) -> Path:
    raw = yaml.safe_load((REPO / "recipes" / "har.yaml").read_text())
    raw["name"] = "har-demo-test"
    raw["data"].update(windows=2400, subjects=8)
    raw["strategy"].update(buffer_size=2, max_concurrency=4)
    raw["plan"].update(method="gradnorm")
    raw["stop"].update(target_accuracy=0.6, max_versions=40, time_limit=150)
    for section, values in overrides.items():
        raw[section].update(values)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _left_on_testbed(directory: Path) -> list[str]:
    """Processes whose command line mentions the testbed folder (sshd, agents)."""
    out = subprocess.run(["pgrep", "-af", str(directory)], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def test_demo_runs_every_step_and_takes_the_testbed_down(tmp_path: Path,
                                                         monkeypatch: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]  # runs/ and .ftte/ land here
    recipe = _small_recipe(tmp_path)
    bed = tmp_path / "bed"
    result = runner.invoke(app, ["demo", "--devices", "2", "--recipe", str(recipe),
                                 "--dir", str(bed), "--format", "json"])
    doc = json.loads(result.stdout)
    steps = {s["step"]: s for s in doc["steps"]}
    assert result.exit_code == 0, json.dumps(doc["steps"], indent=1)
    assert list(steps) == ["testbed up", "profile", "plan", "deploy", "train", "report",
                           "testbed down"]
    assert all(s["status"] == "ok" for s in steps.values())
    assert "2 devices: changed=2" in steps["deploy"]["detail"]
    assert "target 60% reached" in steps["train"]["detail"]
    summary = doc["summary"]  # the closing summary: plan vs full, FedAvg's exclusions, accuracy
    assert 0 < summary["trainable_share"] <= 1 and summary["target_reached"]
    assert summary["plan_bytes"] <= summary["full_training_bytes"]
    assert isinstance(summary["fedavg_excluded"], dict) and summary["best_accuracy"] >= 0.6
    report = Path(doc["run_dir"]) / "report"
    assert {p.name for p in report.glob("*.png")} >= {"accuracy_vs_time.png", "devices.png"}
    assert testbed_state.load(bed) is None  # state cleared: everything it made is gone
    assert _left_on_testbed(bed) == []


def test_a_failed_step_skips_the_rest_and_still_takes_the_testbed_down(
        tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    recipe = _small_recipe(tmp_path, plan={"memory_budget": "1KB"})  # not even the head fits
    bed = tmp_path / "bed"
    result = runner.invoke(app, ["demo", "--devices", "1", "--recipe", str(recipe),
                                 "--dir", str(bed), "--format", "json"])
    assert result.exit_code == 1
    steps = {s["step"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["plan"]["status"] == "failed" and "budget" in steps["plan"]["detail"].lower()
    assert [steps[s]["status"] for s in ("deploy", "train", "report")] == ["skipped"] * 3
    assert steps["testbed down"]["status"] == "ok"
    assert testbed_state.load(bed) is None and _left_on_testbed(bed) == []
