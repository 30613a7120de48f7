"""`ftte plan` end to end on a small synthetic HAR recipe: exit codes, JSON, saved plan files.

The full-size har.yaml at a fifth of full training's memory is in test_plan_har.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.engine.plan import load_plan
from ftte_cli.errors import ExitCode

RECIPE = """\
name: har-small
seed: 3
data: {dataset: synthetic_har, windows: 1200, subjects: 6, clients: 6, proxy_fraction: 0.1}
model: {name: har_cnn, width: 0.5}
train: {batch_size: 8, lr: 0.05}
plan: {method: contribution, proxy_steps: 3}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "har-small.yaml"
    path.write_text(RECIPE)
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["plan", *args])
    return result.exit_code, result.stdout


def test_json_plan_within_budget_and_saved(recipe: Path, tmp_path: Path) -> None:
    code, out = _run("--recipe", str(recipe), "--budget", "1GB", "--format", "json")
    full = json.loads(out)["memory"]["full"]
    budget = int(0.6 * full)
    code, out = _run("--recipe", str(recipe), "--budget", str(budget), "--format", "json",
                     "--out", str(tmp_path / "p"))
    assert code == 0, out
    doc = json.loads(out)
    assert doc["budget_bytes"] == budget and doc["method"] == "contribution"
    assert doc["memory"]["plan"] <= budget and doc["memory"]["full"] == full
    assert 0 < doc["payload"]["ratio"] < 1 and doc["units"]
    plan = load_plan(tmp_path / "p")
    assert plan.units == [u["unit"] for u in doc["units"]]
    assert plan.estimated_bytes == doc["memory"]["plan"]
    assert plan.payload_bytes == doc["payload"]["plan"]


def test_table_output_names_the_figures(recipe: Path) -> None:
    code, out = _run("--recipe", str(recipe), "--budget", "1MB")
    assert code == 0, out
    for word in ("training memory", "payload per job", "trainable params", "contribution",
                 "micro-batch"):
        assert word in out


def test_infeasible_budget_exits_3_with_smallest_budget(recipe: Path) -> None:
    code, out = _run("--recipe", str(recipe), "--budget", "10KB", "--format", "json")
    assert code == ExitCode.INFEASIBLE == 3
    doc = json.loads(out)
    assert doc["exit_code"] == 3 and "smallest budget that works is" in doc["error"]
    code, _ = _run("--recipe", str(recipe), "--budget", "10KB")
    assert code == 3


@pytest.mark.parametrize("args,needle", [
    (["--budget", "lots"], "--budget"),
    ([], "no memory budget"),
])
def test_bad_budget_is_a_usage_error(recipe: Path, args: list[str], needle: str) -> None:
    code, out = _run("--recipe", str(recipe), "--format", "json", *args)
    assert code == ExitCode.USAGE
    assert needle in json.loads(out)["error"]


def test_missing_recipe_names_the_file(tmp_path: Path) -> None:
    code, out = _run("--recipe", str(tmp_path / "nope.yaml"), "--budget", "1MB",
                     "--format", "json")
    assert code == ExitCode.USAGE and "nope.yaml" in json.loads(out)["error"]
