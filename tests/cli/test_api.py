"""The public API (ftte_cli/api.py) in process: documented errors, simulate's run read back by
read_run and report, inventory and device selection, and silence (a fresh interpreter's import
and `ftte plan`'s JSON compared with api.plan: test_api_processes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.trainkit import write_recipe

from ftte_cli import api


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
