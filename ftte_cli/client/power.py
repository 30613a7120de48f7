"""Battery, charging, temperature, throttling and power draw of this device, and the recipe's
eligibility rules (`devices.require`) checked against them.

Device-side: Python 3.9, standard library only. The agent calls `read_power()` before each job
and sends it with its heartbeats; `ftte profile` ships this file's source with its probe and
records the same reading. Each platform offers a different part, so every field is read where it
exists and left None ("missing") where it does not, never reported as zero:

- Linux `/sys/class/power_supply`: a battery's capacity (%), status (Charging, Full,
  Discharging, Not charging) and temperature (tenths of a degree); a Mains/USB supply online
  means external power; `power_now` (uW) or `current_now` x `voltage_now` gives the draw.
- Thermal zones (`/sys/class/thermal/thermal_zone*/temp`, millidegrees): the hottest one.
- Raspberry Pi: the firmware's throttled flags (`vcgencmd get_throttled`), bit 2 = throttled
  now, bit 0 = under-voltage now, bit 3 = soft temperature limit.
- Jetson: the INA3221 rails under `/sys/bus/i2c/drivers/ina3221*/*/` (hwmon `in*_input` /
  `curr*_input`, or the older `iio:device*/in_power*_input` in mW); the sum is the board's draw.
- Termux on Android: `termux-battery-status` (JSON: percentage, plugged, status, temperature).
- Emulation: `$FTTE_POWER_FILE` names a JSON file whose keys (`battery` 0..1, `charging`,
  `temperature_c`, `power_w`, `throttled`) override what was measured; the emulated testbed sets
  it per device (`<testbed>/<device>/power.json`), so tests can "unplug" a device.

`check(require, state)` returns None when the device may train, else the one-line reason it
waits ("on battery 34%", "battery 34% < 50%", "temperature 75 C > 70 C"). A rule whose reading
is missing does not hold a device back (a Pi without a battery is on mains power).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

POWER_FILE_ENV = "FTTE_POWER_FILE"
SUPPLY_ROOT = "/sys/class/power_supply"
THERMAL_ROOT = "/sys/class/thermal"
JETSON_GLOBS = ("/sys/bus/i2c/drivers/ina3221*/*", "/sys/bus/i2c/drivers/ina3221x/*")
PI_THROTTLED_NOW = 0x4
PI_UNDERVOLT_NOW = 0x1
PI_SOFT_TEMP_NOW = 0x8
FIELDS = ("battery", "charging", "temperature_c", "power_w", "throttled")


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except (OSError, ValueError):
        return None


def _number(path: str) -> Optional[float]:
    raw = _read(path)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def power_supply(root: str = SUPPLY_ROOT) -> Dict[str, Any]:
    """Battery level, charging and temperature, external power and draw from power_supply."""
    out: Dict[str, Any] = {}
    external = None
    for supply in sorted(glob.glob(os.path.join(root, "*"))):
        kind = _read(os.path.join(supply, "type"))
        if kind in ("Mains", "USB", "USB_C", "USB_PD"):
            online = _number(os.path.join(supply, "online"))
            if online is not None:
                external = bool(online) or bool(external)
        elif kind == "Battery" and "battery" not in out:
            capacity = _number(os.path.join(supply, "capacity"))
            if capacity is not None:
                out["battery"] = max(0.0, min(capacity / 100.0, 1.0))
            status = _read(os.path.join(supply, "status"))
            if status:
                out["charging"] = status in ("Charging", "Full")
                out["battery_status"] = status
            temp = _number(os.path.join(supply, "temp"))
            if temp is not None:
                out["battery_temperature_c"] = temp / 10.0
            watts = _battery_watts(supply)
            if watts is not None:
                out["power_w"] = watts
            out["battery_source"] = "power_supply:" + os.path.basename(supply)
    if external is not None:
        out["external_power"] = external
        if out.get("charging") is None or external:
            out["charging"] = external or bool(out.get("charging"))
    return out


def _battery_watts(supply: str) -> Optional[float]:
    """Discharge (or charge) power in watts, from power_now or current_now x voltage_now."""
    power = _number(os.path.join(supply, "power_now"))
    if power is not None:
        return abs(power) / 1e6
    current = _number(os.path.join(supply, "current_now"))
    voltage = _number(os.path.join(supply, "voltage_now"))
    if current is not None and voltage is not None:
        return abs(current * voltage) / 1e12
    return None


def thermal_max(root: str = THERMAL_ROOT) -> Optional[float]:
    """The hottest thermal zone in degrees Celsius, None without any."""
    temps = []
    for zone in glob.glob(os.path.join(root, "thermal_zone*")):
        milli = _number(os.path.join(zone, "temp"))
        if milli is not None and milli > -273000:
            temps.append(milli / 1000.0)
    return max(temps) if temps else None


def pi_throttled(timeout: float = 2.0) -> Optional[Dict[str, Any]]:
    """The Pi firmware's throttled flags, None off a Pi (no vcgencmd)."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True,
                             timeout=timeout, check=False).stdout
        flags = int(out.strip().split("=", 1)[1], 16)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    return {"throttled": bool(flags & (PI_THROTTLED_NOW | PI_SOFT_TEMP_NOW)),
            "under_voltage": bool(flags & PI_UNDERVOLT_NOW), "throttled_flags": hex(flags)}


