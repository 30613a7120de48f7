"""The memory budget and the profiles cache as formulas and records, no testbed: probe output
parsing, the tightest ceiling, the runtime cost, fleet overrides, cached profiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.errors import ConfigError
from ftte_cli.fleet import budget as bud
from ftte_cli.fleet.profile import ProbeFailed, ProfileRequest, parse_probe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "har.yaml"


runner = CliRunner()


def test_parse_probe_rejects_missing_or_failed_output() -> None:
    with pytest.raises(ProbeFailed, match="no result"):
        parse_probe("Traceback: boom\n")
    with pytest.raises(ProbeFailed, match="failed on the device: OSError"):
        parse_probe('FTTE-PROBE {"error": "OSError: x"}\n')
    assert parse_probe('noise\nFTTE-PROBE {"arch": "aarch64"}\n') == {"arch": "aarch64"}


MiB = 2**20


def test_device_budget_takes_the_tightest_ceiling_and_ignores_swap() -> None:
    b = bud.device_budget("pi", mem_available=900 * MiB, cgroup_limit=448 * MiB,
                          inventory_cap=512 * MiB, baseline=230 * MiB, margin=4 * MiB)
    assert b.limited_by == bud.Limit.cgroup and b.usable_bytes == (448 - 230 - 4) * MiB
    b = bud.device_budget("jet", 300 * MiB, None, 512 * MiB, 230 * MiB, 0)
    assert b.limited_by == bud.Limit.mem_available and b.usable_bytes == 70 * MiB
    rec = {"name": "x", "mem_available_bytes": 2000 * MiB, "swap_total_bytes": 10**12,
           "inventory_cap_bytes": 600 * MiB, "baseline_rss_bytes": 200 * MiB}
    assert bud.budget_from_record(rec, 0).usable_bytes == 400 * MiB  # swap never counts


def test_baseline_is_counted_in_the_currency_of_the_binding_ceiling() -> None:
    # the cgroup limit binds: its charge (here without shared pages loaded elsewhere) counts
    b = bud.device_budget("pi", 900 * MiB, 448 * MiB, None, 230 * MiB, 0, cgroup_baseline=150 * MiB)
    assert b.usable_bytes == (448 - 150) * MiB and b.baseline_bytes == 150 * MiB
    # MemAvailable binds: resident memory counts, whatever the cgroup says
    b = bud.device_budget("pi", 300 * MiB, 448 * MiB, None, 230 * MiB, 0, cgroup_baseline=150 * MiB)
    assert b.usable_bytes == 70 * MiB


def test_budget_subtracts_the_runtime_cost_of_a_training_step() -> None:
    b = bud.device_budget("pi", 900 * MiB, 448 * MiB, None, 230 * MiB, 4 * MiB, 50 * MiB)
    assert b.usable_bytes == (448 - 230 - 50 - 4) * MiB and b.runtime_bytes == 50 * MiB
    rec = {"name": "x", "mem_available_bytes": 600 * MiB, "baseline_rss_bytes": 200 * MiB,
           "runtime_overhead_bytes": 30 * MiB}
    assert bud.budget_from_record(rec, 0).usable_bytes == 370 * MiB


def test_fleet_budget_min_override_and_headroom() -> None:
    records = {
        "a": {"mem_available_bytes": 1000 * MiB, "baseline_rss_bytes": 200 * MiB},
        "b": {"mem_available_bytes": 500 * MiB, "cgroup_mem_limit_bytes": 400 * MiB,
              "baseline_rss_bytes": 200 * MiB},
    }
    fb = bud.recipe_budget(records, "0MB")
    assert (fb.m_min, fb.bound_by, fb.overridden) == (200 * MiB, "b", False)
    rows = bud.headroom(fb, ftte_bytes=50 * MiB, full_bytes=300 * MiB)
    assert [(h.name, h.fits_ftte, h.fits_full) for h in rows] == [("a", True, True),
                                                                   ("b", True, False)]
    assert rows[1].full_headroom == -100 * MiB
    over = bud.recipe_budget(records, "4MiB", memory_budget="2MB")
    assert over.m_min == 2_000_000 and over.overridden and over.bound_by is None
    with pytest.raises(ConfigError, match="no profile for c"):
        bud.recipe_budget(records, 0, names=["a", "c"])


def test_load_profiles_accepts_list_and_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"name": "a", "mem_available_bytes": 1}]))
    assert bud.load_profiles(path)["a"]["mem_available_bytes"] == 1
    path.write_text(bud.dump_profiles({"b": {"name": "b", "rtt_s": 0.1}}))
    assert bud.load_profiles(path) == {"b": {"name": "b", "rtt_s": 0.1}}
    path.write_text("[1,")
    with pytest.raises(ConfigError, match="p.json: not JSON"):
        bud.load_profiles(path)
    assert bud.load_profiles(tmp_path / "missing.json") == {}


def test_probe_parses_as_python_3_9() -> None:
    """The probe runs on the device's own python: 3.9 grammar, stdlib only at module level."""
    import ast

    from ftte_cli.fleet import probe

    source = Path(probe.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    top = {alias.name.split(".")[0] for node in tree.body
           if isinstance(node, (ast.Import, ast.ImportFrom))
           for alias in (node.names if isinstance(node, ast.Import)
                         else [ast.alias(node.module or "")])}
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top


def test_inventory_budget_from_cached_profiles(tmp_path: Path) -> None:
    from ftte_cli.config.recipe import load_recipe

    inv = tmp_path / "lab.yaml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {
        "pi": {"ansible_host": "10.0.0.2", "ftte_mem_cap_mb": 300},
        "jet": {"ansible_host": "10.0.0.3"}}}}, sort_keys=False))
    recipe = load_recipe(RECIPE)
    with pytest.raises(ConfigError, match="no profiles yet"):
        bud.inventory_budget(inv, recipe)
    bud.profiles_path(inv).parent.mkdir()
    bud.profiles_path(inv).write_text(bud.dump_profiles({
        "pi": {"name": "pi", "mem_available_bytes": 400 * MiB, "inventory_cap_bytes": 300 * MiB,
               "baseline_rss_bytes": 200 * MiB},
        "jet": {"name": "jet", "mem_available_bytes": 900 * MiB,
                "baseline_rss_bytes": 200 * MiB}}))
    fb = bud.inventory_budget(inv, recipe)
    assert fb.bound_by == "pi" and fb.m_min == 96 * MiB  # 300 - 200 - 4 MiB margin
    assert bud.inventory_budget(inv, recipe, limit="jet").m_min == 696 * MiB
    assert bud.inventory_budget(inv, recipe, override="1MiB").m_min == MiB
    data = bud.headroom_json(fb, bud.headroom(fb, 10 * MiB, 500 * MiB))
    assert data["devices"][0]["fits_full"] is False and data["m_min_bytes"] == 96 * MiB
    rows = bud.headroom_rows(data)
    assert [r[0] for r in rows] == ["pi", "jet"]
    assert [r[-1] for r in rows] == ["EXCLUDED", "included"]
    assert rows[0][2] == "inventory_cap" and rows[0][4].startswith("+")


