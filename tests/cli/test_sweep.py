"""`ftte sweep` and `ftte report --compare`: the grid, pooling over seeds, usage errors (the
sweep on a real testbed is in test_sweep_testbed.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.trainkit import write_recipe

from ftte_cli import api
from ftte_cli.config.recipe import load_recipe
from ftte_cli.errors import ConfigError
from ftte_cli.sweep.compare import compare, stat
from ftte_cli.sweep.grid import apply, expand, make_spec, parse_axis
from ftte_cli.sweep.runner import RunRecord, RunStatus

# ---- grid and pooling -----------------------------------------------------------------------


def test_grid_expands_strategies_axes_and_seeds_in_a_stable_order() -> None:
    spec = make_spec("ftte,fedbuff", "1,2", ["strategy.buffer_size=2,3"])
    ids = [r.run_id for r in expand(spec)]
    assert ids == ["ftte-buffer_size_2-seed1", "ftte-buffer_size_2-seed2",
                   "ftte-buffer_size_3-seed1", "ftte-buffer_size_3-seed2",
                   "fedbuff-buffer_size_2-seed1", "fedbuff-buffer_size_2-seed2",
                   "fedbuff-buffer_size_3-seed1", "fedbuff-buffer_size_3-seed2"]


def test_apply_sets_strategy_seed_and_overrides(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    run = expand(make_spec("fedbuff", "7", ["strategy.buffer_size=3", "train.lr=0.1"]))[0]
    out = apply(recipe, run)
    assert (out.strategy.name, out.seed, out.strategy.buffer_size, out.train.lr) == \
        ("fedbuff", 7, 3, 0.1)


@pytest.mark.parametrize("text, message", [
    ("strategy.buffer_size", "expected SECTION.KEY=V1,V2"),
    ("seed=1,2", "expected SECTION.KEY"),
    ("strategy.name=ftte", "use --strategies"),
])
def test_bad_set_options_name_the_option(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_axis(text)


def test_unknown_key_and_bad_value_name_the_key(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(ConfigError, match="strategy.bufer_size: unknown key 'bufer_size'"):
        apply(recipe, expand(make_spec("ftte", "1", ["strategy.bufer_size=2"]))[0])
    with pytest.raises(ConfigError, match="buffer_size"):
        apply(recipe, expand(make_spec("ftte", "1", ["strategy.buffer_size=0"]))[0])


def _record(seed: int, t: float | None, status: RunStatus = RunStatus.ok, **kw: Any) -> RunRecord:
    return RunRecord(run_id=f"ftte-seed{seed}", group="ftte", strategy="ftte", seed=seed,
                     overrides={}, status=status, run_dir="x", time_to_target=t, **kw)


def test_compare_pools_seeds_and_counts_failures_and_misses() -> None:
    rows = compare([_record(1, 10.0, final_accuracy=0.8, peak_memory_by_class={"pi4": 100}),
                    _record(2, 14.0, final_accuracy=0.9, peak_memory_by_class={"pi4": 300}),
                    _record(3, None, final_accuracy=0.5),
                    _record(4, None, RunStatus.failed, error="boom")])
    (row,) = rows
    assert (row.runs, row.failed, row.reached) == (4, 1, 2)
    assert row.time_to_target.mean == pytest.approx(12.0)
    assert row.time_to_target.spread == pytest.approx(2 ** 0.5 * 2)  # sample sd of 10, 14
    assert row.final_accuracy.n == 3
    assert row.peak_memory_by_class["pi4"].mean == pytest.approx(200)
    assert stat([None]).mean is None


# ---- CLI usage errors -----------------------------------------------------------------------


def test_usage_errors_are_json_with_exit_code_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ftte_cli.cli import app

    recipe = write_recipe(tmp_path)
    runner = CliRunner()
    cases = [("--strategies", "ftte,fedsgd"), ("--seeds", "one"), ("--set", "nokey")]
    for flag, value in cases:
        res = runner.invoke(app, ["sweep", "-r", str(recipe), "--simulate", flag, value,
                                  "--out", str(tmp_path / "s"), "--format", "json"])
        assert res.exit_code == 2, res.output
        assert flag in json.loads(res.stdout)["error"]
    res = runner.invoke(app, ["sweep", "--resume", str(tmp_path), "--format", "json"])
    assert res.exit_code == 2 and "not a sweep directory" in json.loads(res.stdout)["error"]
    res = runner.invoke(app, ["report", "--format", "json"])
    assert res.exit_code == 2 and "--compare" in json.loads(res.stdout)["error"]


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """Strict FedAvg cannot run when no simulated client holds full training: that run fails,
    the FTTE run beside it still finishes, and both are in the comparison."""
    recipe = write_recipe(tmp_path, target=0.5, max_versions=3,
                          extra="sim: {clients: 3, memory_mb: [1, 1]}")
    text = recipe.read_text().replace("memory_budget: 40MB", "memory_budget: 1.5MB")
    recipe.write_text(text)
    result = api.sweep(api.SweepOptions(out=tmp_path / "s", recipe=recipe, simulate=True,
                                        grid=api.grid("ftte,fedavg", "1")))
    assert [(r.strategy, r.status.value) for r in result.records] == \
        [("ftte", "ok"), ("fedavg", "failed")]
    assert "baseline_memory strict" in (result.failed[0].error or "")
    rows = {g.group: g for g in result.comparison}
    assert (rows["ftte"].failed, rows["fedavg"].failed) == (0, 1)
    again = api.sweep(api.SweepOptions(out=tmp_path / "s", resume=True))
    assert again.ran == [] and again.skipped == ["ftte-seed1", "fedavg-seed1"]
    from typer.testing import CliRunner

    from ftte_cli.cli import app

    res = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path / "s"), "--format", "json"])
    assert res.exit_code == 1, res.output  # a failed run makes the sweep exit non-zero
    doc = json.loads(res.stdout)
    assert doc["ran"] == [] and [r["status"] for r in doc["runs"]] == ["ok", "failed"]
    res = CliRunner().invoke(app, ["report", str(tmp_path / "s")])
    assert res.exit_code == 2 and "a sweep folder" in res.output
