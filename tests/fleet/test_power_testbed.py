"""Battery and temperature end to end on the emulated testbed: each device's power.json (named by
$FTTE_POWER_FILE in its SSH sessions) is read by the probe and by the agent; a device on battery
under a `charging: true` recipe trains nothing until it is plugged in, and the run shows it
waiting (events.jsonl and the server's snapshot), never offline."""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.testbed import Testbed
from helpers.trainkit import events, last_json, start_train, wait_for, write_recipe
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.fleet.profile import ProfileRequest, profile_fleet
from ftte_cli.fleet.ssh import SshOptions
from ftte_cli.testbed.lifecycle import power_file

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture
def unplugged(testbed: Testbed) -> Iterator[tuple[str, Path]]:
    """The pi4 emulated on battery at 30%; its power file is removed afterwards."""
    name = testbed.by_class("pi4").name
    path = power_file(testbed.dir, name)
    path.write_text(json.dumps({"battery": 0.3, "charging": False, "temperature_c": 48.5}))
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)


def test_profile_reads_the_emulated_battery_and_leaves_the_others_missing(
        testbed: Testbed, unplugged: tuple[str, Path]) -> None:
    name, _ = unplugged
    other = testbed.by_class("phone").name
    results = profile_fleet(testbed.devices(f"{name},{other}"), SshOptions(), ProfileRequest(),
                            {}, None)
    assert results.exit_code() == 0, {n: r.detail for n, r in results.results.items()}
    pi4, phone = results[name].value, results[other].value
    assert (pi4.battery, pi4.charging, pi4.temperature_c) == (0.3, False, 48.5)
    assert "emulated" in pi4.power_sources
    assert phone.battery is None and "emulated" not in phone.power_sources  # missing, not 0


def _status(run_dir: Path, device: str) -> dict[str, Any]:
    """The server's snapshot (what the dashboard renders) through GET /v1/status."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    token_file = next(Path(".ftte").glob(f"bundles/*/{device}/token")).resolve()
    req = urllib.request.Request(manifest["server_url"] + "/v1/status", headers={
        "Authorization": f"Bearer {token_file.read_text().strip()}", "X-Ftte-Device": device})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def test_a_device_on_battery_waits_until_plugged_in(
        tmp_path: Path, testbed: Testbed, unplugged: tuple[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, path = unplugged
    other = testbed.by_class("jetson-nano").name
    recipe = write_recipe(tmp_path, target=0.99, max_versions=14, time_limit=150.0,
                          extra="devices: {require: {charging: true, temperature_max_c: 80},"
                                " recheck_s: 0.5}")
    run_dir = tmp_path / "run"
    board = ("--tensorboard", str(tmp_path / "tb")) if HAVE_TENSORBOARD else ()
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(testbed.inventory),
                       "--limit", f"{name},{other}", "--run-dir", str(run_dir),
                       "--offline-after", "6", *board)
    monkeypatch.chdir(tmp_path)  # the bundles (tokens) are under tmp_path/.ftte
    try:
        waiting = wait_for(lambda: events(run_dir, "device_waiting"), 120, "device_waiting")
        assert waiting[0]["device"] == name and waiting[0]["detail"] == "on battery 30%"
        assert waiting[0]["power"]["battery"] == 0.3
        wait_for(lambda: [e for e in events(run_dir, "update_accepted")
                          if e["device"] == other], 120, f"an update from {other}")
        snap = _status(run_dir, name)
        rows = {d["name"]: d for d in snap["devices"]}
        assert rows[name]["status"] == "paused", rows[name]
        assert rows[name]["waiting_reason"] == "on battery 30%" and rows[name]["accepted"] == 0
        assert (rows[name]["battery"], rows[name]["charging"]) == (0.3, False)
        path.write_text(json.dumps({"battery": 0.3, "charging": True, "temperature_c": 48.5}))
        wait_for(lambda: events(run_dir, "device_ready"), 60, "device_ready")
        wait_for(lambda: [e for e in events(run_dir, "update_accepted") if e["device"] == name],
                 120, f"an update from {name} once plugged in")
        rows = {d["name"]: d for d in _status(run_dir, name)["devices"]}
        # Its update may have been the run's last version: "done" is then the honest status.
        assert rows[name]["status"] in ("idle", "training", "done"), rows[name]
        assert rows[name]["charging"] is True
    finally:
        code = proc.wait(timeout=300)
    assert code == 0, (tmp_path / "train.err").read_text()[-3000:]
    log = events(run_dir)
    mine = [e["kind"] for e in log if e.get("device") == name]
    ready = mine.index("device_ready")
    assert "update_accepted" not in mine[:ready]  # nothing trained while on battery
    assert "device_offline" not in mine  # waiting is not offline
    assert last_json(tmp_path)["stop_reason"] in ("max_versions", "target_accuracy")
    # Energy: no device of the testbed has a power sensor, so every job is estimated from its
    # CPU time and its class's figure, and the report says so.
    report = CliRunner().invoke(app, ["report", str(run_dir), "--format", "json"])
    assert report.exit_code == 0, report.output
    (row,) = json.loads(report.stdout)["rows"]
    assert row["energy_label"] == "estimated" and row["energy_per_version_j"] > 0
    assert row["energy_j"] == pytest.approx(row["energy_per_version_j"] * row["versions"])
    energy = {d["name"]: d for d in row["devices"]}
    assert energy[name]["energy_j"] > 0 and energy[other]["energy_j"] > 0
    assert energy[name]["energy_estimated"] and energy[other]["energy_estimated"]
    if HAVE_TENSORBOARD:  # `ftte train --tensorboard`: the same scalars as `ftte report`
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb" / "run" / "ftte"))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "accuracy/test" in tags and "energy/cumulative_j" in tags
        assert acc.Scalars(f"device/{name}/energy_j")[0].value == pytest.approx(
            energy[name]["energy_j"], rel=1e-5)


def test_testbed_power_command_writes_what_each_ssh_session_sees(
        testbed: Testbed) -> None:
    name = testbed.by_class("phone").name
    cli = CliRunner()
    res = cli.invoke(app, ["testbed", "power", name, "--battery", "0.25", "--on-battery",
                           "--temperature", "71", "--dir", str(testbed.dir)])
    assert res.exit_code == 0, res.output
    try:
        seen = cli.invoke(app, ["exec", "-i", str(testbed.inventory), "-l", name, "--format",
                                "json", "--", 'cat "$FTTE_POWER_FILE"'])
        assert seen.exit_code == 0, seen.output
        (row,) = json.loads(seen.stdout)["devices"]
        assert json.loads(row["stdout"]) == {"battery": 0.25, "charging": False,
                                             "temperature_c": 71.0}
    finally:
        res = cli.invoke(app, ["testbed", "power", name, "--clear", "--dir", str(testbed.dir)])
    assert res.exit_code == 0 and not power_file(testbed.dir, name).exists()
    bad = cli.invoke(app, ["testbed", "power", "toaster-9", "--charging", "--dir",
                           str(testbed.dir)])
    assert bad.exit_code == 2 and "no device 'toaster-9'" in bad.output
    assert cli.invoke(app, ["testbed", "power", name, "--dir", str(testbed.dir)]).exit_code == 2