def test_cached_record_is_reused_only_when_it_answers_the_request() -> None:
    from datetime import datetime, timedelta, timezone

    from ftte_cli.config.recipe import load_recipe
    from ftte_cli.fleet.profile import _reusable

    now = datetime.now(timezone.utc)
    fresh = {"profiled_at": now.isoformat(), "sec_per_sample_fwd": None}
    old = {"profiled_at": (now - timedelta(hours=2)).isoformat()}
    har = load_recipe(RECIPE)
    assert _reusable(fresh, ProfileRequest(), 3600)
    assert not _reusable(old, ProfileRequest(), 3600)
    assert not _reusable(fresh, ProfileRequest(recipe=har, benchmark=True), 3600)
    assert not _reusable({**fresh, "torch_version": "2.1", "baseline_note": "import torch only"},
                         ProfileRequest(recipe=har), 3600)
    benched = {**fresh, "sec_per_sample_fwd": 1e-4, "bench_model": "har_cnn",
               "torch_version": "2.1", "baseline_note": "import torch + har_cnn",
               "runtime_overhead_bytes": 20 * 2**20}
    assert _reusable(benched, ProfileRequest(recipe=har, benchmark=True), 3600)
    assert not _reusable({**benched, "bench_model": "small_cnn"},
                         ProfileRequest(recipe=har, benchmark=True), 3600)
    without_step = {k: v for k, v in benched.items() if k != "runtime_overhead_bytes"}
    assert not _reusable(without_step, ProfileRequest(recipe=har), 3600)  # from an older probe


def test_plan_with_inventory_uses_fleet_budget_and_shows_headroom(tmp_path: Path) -> None:
    """`ftte plan --inventory`: M_min from the tightest profile; full FedAvg would drop it."""
    recipe = tmp_path / "har.yaml"
    recipe.write_text(RECIPE.read_text().replace("windows: 10000", "windows: 1500")
                      .replace("method: contribution", "method: gradnorm")
                      .replace("width: 3.0", "width: 1.0").replace("batch_size: 32",
                                                                  "batch_size: 16")
                      .replace("init: pretrain", "init: random"))
    inv = tmp_path / "lab.yaml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"pi": {"ansible_host": "10.0.0.2"},
                                                     "jet": {"ansible_host": "10.0.0.3"}}}},
                                  sort_keys=False))
    bud.profiles_path(inv).parent.mkdir()
    bud.profiles_path(inv).write_text(bud.dump_profiles({
        "pi": {"name": "pi", "mem_available_bytes": 300 * MiB, "baseline_rss_bytes": 294 * MiB},
        "jet": {"name": "jet", "mem_available_bytes": 900 * MiB,
                "baseline_rss_bytes": 230 * MiB}}))
    res = runner.invoke(app, ["plan", "--recipe", str(recipe), "--inventory", str(inv),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["budget_bytes"] == 2 * MiB and "pi" in data["budget_source"]  # 300-294-4 MiB
    fleet = {d["name"]: d for d in data["fleet"]["devices"]}
    assert fleet["pi"]["fits_ftte"] and fleet["jet"]["fits_full"]
    assert data["memory"]["plan"] <= 2 * MiB < data["memory"]["full"]
    assert not fleet["pi"]["fits_full"]  # strict FedAvg would exclude the Pi
