"""The server under load: 200 simulated devices over real loopback HTTP for ~10 s.

A smaller run of benchmarks/loadtest.py (the server in its own process, the devices as aiohttp
sessions speaking the real protocol): no accepted update may be lost, memory per device stays
within its documented bound, every request succeeds and jobs go round the fleet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import loadtest  # noqa: E402

# docs/ARCHITECTURE.md "Server memory": a few KiB per registered device, plus one job body per
# job waiting to be fetched; the fixed part (allocator arenas, evaluation) shows up as slack at
# 200 devices, so this bound is loose there and tight per device at 1000 (~75 KiB measured).
MAX_BYTES_PER_DEVICE = 384 * 1024
MAX_BYTES_PER_DEVICE_REGISTERED = 96 * 1024


@pytest.mark.timeout(120)
def test_two_hundred_devices_no_lost_update_bounded_memory() -> None:
    res = loadtest.load_test(devices=200, duration=10.0, procs=1, seed=3, concurrency=100,
                             buffer_size=5, train_s=(0.3, 1.0), heartbeat_s=0.5,
                             long_poll_s=4.0)
    assert res.registered == 200
    assert res.errors == {}
    assert res.accepted_client > 100  # the run really made progress
    assert res.lost == 0 and res.accepted_coordinator == res.accepted_server
    assert res.versions >= res.accepted_coordinator // 5 - 1
    assert res.latency["heartbeat"]["count"] > 0 and res.latency["update"]["count"] > 0
    assert res.per_device_bytes <= MAX_BYTES_PER_DEVICE_REGISTERED
    assert res.per_device_end_bytes <= MAX_BYTES_PER_DEVICE
    assert res.fairness["served"] >= 0.8  # long-polls do not starve part of the fleet
