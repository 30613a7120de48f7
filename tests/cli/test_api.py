"""The public API (ftte_cli/api.py): cheap to import, every listed name resolves, typed records
equal to what the commands print as JSON, documented errors, and silence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.trainkit import FTTE, env, write_recipe

from ftte_cli import api


@pytest.mark.slow
def test_import_is_cheap_and_every_public_name_resolves() -> None:
    code = "import sys, ftte_cli.api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"  # torch loads only when a torch-backed name is used
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError):
        api.NoSuchName  # noqa: B018


@pytest.mark.slow
def test_plan_is_the_json_ftte_plan_prints(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, extra="sim: {clients: 3}")
    result = api.plan(recipe, budget="2MB")
    assert capsys.readouterr() == ("", "")  # the API never prints
    assert isinstance(result.plan, api.Plan)
    assert result.budget_bytes == 2_000_000 and result.budget_source == "--budget"
    assert result.plan.estimated_bytes is not None
    assert result.plan.estimated_bytes <= result.budget_bytes
    cli = subprocess.run([*FTTE, "plan", "-r", str(recipe), "--budget", "2MB", "--format",
                          "json"], cwd=tmp_path, env=env(), capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == json.loads(json.dumps(result.report))


def test_documented_errors(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, extra="sim: {clients: 3}")
    with pytest.raises(api.BudgetInfeasible) as info:
        api.plan(recipe, budget="1KB")
    assert info.value.exit_code == api.ExitCode.INFEASIBLE
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: x}\n")
    with pytest.raises(api.ConfigError, match="bad.yaml.*batch_size"):
        api.load_recipe(bad)
    with pytest.raises(api.ConfigError, match="no metrics"):
        api.read_run(tmp_path)
    with pytest.raises(api.ConfigError, match="--strategies"):
        api.grid("ftte,nope", "1")


def test_simulate_writes_a_run_that_read_run_and_report_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, target=0.5, max_versions=4,
                          extra="sim: {clients: 3}")
    out = tmp_path / "sim"
    result = api.simulate(recipe, strategies=("ftte", "fedbuff"), out=out)
    assert [r.name for r in result.results] == ["ftte", "fedbuff"]
    run = api.read_run(out)
    assert isinstance(run, api.RunReport) and run.kind == "simulate"
    assert [s.name for s in run.series] == ["ftte", "fedbuff"]
    rep = api.report(out)
    assert [r["series"] for r in rep.rows] == ["ftte", "fedbuff"]
    assert all(p.exists() for p in rep.plots)
    for row, res in zip(rep.rows, result.results):
        assert row["final_accuracy"] == pytest.approx(res.summary.final_accuracy)
    same = api.compare_runs(out, out)  # plain run dirs work too; neither side is measured
    assert same.ratio_label == "B / A" and [r.group for r in same.rows] == ["ftte", "fedbuff"]
    for r, res in zip(same.rows, result.results):
        assert r.a_time_to_target == res.summary.time_to_target
        assert r.ratio is None if r.a_time_to_target is None else r.ratio == pytest.approx(1.0)
    assert capsys.readouterr() == ("", "")


def test_inventory_and_select_devices(tmp_path: Path) -> None:
    from helpers.trainkit import write_inventory

    inv_path = write_inventory(tmp_path, ["a", "b", "c"])
    inv = api.load_inventory(inv_path)
    assert list(inv.devices) == ["a", "b", "c"]
    _inv, chosen = api.select_devices(inv_path, "a,c")
    assert [d.name for d in chosen] == ["a", "c"]
    with pytest.raises(api.ConfigError, match="zzz"):
        api.select_devices(inv_path, "zzz")
