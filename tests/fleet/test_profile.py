"""`ftte profile` against the emulated testbed and the profiles it caches (the budget formulas are
in test_budget.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.testbed import Testbed
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode
from ftte_cli.fleet import budget as bud
from ftte_cli.fleet.profile import ProfileRequest, profile_fleet
from ftte_cli.fleet.ssh import Outcome, SshOptions
from ftte_cli.testbed.sshd import free_port
from ftte_cli.units import format_size

pytestmark = pytest.mark.slow

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="cgroup caps need root (CI is root)")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "har.yaml"
SIM_KEYS = ("name", "usable_memory_bytes", "sec_per_sample_fwd", "sec_per_sample_bwd",
            "bandwidth_bps", "rtt_s")
runner = CliRunner()


def _profile(*args: str) -> tuple[int, dict[str, Any]]:
    res = runner.invoke(app, ["profile", *args, "--format", "json"])
    return res.exit_code, json.loads(res.stdout)


def _by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in data["profiles"]}


@pytest.fixture(scope="module")
def profiled(testbed: Testbed) -> dict[str, Any]:
    """One plain profile of the whole testbed (baseline with the recipe's model)."""
    code, data = _profile("-i", str(testbed.inventory), "--recipe", str(RECIPE))
    assert code == 0, data
    return data


@needs_root
def test_profile_reports_each_memory_cap_within_5_percent(testbed: Testbed,
                                                          profiled: dict[str, Any]) -> None:
    profiles = _by_name(profiled)
    caps = {d.name: d.cgroup_limit_bytes for d in testbed.state.devices}
    assert len(set(caps.values())) == 4  # four different caps
    for dev in testbed.state.devices:  # each board's free memory, less torch's shared pages
        assert dev.cgroup_limit_bytes and dev.mem_cap_bytes
        assert dev.mem_cap_bytes - 200 * 2**20 < dev.cgroup_limit_bytes < dev.mem_cap_bytes
    for name, cap in caps.items():
        measured = profiles[name]["cgroup_mem_limit_bytes"]
        assert cap is not None and abs(measured - cap) <= 0.05 * cap, (name, measured, cap)
        assert profiles[name]["limited_by"] in ("cgroup", "inventory_cap")
    assert profiles["pi-zero-2-1"]["cpu_quota"] == pytest.approx(0.25)
    assert profiles["pi4-2"]["cpu_quota"] == pytest.approx(1.0)


def test_profile_record_fields_and_cache(testbed: Testbed,
                                         profiled: dict[str, Any]) -> None:
    assert [d["outcome"] for d in profiled["devices"]] == ["ok"] * 4
    cache = Path(profiled["cache"])
    assert cache == testbed.dir / ".ftte" / "profiles.json"
    records = bud.load_profiles(cache)
    assert list(json.loads(cache.read_text())) == ["devices"]
    assert set(records) == {d.name for d in testbed.state.devices}
    for rec in records.values():
        assert all(k in rec for k in SIM_KEYS)  # what `ftte simulate --fleet` replays
        assert rec["torch_version"] and rec["python_version"] == ".".join(
            map(str, sys.version_info[:3]))
        assert rec["baseline_note"] == "import torch + har_cnn"
        assert 100 * 2**20 < rec["baseline_rss_bytes"] < 600 * 2**20
        assert rec["mem_total_bytes"] >= rec["mem_available_bytes"] > 0
        assert rec["swap_total_bytes"] is not None and rec["disk_free_bytes"] > 0
        usable = (min(x for x in (rec["mem_available_bytes"], rec["cgroup_mem_limit_bytes"],
                                  rec["inventory_cap_bytes"]) if x is not None)
                  - _baseline(rec) - rec["runtime_overhead_bytes"] - rec["safety_margin_bytes"])
        assert rec["usable_memory_bytes"] == usable
        # one real training step costs the runtime more than its tensors: M_i counts it
        assert 2 * 2**20 < rec["runtime_overhead_bytes"] < 200 * 2**20, rec["runtime_note"]
        assert rec["runtime_step_peak_bytes"] >= (rec["baseline_rss_bytes"]
                                                  + rec["runtime_step_estimate_bytes"])


def _baseline(rec: dict[str, Any]) -> int:
    """The baseline M_i counts: the cgroup's charge against its limit, else resident memory."""
    if rec["limited_by"] == "cgroup" and rec["baseline_cgroup_bytes"] is not None:
        return int(rec["baseline_cgroup_bytes"])
    return int(rec["baseline_rss_bytes"])


def test_max_age_reuses_fresh_profiles(testbed: Testbed,
                                       profiled: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    start = time.monotonic()
    code, data = _profile("-i", str(testbed.inventory), "--recipe", str(RECIPE),
                          "--max-age", "3600", "--out", str(out))
    assert code == 0 and time.monotonic() - start < 5  # nobody was contacted
    assert all(d["detail"].startswith("cached") for d in data["devices"])
    assert set(bud.load_profiles(out)) == {d.name for d in testbed.state.devices}


@needs_root
def test_benchmark_quarter_cpu_device_is_3x_slower(testbed: Testbed) -> None:
    # One device at a time (--forks 1): the two must not compete for the same cores.
    code, data = _profile("-i", str(testbed.inventory), "--recipe", str(RECIPE), "--benchmark",
                          "--limit", "pi-zero-2-1,pi4-2", "--forks", "1")
    assert code == 0, data
    p = _by_name(data)
    slow, fast = p["pi-zero-2-1"], p["pi4-2"]
    for rec in (slow, fast):
        assert rec["bench_model"] == "har_cnn" and rec["rtt_s"] > 0
        assert rec["sec_per_sample_fwd"] > 0 and rec["sec_per_sample_bwd"] > 0
    step = {n: r["sec_per_sample_fwd"] + r["sec_per_sample_bwd"] for n, r in p.items()}
    assert step["pi-zero-2-1"] >= 3 * step["pi4-2"], step
    # tc caps each link: 20 Mbit/s for the Pi Zero 2, 100 Mbit/s for the Pi 4 (where paramiko's
    # own encryption on a busy 2-core host may be the tighter bound, so only "faster" is checked).
    assert 10e6 < slow["bandwidth_bps"] < 30e6, slow["bandwidth_bps"]
    assert fast["bandwidth_bps"] > slow["bandwidth_bps"]
    # The cache now replays in the simulator (the benchmarked devices only).
    from ftte_cli.sim.devices import load_profiles as sim_load

    out = testbed.dir / "bench.json"
    bud_records = bud.load_profiles(Path(data["cache"]))
    out.write_text(bud.dump_profiles({n: bud_records[n] for n in ("pi-zero-2-1", "pi4-2")}))
    sim = sim_load(out, 4)
    assert [d.memory_bytes for d in sim[:2]] == [slow["usable_memory_bytes"],
                                                 fast["usable_memory_bytes"]]


def _inventory_with(testbed: Testbed, path: Path, extra: dict[str, Any],
                    host_vars: dict[str, dict[str, Any]] | None = None) -> Path:
    data = yaml.safe_load(testbed.inventory.read_text())
    data["all"]["children"]["extra"] = {"hosts": extra}
    for group in data["all"]["children"].values():
        for name, hv in group["hosts"].items():
            hv.update((host_vars or {}).get(name, {}))
    path.write_text(yaml.safe_dump(data))
    return path


def test_unreachable_device_is_reported_and_others_go_on(testbed: Testbed,
                                                        tmp_path: Path) -> None:
    inv = _inventory_with(testbed, tmp_path / "inv.yaml",
                          {"ghost": {"ansible_host": "127.0.0.1", "ansible_port": free_port()}})
    code, data = _profile("-i", str(inv), "--limit", "ghost,pi4-2", "--connect-timeout", "3")
    assert code == ExitCode.UNREACHABLE
    outcomes = {d["device"]: d["outcome"] for d in data["devices"]}
    assert outcomes == {"ghost": "unreachable", "pi4-2": "ok"}
    assert [p["name"] for p in data["profiles"]] == ["pi4-2"]
    assert data["profiles"][0]["baseline_note"] == "import torch only (no recipe given)"


@pytest.mark.skipif(shutil.which("python3.11") is None and not Path("/usr/bin/python3").exists(),
                    reason="needs a system python without torch")
def test_device_without_torch_is_profiled_and_says_so(testbed: Testbed,
                                                      tmp_path: Path) -> None:
    inv = _inventory_with(testbed, tmp_path / "inv.yaml", {},
                          {"phone-4": {"ansible_python_interpreter": "/usr/bin/python3"}})
    code, data = _profile("-i", str(inv), "--limit", "phone-4", "--recipe", str(RECIPE))
    assert code == 0, data
    rec = data["profiles"][0]
    assert rec["torch_version"] is None and rec["baseline_rss_bytes"] is None
    assert data["devices"][0]["detail"].startswith("no torch")


def test_benchmark_needs_a_recipe(testbed: Testbed) -> None:
    code, data = _profile("-i", str(testbed.inventory), "--benchmark")
    assert code == ExitCode.USAGE and "--recipe" in data["error"]


def test_local_device_is_probed_as_a_subprocess(tmp_path: Path) -> None:
    dev = Device(name="laptop", host="localhost", connection="local", python=sys.executable,
                 workdir=str(tmp_path / "work"), mem_cap_mb=4096)
    res = profile_fleet([dev], SshOptions(), ProfileRequest())["laptop"]
    assert res.outcome == Outcome.ok, res.detail
    own = Path("/proc/self/cgroup").read_text()
    assert res.value.cgroup_version in (1, 2) or "memory" not in own
    assert res.value.inventory_cap_bytes == 4096 * 2**20
    assert res.value.usable_memory_bytes <= 4096 * 2**20 - res.value.baseline_rss_bytes


def test_local_probe_runs_a_real_training_step_of_the_recipes_model(tmp_path: Path) -> None:
    from ftte_cli.config.recipe import load_recipe

    dev = Device(name="laptop", host="localhost", connection="local", python=sys.executable,
                 workdir=str(tmp_path / "work"), mem_cap_mb=4096)
    req = ProfileRequest(recipe=load_recipe(RECIPE))
    prof = profile_fleet([dev], SshOptions(), req)["laptop"].value
    assert prof.runtime_overhead_bytes is not None, prof.runtime_note
    assert prof.runtime_overhead_bytes > 2 * 2**20  # x86: ~20 MiB for har_cnn
    assert prof.runtime_step_estimate_bytes and prof.runtime_step_estimate_bytes > 0
    assert prof.usable_memory_bytes == (4096 * 2**20 - prof.baseline_rss_bytes
                                        - prof.runtime_overhead_bytes - prof.safety_margin_bytes)


# --- budget (pure) ------------------------------------------------------------------------------


def test_table_output_from_cache(testbed: Testbed, profiled: dict[str, Any]) -> None:
    res = runner.invoke(app, ["profile", "-i", str(testbed.inventory), "--max-age", "3600"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Device profiles" in res.output and "4 devices: ok=4 (exit 0)" in res.output
    zero = _by_name(profiled)["pi-zero-2-1"]  # its ceiling: the cgroup limit under 352 MiB
    assert not testbed.isolated or format_size(zero["cgroup_mem_limit_bytes"]) in res.output
    assert "runtime" in res.output