def jetson_power(globs: tuple = JETSON_GLOBS) -> Optional[Dict[str, Any]]:
    """The INA3221 rails (watts per rail and their sum), None without the sensor."""
    rails: Dict[str, float] = {}
    for pattern in globs:
        for dev in glob.glob(pattern):
            rails.update(_hwmon_rails(dev))
            for path in glob.glob(os.path.join(dev, "iio:device*", "in_power*_input")):
                mw = _number(path)
                if mw is not None:
                    label = _read(path.replace("in_power", "rail_name_").replace("_input", ""))
                    rails[label or os.path.basename(path)] = mw / 1000.0
    if not rails:
        return None
    return {"power_w": sum(rails.values()), "rails_w": rails}


def _hwmon_rails(dev: str) -> Dict[str, float]:
    """Newer L4T: hwmon in<N>_input (mV) x curr<N>_input (mA) per labelled channel."""
    rails = {}
    for volt in glob.glob(os.path.join(dev, "hwmon", "hwmon*", "in*_input")):
        n = os.path.basename(volt)[2:-len("_input")]
        mv, ma = _number(volt), _number(os.path.join(os.path.dirname(volt), f"curr{n}_input"))
        if mv is not None and ma is not None:
            label = _read(os.path.join(os.path.dirname(volt), f"in{n}_label")) or f"rail{n}"
            rails[label] = mv * ma / 1e6
    return rails


def termux_battery(timeout: float = 5.0) -> Optional[Dict[str, Any]]:
    """Termux:API's battery status on Android, None when the command is absent or fails."""
    if shutil.which("termux-battery-status") is None:
        return None
    try:
        out = subprocess.run(["termux-battery-status"], capture_output=True, text=True,
                             timeout=timeout, check=False).stdout
        data = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    result: Dict[str, Any] = {"battery_source": "termux-battery-status"}
    if isinstance(data.get("percentage"), (int, float)):
        result["battery"] = max(0.0, min(data["percentage"] / 100.0, 1.0))
    if data.get("plugged") is not None:
        result["charging"] = str(data["plugged"]).upper() not in ("UNPLUGGED", "FALSE")
    if isinstance(data.get("temperature"), (int, float)):
        result["battery_temperature_c"] = float(data["temperature"])
    return result


