"""`ftte simulate` end to end on a tiny recipe: exit codes, parsed JSON, the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.simkit import TINY
from rich.console import Console
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.commands import simulate as simulate_cmd
from ftte_cli.errors import ExitCode
from ftte_cli.rundir.store import read_jsonl

runner = CliRunner()


def _recipe(tmp_path: Path, budget: str = "1GB") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % (budget, 0.0))
    return path


def test_json_summary_and_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["simulate", "--recipe", str(_recipe(tmp_path)), "--clients", "6",
                              "--stragglers", "0.5", "--strategies", "fedbuff,fedavg",
                              "--seed", "2", "--until", "limit", "--out", str(out),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [s["strategy"] for s in doc["strategies"]] == ["fedbuff", "fedavg"]
    assert doc["clients"] == 6 and doc["stragglers"] == 0.5 and doc["seed"] == 2
    fedbuff = doc["strategies"][0]
    assert fedbuff["versions"] == 6 and 0 <= fedbuff["final_accuracy"] <= 1
    assert fedbuff["memory_per_device"] == doc["full_training_bytes"]
    assert fedbuff["staleness_max"] >= 0 and fedbuff["dropped_total"] == 0
    assert (out / "manifest.json").exists() and (out / "accuracy.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["strategies"][1]["strategy"] == "fedavg"
    lines = read_jsonl(out / "fedbuff" / "metrics.jsonl")
    assert lines[0]["version"] == 0 and lines[-1]["version"] == 6
    # per strategy: the plan's share, memory vs full training, ratios against FedAvg
    assert fedbuff["trainable_fraction"] == 1.0 and fedbuff["memory_vs_full"] == 1.0
    assert fedbuff["vs_fedavg"]["memory_per_device"] == 1.0
    assert doc["strategies"][1]["vs_fedavg"]["memory_per_device"] == 1.0
    assert sum(doc["fleet"].values()) == 6 and "pi-zero-2w" in doc["fleet"]
    assert [ln["time"] for ln in lines] == sorted(ln["time"] for ln in lines)


def test_table_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate_cmd, "console", Console(width=200, no_color=True))
    res = runner.invoke(app, ["simulate", "--recipe", str(_recipe(tmp_path)), "--clients", "4",
                              "--strategies", "fedasync", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert any("to target" in ln and "payload" in ln and "stale" in ln for ln in lines)
    row = next(ln for ln in lines if "fedasync" in ln).split("│")
    assert "MiB" in row[5] and row[2].strip() == "-"  # tiny recipe: target 0.99 out of reach
    plan = [c.strip() for c in [ln for ln in lines if "fedasync" in ln][1].split("│")[1:-1]]
    # dense plan, nobody left out, no FedAvg in this run: no ratios
    assert plan == ["fedasync", "100.0%", "1.00x", "0", "-", "-", "-"]
    assert f"run directory: {tmp_path / 'r'}" in res.stdout


def test_bad_strategy_is_a_usage_error_in_json(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "--recipe", str(_recipe(tmp_path)), "--strategies",
                              "ftte,sgd", "--out", str(tmp_path / "r"), "--format", "json"])
    assert res.exit_code == ExitCode.USAGE
    assert "sgd" in json.loads(res.stdout)["error"]


def test_missing_recipe_names_the_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "--recipe", str(tmp_path / "nope.yaml"),
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == ExitCode.USAGE
    assert "nope.yaml" in res.output


def test_infeasible_budget_exits_3(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "--recipe", str(_recipe(tmp_path, "1KB")),
                              "--strategies", "ftte", "--out", str(tmp_path / "r"),
                              "--format", "json"])
    assert res.exit_code == ExitCode.INFEASIBLE, res.output
    assert "budget" in json.loads(res.stdout)["error"]


def test_fleet_profiles_replay(tmp_path: Path) -> None:
    fleet = tmp_path / "profiles.json"
    slow = {"name": "pi3", "usable_memory_bytes": 200_000_000, "sec_per_sample_fwd": 0.01,
            "sec_per_sample_bwd": 0.02, "bandwidth_bps": 1e6, "rtt_s": 0.05}
    fleet.write_text(json.dumps([slow, {**slow, "name": "pi5", "sec_per_sample_fwd": 0.001}]))
    out = tmp_path / "r"
    res = runner.invoke(app, ["simulate", "--recipe", str(_recipe(tmp_path, "null")),
                              "--clients", "4", "--stragglers", "0", "--strategies", "fedbuff",
                              "--fleet",
                              str(fleet), "--until", "limit", "--out", str(out),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["clients"] == 4 and doc["strategies"][0]["versions"] == 6
    # the budget comes from the smallest profile memory, which holds full training here
    assert doc["budget_bytes"] == 200_000_000
    assert json.loads((out / "manifest.json").read_text())["fleet"] == str(fleet)
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    res = runner.invoke(app, ["simulate", "--recipe", str(_recipe(tmp_path)), "--fleet", str(bad),
                              "--out", str(out), "--format", "json"])
    assert res.exit_code == ExitCode.USAGE and "bad.json" in json.loads(res.stdout)["error"]


def test_strict_fedavg_names_the_clients_it_left_out(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate_cmd, "console", Console(width=200, no_color=True))
    path = tmp_path / "small.yaml"
    text = TINY % ("1GB", 0.0)
    path.write_text(text.replace("return_after: 5}", "return_after: 5, memory_mb: [0.5, 5]}"))
    args = ["simulate", "--recipe", str(path), "--clients", "6", "--strategies",
            "fedbuff,fedavg", "--until", "limit", "--out", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    fedbuff, fedavg = doc["strategies"]
    full = doc["full_training_bytes"]
    assert fedbuff["excluded"] == [] and fedavg["excluded"]
    assert fedavg["excluded_clients"] == len(fedavg["excluded"]) == len(fedbuff["over_memory"])
    assert all(c["memory_bytes"] < full and c["device_class"] for c in fedavg["excluded"])
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    note = next(ln for ln in res.stdout.splitlines() if ln.startswith("note: fedavg"))
    assert note.startswith(f"note: fedavg: {len(fedavg['excluded'])} clients")
    assert "left out" in note and f"{fedavg['excluded'][0]['device_class']} (" in note
    kept = next(ln for ln in res.stdout.splitlines() if ln.startswith("note: fedbuff"))
    assert f"{len(fedbuff['over_memory'])} clients train although" in kept
    assert any(ln.startswith("fleet: ") for ln in res.stdout.splitlines())
