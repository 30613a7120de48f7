"""Battery, temperature and power: the device-side readers on sysfs-shaped trees, the eligibility
rules, the server's paused state over real sockets, the dashboard, the recipe keys."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from helpers.loopback import Http, make_coordinator, make_server
from rich.console import Console

from ftte_cli.client import power, wire
from ftte_cli.config.recipe import load_recipe
from ftte_cli.engine.coordinator import ClientState
from ftte_cli.errors import ConfigError
from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import DeviceRow, DeviceStatus, RunSnapshot, RunState
from ftte_cli.ui.dashboard import progress_line, render


def _files(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    return root


def test_power_supply_battery_mains_and_draw(tmp_path: Path) -> None:
    root = _files(tmp_path, {
        "BAT0/type": "Battery", "BAT0/capacity": "34", "BAT0/status": "Discharging",
        "BAT0/temp": "312", "BAT0/current_now": "500000", "BAT0/voltage_now": "4000000",
        "AC/type": "Mains", "AC/online": "0",
    })
    got = power.power_supply(str(root))
    assert got["battery"] == pytest.approx(0.34) and got["charging"] is False
    assert got["battery_temperature_c"] == pytest.approx(31.2)
    assert got["power_w"] == pytest.approx(2.0)  # 0.5 A x 4 V
    (root / "AC/online").write_text("1\n")  # plugged in, battery still says Discharging
    assert power.power_supply(str(root))["charging"] is True


def test_missing_readings_are_missing_not_zero(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert power.power_supply(str(tmp_path / "none")) == {}
    assert power.thermal_max(str(tmp_path / "none")) is None
    assert power.jetson_power((str(tmp_path / "none/*"),)) is None
    _files(tmp_path, {"BAT1/type": "Battery", "BAT1/status": "Full"})  # no capacity file
    got = power.power_supply(str(tmp_path))
    assert "battery" not in got and got["charging"] is True and "power_w" not in got
    monkeypatch.delenv(power.POWER_FILE_ENV, raising=False)
    monkeypatch.setattr(power, "SUPPLY_ROOT", str(tmp_path / "none"))
    state = power.read_power()
    for key in power.FIELDS:
        assert key in state and state[key] != 0  # None (or a real reading), never a made-up 0


def test_thermal_zones_and_jetson_rails(tmp_path: Path) -> None:
    zones = _files(tmp_path / "thermal", {"thermal_zone0/temp": "41500",
                                          "thermal_zone1/temp": "67250"})
    assert power.thermal_max(str(zones)) == pytest.approx(67.25)
    ina = _files(tmp_path / "i2c", {
        "6-0040/iio:device0/in_power0_input": "1500", "6-0040/iio:device0/rail_name_0": "GPU",
        "6-0040/iio:device0/in_power1_input": "2250", "6-0040/iio:device0/rail_name_1": "CPU",
    })
    got = power.jetson_power((str(ina / "*"),))
    assert got is not None and got["rails_w"] == {"GPU": 1.5, "CPU": 2.25}
    assert got["power_w"] == pytest.approx(3.75)


def test_the_emulation_file_overrides_what_was_measured(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "power.json"
    path.write_text(json.dumps({"battery": 0.3, "charging": False, "temperature_c": 55.0,
                                "unknown": 1}))
    monkeypatch.setenv(power.POWER_FILE_ENV, str(path))
    state = power.read_power()
    assert (state["battery"], state["charging"], state["temperature_c"]) == (0.3, False, 55.0)
    assert "emulated" in state["sources"] and "unknown" not in state
    path.write_text("not json")
    assert "emulated" not in power.read_power()["sources"]


@pytest.mark.parametrize(("require", "state", "reason"), [
    ({"charging": True}, {"battery": 0.34, "charging": False}, "on battery 34%"),
    ({"charging": True}, {"battery": None, "charging": False}, "on battery"),
    ({"charging": True}, {"battery": 0.34, "charging": True}, None),
    ({"charging": True}, {"battery": None, "charging": None}, None),  # no battery: mains
    ({"battery_min": 0.5}, {"battery": 0.34, "charging": True}, "battery 34% < 50%"),
    ({"battery_min": 0.5}, {"battery": None}, None),
    ({"temperature_max_c": 70}, {"temperature_c": 75.4}, "temperature 75 C > 70 C"),
    ({"temperature_max_c": 70}, {"temperature_c": 69.0}, None),
    ({}, {"battery": 0.01, "charging": False, "temperature_c": 99.0}, None),
])
def test_check_says_why_a_device_waits(require: dict, state: dict, reason: str | None) -> None:
    assert power.check(require, state) == reason


def test_recipe_devices_require_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("devices: {require: {charging: true, battery_min: 0.5, "
                    "temperature_max_c: 70}}\n")
    req = load_recipe(path).devices.require
    assert (req.charging, req.battery_min, req.temperature_max_c) == (True, 0.5, 70.0)
    path.write_text("devices: {require: {battery_min: 50}}\n")
    with pytest.raises(ConfigError, match=r"devices\.require\.battery_min: must be in \[0, 1\]"):
        load_recipe(path)


def _row(st: ServerThread, name: str) -> DeviceRow:
    return next(d for d in st.server.snapshot().devices if d.name == name)


def _beat(dev: Http, body: dict) -> int:
    return dev.call("POST", "/heartbeat", wire.dumps(body))[0]


def test_a_waiting_device_is_paused_not_offline_and_comes_back() -> None:
    tokens = {"a": "tok-a" * 8, "b": "tok-b" * 8}
    events: list[dict] = []
    coord = make_coordinator(list(tokens), buffer_size=1)
    with ServerThread(make_server(coord, tokens, events, offline_after=1.5,
                                  start_devices=2)) as st:
        a, b = Http(st.url, "a", tokens["a"]), Http(st.url, "b", tokens["b"])
        a.register()
        b.register()
        reading = {"battery": 0.34, "charging": False, "temperature_c": 40.0, "power_w": None,
                   "throttled": None}
        assert _beat(a, {"state": "waiting", "reason": "on battery 34%", "power": reading}) == 200
        row = _row(st, "a")
        assert row.status == DeviceStatus.paused and row.waiting_reason == "on battery 34%"
        assert (row.battery, row.charging, row.temperature_c) == (0.34, False, 40.0)
        # its slot went back: the coordinator dispatches nothing to it while it waits
        assert st.server.call(lambda c: c.client_state("a")) == ClientState.offline
        for _ in range(4):  # heartbeats keep it online past offline_after
            time.sleep(0.6)
            assert _beat(a, {"state": "waiting", "reason": "on battery 34%",
                             "power": reading}) == 200
        assert _row(st, "a").status == DeviceStatus.paused
        waiting = [e for e in events if e["kind"] == "device_waiting"]
        assert len(waiting) == 1 and waiting[0]["detail"] == "on battery 34%"
        assert waiting[0]["power"]["battery"] == 0.34
        assert not [e for e in events if e["kind"] == "device_offline" and e["device"] == "a"]
        plugged = dict(reading, charging=True)
        assert _beat(a, {"state": "idle", "power": plugged}) == 200
        assert _row(st, "a").status in (DeviceStatus.idle, DeviceStatus.training)
        assert [e["kind"] for e in events if e["device"] == "a"][-1] == "device_ready"
        status, job = a.task(wait=5)
        assert status == 200 and job is not None  # it is dispatched to again


def _snapshot(*rows: DeviceRow) -> RunSnapshot:
    return RunSnapshot(run_id="r", strategy="ftte", state=RunState.running, elapsed=3.0,
                       version=1, buffer_fill=0, buffer_size=2, updates_per_min=0.0,
                       staleness_mean=None, staleness_max=None, accepted=0, devices=rows)


def test_dashboard_shows_battery_temperature_and_why_a_device_waits() -> None:
    snap = _snapshot(
        DeviceRow("phone", DeviceStatus.paused, battery=0.34, charging=False,
                  temperature_c=38.6, waiting_reason="on battery 34%"),
        DeviceRow("pi4", DeviceStatus.training, battery=0.8, charging=True, temperature_c=61.2),
        DeviceRow("pi0", DeviceStatus.idle))
    console = Console(width=160, color_system=None, record=True, file=io.StringIO())
    console.print(render(snap))
    text = console.export_text()
    assert "battery" in text and "temp" in text
    phone = next(line for line in text.splitlines() if "│ phone" in line)
    assert "waiting: on battery 34%" in phone and "34%" in phone and "39C" in phone
    pi4 = next(line for line in text.splitlines() if "│ pi4" in line)
    assert "80% charging" in pi4 and "61C" in pi4
    pi0 = next(line for line in text.splitlines() if "│ pi0" in line)
    assert pi0.rstrip(" │").endswith("-")  # nothing reported: missing, not 0%
    assert progress_line(snap).endswith("devices 2/3 online, 1 waiting")
    plain = Console(width=160, color_system=None, record=True, file=io.StringIO())
    plain.print(render(_snapshot(DeviceRow("pi0", DeviceStatus.idle))))
    assert "battery" not in plain.export_text()  # no device reports power: no columns
