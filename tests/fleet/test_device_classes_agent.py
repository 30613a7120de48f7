"""Per-device-class settings as the real agent applies them: zero-1's bundle, built from the
inventory's `ftte_train`, run by its agent against a dead server (threads and device taken from
the bundle, `cuda` without CUDA refused). Parsing and planning are in test_device_classes.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.trainkit import write_class_inventory, write_recipe

from ftte_cli.config.inventory import load_inventory
from ftte_cli.config.recipe import load_recipe

pytestmark = pytest.mark.slow


def _agent(tmp_path: Path, train_vars: str) -> subprocess.CompletedProcess[str]:
    """Run zero-1's real agent (its bundle built from the inventory) against a dead server."""
    from ftte_cli.engine.plan import dense_plan
    from ftte_cli.fleet.bundle import build_bundles, initial_model

    inv = load_inventory(write_class_inventory(tmp_path, train_vars))
    recipe = load_recipe(write_recipe(tmp_path))
    model = initial_model(recipe, (9, 128), 6)
    bundles = build_bundles(recipe, list(inv.devices.values()), dense_plan(model, "har_cnn"),
                            root=tmp_path / ".ftte")
    folder = bundles["zero-1"].path
    environ = {k: v for k, v in os.environ.items() if k != "FTTE_AGENT_THREADS"}
    return subprocess.run([sys.executable, str(folder / "ftte-agent.pyz"), "--bundle",
                           str(folder), "--server", "http://127.0.0.1:9", "--give-up-after",
                           "1"], capture_output=True, text=True, timeout=120, env=environ)


def test_agent_with_a_cuda_recipe_exits_2_naming_the_setting(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        return
    proc = _agent(tmp_path, "{device: cuda}")
    assert proc.returncode == 2, proc.stderr
    assert "train.device: cuda requested but" in proc.stderr


def test_agent_takes_threads_and_device_from_its_bundle(tmp_path: Path) -> None:
    proc = _agent(tmp_path, "{threads: 3, device: auto}")  # not the 2 CPUs here
    assert proc.returncode == 1, proc.stderr  # gave up on the dead server, as asked
    assert "3 torch threads, trains on cpu" in proc.stderr or torch.cuda.is_available(), \
        proc.stderr
