"""`ftte report` on small train and simulate run directories written with the real writers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.engine.metrics import EvalPoint, RunMetrics, summarize
from ftte_cli.rundir.jsonable import to_jsonable
from ftte_cli.rundir.reader import load_run, report_rows
from ftte_cli.rundir.sim import RunWriter
from ftte_cli.rundir.store import write_json
from ftte_cli.rundir.train import RunDir

runner = CliRunner()
TARGET = 0.9
DEVICES = ("pi4-a", "pizero-b", "jetson-c")


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _metrics(accs: list[float], step: float) -> RunMetrics:
    m = RunMetrics()
    for v, acc in enumerate(accs, start=1):
        m.evals.append(EvalPoint(v * step, v, acc, 1 - acc, v * 1000))
        m.version_times.append(v * step)
    m.staleness.update({0: 5, 1: 7, 2: 3, 4: 1})
    m.dropped.update({"too_stale": 2})
    m.accepted = 16
    m.bytes_down, m.bytes_up = 4000, 4000
    return m


@pytest.fixture
def train_run(tmp_path: Path) -> Path:
    run = RunDir(tmp_path / "train-1")
    run.write_manifest({"kind": "train", "strategy": "ftte", "devices": list(DEVICES),
                        "recipe": {"stop": {"target_accuracy": TARGET}}})
    accs = [0.3, 0.55, 0.7, 0.82, 0.91, 0.93]
    for v, acc in enumerate(accs, start=1):
        run.metric({"t": 10.0 * v, "version": v, "accepted": 3 * v, "bytes_total": 1000 * v})
        run.metric({"t": 10.0 * v + 1, "version": v, "accepted": 3 * v,
                    "bytes_total": 1000 * v, "accuracy": acc, "loss": 1 - acc})
    for i, dev in enumerate(DEVICES):
        run.event({"t": 1.0, "kind": "device_registered", "device": dev, "detail": ""})
        for k in range(i + 2):
            run.event({"t": 5.0 + k, "kind": "update_accepted", "device": dev, "detail": "",
                       "staleness": k, "version": k})
    run.event({"t": 9.0, "kind": "update_rejected", "device": "pizero-b", "detail": "non_finite"})
    summary = summarize(_metrics(accs, 10.0), strategy="ftte", target=TARGET, duration=61.0,
                        versions=6, memory_per_device=3 * 2**20)
    devices = [{"name": d, "status": "done", "accepted": i + 2, "rejected": int(d == "pizero-b"),
                "peak_memory": (150 + 40 * i) * 2**20, "memory_budget": (200 + 100 * i) * 2**20}
               for i, d in enumerate(DEVICES)]
    run.write_summary({**to_jsonable(summary), "stop_reason": "target", "devices": devices})
    run.close()
    return run.path


@pytest.fixture
def sim_run(tmp_path: Path) -> Path:
    """The layout of rundir/sim.py: <strategy>/metrics.jsonl, summary.json, manifest.json."""
    path = tmp_path / "sim-1"
    writer = RunWriter(path)
    rows = []
    for name, accs, step in (("ftte", [0.4, 0.7, 0.92], 5.0), ("fedavg", [0.3, 0.6, 0.8], 40.0)):
        m = _metrics(accs, step)
        for e in m.evals:
            writer.on_eval(name, e)
        summary = to_jsonable(summarize(m, strategy=name, target=TARGET, duration=step * 3,
                                        versions=3))
        rows.append({**{k: v for k, v in summary.items() if k != "target_accuracy"},
                     "dropped_total": 2, "clients": 100, "excluded_clients": 0})
    # (RunWriter.finish needs a whole SimResult; its JSON-lines files are flushed per line.)
    write_json(path / "summary.json", {"seed": 1, "target_accuracy": TARGET, "strategies": rows})
    write_json(path / "manifest.json", {"kind": "simulate", "strategies": ["ftte", "fedavg"],
                                        "recipe": {"stop": {"target_accuracy": TARGET}}})
    return path


def test_train_run_rows_and_plots(train_run: Path) -> None:
    result = runner.invoke(app, ["report", str(train_run), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "train" and doc["target"] == TARGET
    (row,) = doc["rows"]
    assert row["series"] == "ftte" and row["stop_reason"] == "target"
    assert row["time_to_target"] == 50.0 and row["version_at_target"] == 5
    assert row["best_accuracy"] == 0.93 and row["staleness_max"] == 4
    assert [d["name"] for d in row["devices"]] == list(DEVICES)
    names = sorted(Path(p).name for p in doc["plots"])
    assert names == ["accuracy_vs_time.png", "accuracy_vs_version.png", "devices.png",
                     "staleness_hist.png"]
    for p in doc["plots"]:
        width, height = _png_size(Path(p))
        assert width >= 800 and height >= 450
        assert Path(p).parent == train_run / "report"


def test_train_run_table_output(train_run: Path) -> None:
    result = runner.invoke(app, ["report", str(train_run)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in ("ftte", "target", "50.0s", "93.0%", "1.06/4", "too_stale=2", "3.00 MiB"):
        assert text in result.stdout
    lines = result.stdout.splitlines()
    assert any("pizero-b" in ln and "190.00 MiB" in ln and "300.00 MiB" in ln for ln in lines)


def test_simulate_run_has_one_series_per_strategy(sim_run: Path) -> None:
    report = load_run(sim_run)
    assert report.kind == "simulate" and report.target == TARGET
    rows = {r["series"]: r for r in report_rows(report)}
    assert list(rows) == ["ftte", "fedavg"]  # the order the strategies were run in
    assert rows["ftte"]["time_to_target"] == 15.0
    assert rows["fedavg"]["time_to_target"] is None  # never reached 90%
    result = runner.invoke(app, ["report", str(sim_run), "--format", "json"])
    assert result.exit_code == 0, result.output
    plots = {Path(p).name for p in json.loads(result.stdout)["plots"]}
    assert "devices.png" not in plots and "accuracy_vs_time.png" in plots


def test_events_alone_give_staleness_and_device_counts(train_run: Path) -> None:
    (train_run / "summary.json").unlink()  # a crashed run: no summary yet
    (row,) = report_rows(load_run(train_run))
    assert row["accepted"] == 2 + 3 + 4
    assert {d["name"]: (d["accepted"], d["rejected"]) for d in row["devices"]} == {
        "pi4-a": (2, 0), "pizero-b": (3, 1), "jetson-c": (4, 0)}
    assert row["time_to_target"] == 51.0  # from the metrics: first evaluation at >= 90%


def test_not_a_run_dir_is_a_usage_error_in_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path), "--format", "json"])
    assert result.exit_code == 2
    assert "no metrics.jsonl" in json.loads(result.stdout)["error"]
