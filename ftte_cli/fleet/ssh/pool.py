"""The worker pool: run one step on every device, `opts.forks` at a time, one result each.

Each worker opens a session, calls the step, closes the session, and turns the return value or
the exception (`results.classify`) into one `DeviceResult`; a device that hangs costs at most its
connect timeout plus its command timeouts. Ctrl-C starts no further device and lets the steps in
flight finish (`FleetInterrupted` carries what each device ended with).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Optional, Union

from ftte_cli.config.inventory import Device
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.results import DeviceResult, FleetResults, Outcome, classify
from ftte_cli.fleet.ssh.sessions import Session, connect

log = logging.getLogger(__name__)

StepResult = Union[DeviceResult, Outcome, None, Any]


def _to_result(device: Device, value: StepResult, elapsed: float) -> DeviceResult:
    if isinstance(value, DeviceResult):
        return replace(value, elapsed=value.elapsed or elapsed)
    if isinstance(value, Outcome):
        return DeviceResult(device, value, elapsed=elapsed)
    return DeviceResult(device, Outcome.ok, elapsed=elapsed, value=value)


def run_one(device: Device, fn: Callable[[Session], StepResult], opts: SshOptions) -> DeviceResult:
    """Connect, run `fn`, close; never raises (except KeyboardInterrupt and friends)."""
    start = time.monotonic()
    try:
        with connect(device, opts) as session:
            value = fn(session)
        return _to_result(device, value, time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome, by design
        outcome, detail = classify(exc, device)
        log.info("%s: %s: %s", device.name, outcome.value, detail)
        return DeviceResult(device, outcome, detail, time.monotonic() - start)


def run_on_fleet(
    devices: list[Device],
    fn: Callable[[Session], StepResult],
    opts: SshOptions,
    on_done: Optional[Callable[[DeviceResult], None]] = None,
) -> FleetResults:
    """Run `fn(session)` on every device, `opts.forks` at a time; results in `devices` order.

    `fn` may return a DeviceResult, an Outcome, or any value (stored as `value`, outcome ok).
    `on_done` is called from the worker thread as each device finishes (for live progress).
    """

    def work(device: Device) -> DeviceResult:
        result = run_one(device, fn, opts)
        if on_done is not None:
            on_done(result)
        return result

    if not devices:
        return FleetResults({})
    pool = ThreadPoolExecutor(max_workers=max(1, opts.forks), thread_name_prefix="ftte-ssh")
    futures = [pool.submit(work, d) for d in devices]
    try:
        done = [f.result() for f in futures]
    except KeyboardInterrupt:
        raise FleetInterrupted(_after_interrupt(devices, futures, pool)) from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return FleetResults({r.device.name: r for r in done})


class FleetInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fleet step: `results` says what each device ended with."""

    def __init__(self, results: FleetResults) -> None:
        super().__init__("interrupted")
        self.results = results


def _after_interrupt(devices: list[Device], futures: list[Any],
                     pool: ThreadPoolExecutor) -> FleetResults:
    """Ctrl-C: start no further device, let the steps in flight finish (each is atomic on its
    device, so finishing is the safe way to stop); a second Ctrl-C abandons them."""
    for f in futures:
        f.cancel()  # only those not started yet
    try:
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
    out = {}
    for device, f in zip(devices, futures):
        if f.cancelled():
            out[device.name] = DeviceResult(device, Outcome.interrupted,
                                            "not started: interrupted (Ctrl-C); left as it was")
        elif f.done() and f.exception() is None:
            out[device.name] = f.result()
        else:
            out[device.name] = DeviceResult(device, Outcome.interrupted,
                                            "abandoned mid-step by a second Ctrl-C")
    return FleetResults(out)
