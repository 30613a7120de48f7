"""`ftte plan` on the repository's full-size har.yaml: at a fifth of full training's memory
the plan trains more than the head, with micro-batches. The small recipe's exit codes, JSON and
saved plans are in test_plan_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.config.recipe import load_recipe
from ftte_cli.engine.models import build_model

pytestmark = pytest.mark.slow

def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["plan", *args])
    return result.exit_code, result.stdout


def test_har_recipe_at_20_percent_of_full_trains_more_than_the_head() -> None:
    recipe = str(Path(__file__).parents[2] / "recipes" / "har.yaml")
    code, out = _run("--recipe", recipe, "--budget", "1GB", "--format", "json")
    assert code == 0, out
    full = json.loads(out)["memory"]["full"]
    code, out = _run("--recipe", recipe, "--budget", str(full // 5), "--format", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["memory"]["plan"] <= full // 5 and doc["units"], doc  # more than the head
    har = load_recipe(recipe)
    head = build_model(har.model, (9, 128), 6).head
    assert doc["trainable_params"]["plan"] > head.weight.numel() + head.bias.numel()
    assert doc["micro_batch"] is not None and doc["micro_batch"] < har.train.batch_size
