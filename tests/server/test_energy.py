"""Energy per job and per version: the device's figure (measured or estimated), the wire, the
server's totals, the report of a train run and the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.loopback import Http, make_coordinator, make_server
from helpers.simkit import TINY
from rich.console import Console
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.client import power, wire
from ftte_cli.commands import report as report_cmd
from ftte_cli.engine.metrics import EvalPoint, RunMetrics, summarize
from ftte_cli.rundir.jsonable import to_jsonable
from ftte_cli.rundir.reader import load_run, report_rows
from ftte_cli.rundir.train import RunDir
from ftte_cli.server.runner import ServerThread
from ftte_cli.sim.runner import sim_energy

runner = CliRunner()


def test_job_energy_is_measured_with_a_sensor_else_estimated() -> None:
    assert power.job_energy(2.0, 3.0, 4.0, 6.0, 0.9) == (15.0, "measured")  # 5 W x 3 s
    assert power.job_energy(2.0, 3.0, None, 6.0, 0.9) == (pytest.approx(1.8), "estimated")
    assert power.watts_per_cpu("pi_zero_2") == power.watts_per_cpu("pi-zero-2") == 0.6
    assert power.watts_per_cpu(None) == power.watts_per_cpu("toaster") == 2.0


def test_the_update_carries_energy_and_older_bodies_decode_without_it() -> None:
    delta = {"w": torch.ones(3)}
    msg = wire.UpdateMessage("j1", 2, 10, 0.5, None, delta, cpu_seconds=1.25, energy_j=1.125,
                             energy_source="estimated")
    back = wire.decode_update(wire.encode_update(msg), 1 << 20)
    assert (back.cpu_seconds, back.energy_j, back.energy_source) == (1.25, 1.125, "estimated")
    plain = wire.decode_update(wire.encode_update(wire.UpdateMessage("j2", 2, 10, 0.5, None,
                                                                     delta)), 1 << 20)
    assert plain.energy_j is None and plain.energy_source == ""


def test_the_server_totals_energy_per_device_and_logs_it_per_update() -> None:
    tokens = {"a": "tok-a" * 8}
    events: list[dict] = []
    with ServerThread(make_server(make_coordinator(["a"], buffer_size=1), tokens, events,
                                  start_devices=1)) as st:
        dev = Http(st.url, "a", tokens["a"])
        dev.register()
        for energy in (1.5, 2.25):
            status, job = dev.task(wait=5)
            assert status == 200 and job is not None
            delta = {k: torch.full_like(v, 0.01) for k, v in job.subset.items()}
            msg = wire.UpdateMessage(job.job_id, job.version, 10, 0.1, 1000, delta,
                                     cpu_seconds=energy / 0.9, energy_j=energy,
                                     energy_source="estimated")
            status, _ = dev.call("POST", "/update", wire.encode_update(msg),
                                 {"Content-Type": wire.TENSOR_TYPE})
            assert status == 200
        row = next(d for d in st.server.snapshot().devices if d.name == "a")
        assert row.energy_j == pytest.approx(3.75) and row.energy_estimated
        logged = [e["energy_j"] for e in events if e["kind"] == "update_accepted"]
        assert logged == [1.5, 2.25]


def test_report_shows_energy_per_device_per_version_and_to_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "train-1")
    run.write_manifest({"kind": "train", "strategy": "ftte", "devices": ["pi4", "phone"],
                        "recipe": {"stop": {"target_accuracy": 0.8}}})
    for v, acc in enumerate([0.5, 0.85, 0.9], start=1):
        run.metric({"t": 10.0 * v, "version": v, "accuracy": acc, "loss": 1 - acc})
        run.event({"t": 10.0 * v - 1, "kind": "update_accepted", "device": "pi4", "version": v,
                   "staleness": 0, "energy_j": 4.0, "energy_source": "estimated"})
    run.event({"t": 15.0, "kind": "update_rejected", "device": "phone", "energy_j": 2.0,
               "energy_source": "measured"})
    m = RunMetrics()
    for v, acc in enumerate([0.5, 0.85, 0.9], start=1):
        m.evals.append(EvalPoint(10.0 * v, v, acc, 1 - acc, 0))
    summary = to_jsonable(summarize(m, strategy="ftte", target=0.8, duration=31.0, versions=3))
    run.write_summary({**summary, "devices": [
        {"name": "pi4", "accepted": 3, "energy_j": 12.0, "energy_estimated": True},
        {"name": "phone", "rejected": 1, "energy_j": 2.0, "energy_estimated": False}]})
    run.close()
    (row,) = report_rows(load_run(run.path))
    assert row["energy_j"] == 14.0 and row["energy_per_version_j"] == pytest.approx(14 / 3)
    assert row["energy_to_target_j"] == 10.0  # two pi4 jobs and the phone's, by t=20
    assert row["energy_label"] == "estimated"  # one part had no sensor
    monkeypatch.setattr(report_cmd, "console", Console(width=200, no_color=True))
    res = runner.invoke(app, ["report", str(run.path)])
    assert res.exit_code == 0, res.output
    assert "4.67 J (estimated)" in res.stdout and "10 J (estimated)" in res.stdout
    assert "12 J (estimated)" in res.stdout and "2 J (measured)" in res.stdout


def test_sim_energy_charges_compute_seconds_by_arrival_time() -> None:
    jobs = [(1.0, 2.0), (3.0, 4.0), (9.0, 8.0)]
    got = sim_energy(jobs, end=5.0, to_target=3.0, versions=2)
    assert got == {"total_j": 6.0, "per_version_j": 3.0, "to_target_j": 6.0, "jobs": 2,
                   "label": "estimated"}
    assert sim_energy([], 5.0, None, 0)["per_version_j"] is None


def test_simulate_compares_strategies_on_energy(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY % ("1GB", 0.0))
    out = tmp_path / "run"
    res = runner.invoke(app, ["simulate", "--recipe", str(recipe), "--clients", "4",
                              "--strategies", "ftte,fedavg", "--until", "limit", "--out",
                              str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    energy = {s["strategy"]: s["energy"] for s in doc["strategies"]}
    for e in energy.values():
        assert e["label"] == "estimated" and e["total_j"] > 0 and e["jobs"] > 0
        assert e["per_version_j"] == pytest.approx(e["total_j"] / next(
            s["versions"] for s in doc["strategies"] if s["energy"] is e))
    rows = {r["series"]: r for r in report_rows(load_run(out))}
    assert rows["ftte"]["energy_label"] == "estimated"
    assert rows["ftte"]["energy_j"] == pytest.approx(energy["ftte"]["total_j"])