def emulated(path: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The overrides in `$FTTE_POWER_FILE` (only the known keys), None without the file."""
    path = path or os.environ.get(POWER_FILE_ENV)
    raw = _read(path) if path else None
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return {k: data[k] for k in FIELDS if isinstance(data, dict) and k in data}


def read_power() -> Dict[str, Any]:
    """Everything this device reports now; the five FIELDS always present (None: missing),
    `sources` says where each measured value came from."""
    state: Dict[str, Any] = {k: None for k in FIELDS}
    sources: List[str] = []
    supply = power_supply()
    if supply:
        state.update(supply)
        sources.append(str(supply.get("battery_source", "power_supply")))
    termux = termux_battery() if state["battery"] is None else None
    if termux:
        state.update(termux)
        sources.append("termux-battery-status")
    zone = thermal_max()
    if zone is not None:
        state["temperature_c"] = zone
        sources.append("thermal_zone")
    elif state.get("battery_temperature_c") is not None:
        state["temperature_c"] = state["battery_temperature_c"]
    for name, reading in (("vcgencmd", pi_throttled()), ("ina3221", jetson_power())):
        if reading:
            state.update(reading)
            sources.append(name)
    override = emulated()
    if override is not None:
        state.update(override)
        sources.append("emulated")
    state.pop("battery_source", None)
    state["sources"] = sources
    return state


# Rough extra draw of one busy CPU core, in watts, per device class: what `ftte` charges for a
# job's CPU time where no power sensor exists (reported as "estimated"). From public load figures
# (Pi Zero 2 W ~0.6 W per core over idle, Pi 4 ~0.9, Jetson Nano 10 W mode ~1.2, a phone's big
# core ~1.0, a laptop core ~5); names as the testbed and inventories spell them.
CLASS_WATTS_PER_CPU = {
    "pi-zero-2": 0.6, "pi-zero": 0.4, "pi": 0.9, "pi3": 0.8, "pi4": 0.9, "pi5": 1.5,
    "jetson-nano": 1.2, "jetson": 1.5, "phone": 1.0, "laptop": 5.0,
    # the simulator's device classes (sim/devices.py DEVICE_CLASSES)
    "pi-zero-2w": 0.6, "pi-3b": 0.8, "pi-4-2gb": 0.9, "pi-4-4gb": 0.9,
    "jetson-nano-4gb": 1.2, "phone-2gb": 0.8, "phone-4gb": 1.0,
}
DEFAULT_WATTS_PER_CPU = 2.0


def watts_per_cpu(device_class: Optional[str]) -> float:
    """The class's power figure (`pi_zero_2` and `pi-zero-2` alike), else the default."""
    key = (device_class or "").strip().lower().replace("_", "-")
    return CLASS_WATTS_PER_CPU.get(key, DEFAULT_WATTS_PER_CPU)


def job_energy(cpu_s: float, wall_s: float, watts_before: Optional[float],
               watts_after: Optional[float], figure: float) -> Tuple[float, str]:
    """(joules, "measured" | "estimated") of one job: the mean sensor reading over its wall time
    when the device has a power sensor, else its CPU time x the class figure."""
    if watts_before is not None and watts_after is not None:
        return (watts_before + watts_after) / 2.0 * wall_s, "measured"
    return cpu_s * figure, "estimated"


def check(require: Optional[Dict[str, Any]], state: Dict[str, Any]) -> Optional[str]:
    """None when `state` meets every rule of `require` (charging, battery_min, temperature_max_c),
    else the reason the device waits; missing readings never hold a device back."""
    rules = require or {}
    battery, charging, temp = state.get("battery"), state.get("charging"), state.get(
        "temperature_c")
    level = "" if battery is None else f" {battery * 100:.0f}%"
    if rules.get("charging") and charging is False:
        return "on battery" + level
    low = rules.get("battery_min")
    if low is not None and battery is not None and battery < float(low):
        return f"battery{level} < {float(low) * 100:.0f}%"
    hot = rules.get("temperature_max_c")
    if hot is not None and temp is not None and temp > float(hot):
        return f"temperature {temp:.0f} C > {float(hot):.0f} C"
    return None
