"""Fleet results without a network: the exit code of the most severe outcome, step return values
as results, and the pool's fork limit (fake sessions, no sshd)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ftte_cli.config.inventory import Device
from ftte_cli.errors import ExitCode
from ftte_cli.fleet.ssh import (
    DeviceResult,
    FleetResults,
    Outcome,
    Session,
    SshOptions,
    run_on_fleet,
)


def _results(*outcomes: Outcome) -> FleetResults:
    devs = [Device(name=f"d{i}", host="h") for i in range(len(outcomes))]
    return FleetResults({d.name: DeviceResult(d, o) for d, o in zip(devs, outcomes)})


@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        ((), ExitCode.OK),
        ((Outcome.ok, Outcome.changed), ExitCode.OK),
        ((Outcome.ok, Outcome.unreachable), ExitCode.UNREACHABLE),
        ((Outcome.unreachable, Outcome.timeout), ExitCode.TIMEOUT),
        ((Outcome.timeout, Outcome.failed), ExitCode.DEVICE_FAILED),
        ((Outcome.failed, Outcome.auth_failed), ExitCode.AUTH_FAILED),
        ((Outcome.auth_failed, Outcome.hostkey_mismatch, Outcome.ok), ExitCode.HOSTKEY_MISMATCH),
    ],
)
def test_exit_code_is_that_of_the_most_severe_outcome(
    outcomes: tuple[Outcome, ...], code: ExitCode
) -> None:
    assert _results(*outcomes).exit_code() == code


def test_step_return_values_become_results(tmp_path: Path) -> None:
    local = Device(name="me", host="localhost", connection="local")

    def step(s: Session) -> object:
        raise ValueError("bad output")

    res = run_on_fleet([local], step, SshOptions())
    assert res["me"].outcome == Outcome.failed and "ValueError: bad output" in res["me"].detail
    res = run_on_fleet([local], lambda s: Outcome.changed, SshOptions())
    assert res["me"].outcome == Outcome.changed and res.exit_code() == ExitCode.OK
    seen: list[str] = []
    res = run_on_fleet([local], lambda s: DeviceResult(s.device, Outcome.ok, "hi"),
                       SshOptions(), on_done=lambda r: seen.append(r.device.name))
    assert res["me"].detail == "hi" and res["me"].elapsed > 0 and seen == ["me"]


def test_pool_runs_at_most_forks_devices_at_once() -> None:
    lock, running, peak = threading.Lock(), [0], [0]

    def step(s: Session) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1

    devices = [Device(name=f"d{i}", host="localhost", connection="local") for i in range(6)]
    res = run_on_fleet(devices, step, SshOptions(forks=2))
    assert peak[0] == 2 and len(res.succeeded) == 6
