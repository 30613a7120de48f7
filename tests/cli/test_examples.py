"""The scripts in examples/ run against the emulated testbed (tiny recipe, few versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.testbed import Testbed
from helpers.trainkit import ROOT, env, write_recipe

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

EXAMPLES = ROOT / "examples"


def _run(script: str, folder: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=folder,
                          env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def _two(testbed: Testbed) -> str:
    return ",".join(testbed.by_class(c).name for c in ("pi4", "phone"))


def test_profile_then_plan_reports_every_device(tmp_path: Path,
                                                testbed: Testbed) -> None:
    recipe = write_recipe(tmp_path).read_text().replace("memory_budget: 40MB, ", "")
    (tmp_path / "recipe.yaml").write_text(recipe)
    out = _run("profile_then_plan.py", tmp_path, "-i", str(testbed.inventory), "-r",
               "recipe.yaml")
    assert "budget M_min = " in out and "bound by " in out, out
    for dev in testbed.state.devices:
        line = next(x for x in out.splitlines() if x.strip().startswith(dev.name))
        assert "plan fits" in line, out  # the plan fits M_min, so every device


def test_compare_strategies_trains_each_strategy(tmp_path: Path,
                                                 testbed: Testbed) -> None:
    write_recipe(tmp_path, target=0.5, max_versions=6, time_limit=60.0)
    out = _run("compare_strategies.py", tmp_path, "-i", str(testbed.inventory), "-r",
               "recipe.yaml", "--strategies", "ftte,fedbuff", "--limit", _two(testbed),
               "--out", "runs")
    lines = out.splitlines()
    assert [x.split()[0] for x in lines[1:]] == ["ftte", "fedbuff"], out
    for name in ("ftte", "fedbuff"):
        assert (tmp_path / "runs" / name / "summary.json").exists()


def test_sweep_buffer_sizes_on_the_fleet(tmp_path: Path, testbed: Testbed) -> None:
    write_recipe(tmp_path, target=0.5, max_versions=6, time_limit=60.0)
    out = _run("sweep_buffer_sizes.py", tmp_path, "-i", str(testbed.inventory), "-r",
               "recipe.yaml", "--sizes", "1,2", "--limit", _two(testbed), "--out", "sweep")
    rows = [x.split() for x in out.splitlines()[1:3]]
    assert [r[0] for r in rows] == ["1", "2"], out
    assert (tmp_path / "sweep" / "comparison.json").exists()


def test_fabric_collect_fetches_a_file_from_every_device(tmp_path: Path,
                                                         testbed: Testbed) -> None:
    out = _run("fabric_collect.py", tmp_path, "-i", str(testbed.inventory), "/etc/hostname",
               "--out", "got", timeout=120)
    for dev in testbed.state.devices:
        assert f"{dev.name}: fetched " in out, out
        assert (tmp_path / "got" / dev.name / "hostname").read_text().strip()
    proc = subprocess.run([sys.executable, str(EXAMPLES / "fabric_collect.py"), "-i",
                           str(testbed.inventory), "/nonexistent"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "failed: cat: " in proc.stdout, proc.stdout + proc.stderr
