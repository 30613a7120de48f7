"""A 2-strategy x 2-seed `ftte sweep` on a 3-device emulated testbed, SIGKILLed after its first
run, resumed (only the missing runs run), and compared with its --simulate twin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers.testbed import Testbed
from helpers.trainkit import FTTE, env, kill_group, wait_for, write_recipe

from ftte_cli import api
from ftte_cli.sweep.compare import compare_runs

pytestmark = pytest.mark.slow


def _sweep(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    out = open(folder / "sweep.out", "wb")  # noqa: SIM115 - closed with the process
    err = open(folder / "sweep.err", "ab")  # noqa: SIM115
    return subprocess.Popen([*FTTE, "sweep", *args, "--format", "json"], cwd=folder, env=env(),
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _finished(sweep_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in (sweep_dir / "runs").glob("*/record.json"))


def test_fleet_sweep_killed_resumed_and_compared_with_its_simulation(
        tmp_path: Path, testbed: Testbed) -> None:
    recipe = write_recipe(tmp_path, target=0.5, max_versions=12, time_limit=90.0)
    names = ",".join(testbed.by_class(c).name for c in ("pi4", "jetson-nano", "phone"))
    fleet, sim = tmp_path / "fleet", tmp_path / "sim"
    grid = ["--strategies", "ftte,fedbuff", "--seeds", "1,2"]
    common = ["-r", str(recipe), "-i", str(testbed.inventory), "--limit", names, *grid]

    proc = _sweep(tmp_path, *common, "--out", str(fleet), "--offline-after", "20")
    first = wait_for(lambda: _finished(fleet), 300, "the first run of the sweep")
    kill_group(proc)  # SIGKILL midway: no chance to clean up
    proc.wait(timeout=30)
    assert first == ["ftte-seed1"], first

    proc = _sweep(tmp_path, "--resume", str(fleet))
    assert proc.wait(timeout=500) == 0, (tmp_path / "sweep.err").read_text()[-3000:]
    doc = json.loads((tmp_path / "sweep.out").read_text())
    assert doc["skipped"] == ["ftte-seed1"]
    assert doc["ran"] == ["ftte-seed2", "fedbuff-seed1", "fedbuff-seed2"]
    assert [r["status"] for r in doc["runs"]] == ["ok"] * 4, doc["runs"]
    groups = {g["group"]: g for g in doc["comparison"]}
    assert set(groups) == {"ftte", "fedbuff"}
    for g in groups.values():
        assert g["reached"] >= 1, g
        assert g["time_to_target"]["mean"] > 0
        assert set(g["peak_memory_by_class"]) == {"pi4", "jetson-nano", "phone"}
    for plot in doc["plots"]:
        assert Path(plot).stat().st_size > 1000

    twin = api.sweep(api.SweepOptions(  # the same grid in the simulator, through the API
        out=sim, recipe=recipe, inventory=testbed.inventory, limit=names,
        grid=api.grid("ftte,fedbuff", "1,2"), simulate=True))
    assert [r.status.value for r in twin.records] == ["ok"] * 4
    result = compare_runs(fleet, sim)
    assert result.ratio_label == "simulated / measured"
    assert [r.group for r in result.rows] == ["ftte", "fedbuff"]
    for r in result.rows:
        assert r.a_time_to_target is not None and r.b_time_to_target is not None
        assert r.ratio == pytest.approx(r.b_time_to_target / r.a_time_to_target)
    cmp = subprocess.run([*FTTE, "report", "--compare", str(fleet), str(sim)], cwd=tmp_path,
                         env={**env(), "COLUMNS": "200"}, capture_output=True, text=True,
                         timeout=120)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert "simulated / measured" in cmp.stdout
    for r in result.rows:  # one printed line per strategy with its ratio
        line = next(x for x in cmp.stdout.splitlines() if f" {r.group} " in x)
        assert f"{r.ratio:.2f}x" in line, cmp.stdout
