"""TensorBoard export: the event files of simulate and train-shaped runs read back with
TensorBoard's own reader, and several runs overlaying in one logdir (the missing extra:
test_tensorboard_extra.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.simkit import TINY
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.rundir.store import read_jsonl
from ftte_cli.rundir.train import RunDir

accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
runner = CliRunner()


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _simulate(tmp_path: Path, out: str, logdir: Path, seed: str) -> dict:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY % ("1GB", 0.0))
    res = runner.invoke(app, ["simulate", "--recipe", str(recipe), "--clients", "4",
                              "--strategies", "ftte,fedavg", "--until", "limit", "--seed", seed,
                              "--out", str(tmp_path / out), "--tensorboard", str(logdir),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    return dict(json.loads(res.stdout))


def test_simulate_scalars_read_back_and_runs_overlay(tmp_path: Path) -> None:
    logdir = tmp_path / "tb"
    doc = _simulate(tmp_path, "sim-a", logdir, "1")
    assert doc["tensorboard"] == [str(logdir / "sim-a" / "ftte"), str(logdir / "sim-a" / "fedavg")]
    for s in doc["strategies"]:
        got = _scalars(logdir / "sim-a" / s["strategy"])
        evals = [r for r in read_jsonl(tmp_path / "sim-a" / s["strategy"] / "metrics.jsonl")]
        assert [v for _, v in got["accuracy/test"]] == pytest.approx(
            [r["accuracy"] for r in evals], abs=1e-6)
        assert [step for step, _ in got["accuracy/test"]] == [r["version"] for r in evals]
        assert [v for _, v in got["loss/test"]] == pytest.approx([r["loss"] for r in evals],
                                                                  rel=1e-5)
        assert got["updates/accepted"] == [(s["versions"], pytest.approx(s["accepted"]))]
        assert got["energy/total_j"][0][1] == pytest.approx(s["energy"]["total_j"], rel=1e-5)
        assert sum(v for _, v in got["staleness/count"]) == s["accepted"]
    _simulate(tmp_path, "sim-b", logdir, "2")  # a second run in the same logdir
    assert sorted(p.name for p in logdir.iterdir()) == ["sim-a", "sim-b"]
    assert "accuracy/test" in _scalars(logdir / "sim-b" / "ftte")


def test_report_exports_a_train_run_with_updates_memory_and_energy(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "train-1")
    run.write_manifest({"kind": "train", "strategy": "ftte", "devices": ["pi4"]})
    for v, acc in enumerate([0.4, 0.7], start=1):
        run.metric({"t": 5.0 * v, "version": v, "accuracy": acc, "loss": 2.0 - acc})
    run.event({"t": 4.0, "kind": "update_accepted", "device": "pi4", "version": 1,
               "staleness": 0, "energy_j": 1.5, "energy_source": "estimated"})
    run.event({"t": 6.0, "kind": "update_rejected", "device": "pi4", "energy_j": 0.5})
    run.event({"t": 9.0, "kind": "update_accepted", "device": "pi4", "version": 2,
               "staleness": 1, "energy_j": 2.0, "energy_source": "estimated"})
    run.write_summary({"strategy": "ftte", "versions": 2, "devices": [
        {"name": "pi4", "accepted": 2, "rejected": 1, "peak_memory": 300 * 2**20,
         "energy_j": 4.0, "energy_estimated": True}]})
    run.close()
    logdir = tmp_path / "tb"
    res = runner.invoke(app, ["report", str(run.path), "--tensorboard", str(logdir),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    (folder,) = json.loads(res.stdout)["tensorboard"]
    got = _scalars(Path(folder))
    assert got["updates/accepted"] == [(1, 1.0), (2, 2.0)]
    assert got["updates/dropped"] == [(1, 1.0)]
    assert got["staleness/update"] == [(1, 0.0), (2, 1.0)]
    assert got["energy/cumulative_j"] == [(1, 1.5), (1, 2.0), (2, 4.0)]
    assert got["device/pi4/peak_memory_mib"] == [(2, 300.0)]
    assert got["device/pi4/energy_j"] == [(2, 4.0)]
    assert got["accuracy/test"] == [(1, pytest.approx(0.4)), (2, pytest.approx(0.7))]
