"""The HTTP server around the coordinator, over real loopback sockets with real torch tensors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch
from helpers.loopback import Http, make_coordinator, make_server

from ftte_cli.client import wire
from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import DeviceStatus, StopReason

TOKENS = {"a": "tok-a" * 8, "b": "tok-b" * 8}


@pytest.fixture()
def served() -> Iterator[tuple[ServerThread, list[dict]]]:
    events: list[dict] = []
    coord = make_coordinator(list(TOKENS), buffer_size=1)
    server = make_server(coord, TOKENS, events, offline_after=1.5, start_devices=1)
    with ServerThread(server) as st:
        yield st, events


def _small_delta(job: wire.JobMessage) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, 0.01) for k, v in job.subset.items()}


def _params_copy(st: ServerThread) -> dict[str, torch.Tensor]:
    return st.server.call(lambda c: {k: v.clone() for k, v in c.params.items()})


def _reasons(events: list[dict]) -> list[str]:
    return [e["reason"] for e in events if "reason" in e]


def test_register_task_update_advances_model(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    dev = Http(st.url, "a", TOKENS["a"])
    reply = dev.register()
    assert reply == {"client_id": "a", "run_id": "test-run", "plan_sha256": "0" * 64}
    status, job = dev.task(wait=5)
    assert status == 200 and job is not None and job.version == 0
    before = _params_copy(st)
    status, body = dev.update(job, _small_delta(job))
    assert status == 200 and body["accepted"] and body["version"] == 1
    after = _params_copy(st)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    # frozen parameters never change
    assert torch.equal(after["features.0.conv.weight"], before["features.0.conv.weight"])
    row = next(d for d in st.server.snapshot().devices if d.name == "a")
    assert row.accepted == 1 and row.bytes_up > 0 and row.bytes_down > 0
    assert row.peak_memory == 1000
    assert any(e["kind"] == "update_accepted" for e in events)


def test_wrong_token_is_401_and_recorded(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    before = _params_copy(st)
    for device, token in (("a", "nope"), ("mallory", TOKENS["a"]), ("a", "")):
        status, _ = Http(st.url, device, token).call("POST", "/register", b"{}")
        assert status == 401
    assert _reasons(events).count("wrong_token") == 3
    assert all(torch.equal(v, before[k]) for k, v in _params_copy(st).items())


def _job(st: ServerThread, device: str = "a") -> tuple[Http, wire.JobMessage]:
    dev = Http(st.url, device, TOKENS[device])
    dev.register()
    status, job = dev.task(wait=5)
    assert status == 200 and job is not None
    return dev, job


@pytest.mark.parametrize("kind, reason", [
    ("shape", "shape_mismatch"), ("nan", "non_finite"), ("names", "mask_mismatch"),
])
def test_bad_update_rejected_model_unchanged(served: tuple[ServerThread, list[dict]], kind: str,
                                              reason: str) -> None:
    st, events = served
    dev, job = _job(st)
    delta = _small_delta(job)
    if kind == "shape":
        delta["head.bias"] = torch.zeros(5)  # same names, fewer bytes
    elif kind == "nan":
        delta["head.bias"][0] = float("nan")
    else:
        delta["features.0.norm.bias"] = delta.pop("head.bias")  # a frozen name instead
    before = _params_copy(st)
    status, body = dev.update(job, delta)
    assert status == 422 and body == {"accepted": False, "reason": reason, "version": 0}
    assert reason in _reasons(events)
    assert all(torch.equal(v, before[k]) for k, v in _params_copy(st).items())


def test_oversized_body_is_413_before_reading(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    dev, job = _job(st)
    bound = st.server.config.update_max_bytes
    before = _params_copy(st)
    status, _ = dev.call("POST", "/update", b"\0" * (bound + 10),
                         {"Content-Type": wire.TENSOR_TYPE})
    assert status == 413
    # a well-formed update whose tensors are simply too many bytes
    delta = {**_small_delta(job), "extra": torch.zeros(bound // 4)}
    status, _ = dev.update(job, delta)
    assert status == 413
    assert _reasons(events).count("too_large") == 2
    assert all(torch.equal(v, before[k]) for k, v in _params_copy(st).items())


def test_replayed_job_rejected(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    dev, job = _job(st)
    assert dev.update(job, _small_delta(job))[0] == 200
    before = _params_copy(st)
    status, body = dev.update(job, _small_delta(job))
    assert status == 422 and body["reason"] == "duplicate_job"
    assert all(torch.equal(v, before[k]) for k, v in _params_copy(st).items())
    # another device replaying a's job id is refused too
    other = Http(st.url, "b", TOKENS["b"])
    other.register()
    assert other.update(job, _small_delta(job))[1]["reason"] == "wrong_device"
    assert "duplicate_job" in _reasons(events)


def test_malformed_body_is_400(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    dev, _ = _job(st)
    status, _ = dev.call("POST", "/update", b"definitely not safetensors",
                         {"Content-Type": wire.TENSOR_TYPE})
    assert status == 400 and "malformed" in _reasons(events)


def test_long_poll_waits_then_204_and_heartbeat_stays_responsive() -> None:
    events: list[dict] = []
    slow_eval_started = threading.Event()

    def slow_evaluate(params: dict[str, torch.Tensor]) -> tuple[float, float]:
        slow_eval_started.set()
        time.sleep(1.5)
        return 0.5, 1.0

    coord = make_coordinator(["a", "b"], buffer_size=1, concurrency=1, evaluate=slow_evaluate)
    server = make_server(coord, TOKENS, events, start_devices=2)
    with ServerThread(server) as st:
        a, b = Http(st.url, "a", TOKENS["a"]), Http(st.url, "b", TOKENS["b"])
        a.register()
        b.register()
        jobs = [(dev, dev.task(wait=0.5)) for dev in (a, b)]
        holder, (_, job) = next((d, r) for d, r in jobs if r[0] == 200)
        idle = b if holder is a else a
        t0 = time.monotonic()
        assert idle.task(wait=0.4)[0] == 204  # C = 1: nothing for the other device
        assert 0.35 <= time.monotonic() - t0 < 2.0
        assert job is not None
        upload = threading.Thread(target=holder.update, args=(job, _small_delta(job)))
        upload.start()
        assert slow_eval_started.wait(5)
        t0 = time.monotonic()
        assert idle.heartbeat() == 200  # answered while the evaluation runs in the worker
        assert time.monotonic() - t0 < 0.5
        upload.join()
        snap = st.server.snapshot()
        assert snap.version == 1 and snap.last_accuracy == 0.5


def test_offline_device_releases_job_and_rejoins(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    dev, job = _job(st)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        row = next(d for d in st.server.snapshot().devices if d.name == "a")
        if row.status == DeviceStatus.offline:
            break
        time.sleep(0.1)
    assert row.status == DeviceStatus.offline
    assert st.server.call(lambda c: c.in_flight) == 0  # its job was released
    assert dev.heartbeat() == 409  # must register again
    # issue 13 (fault 6): its late update is judged by the staleness rule, not refused with 409
    status, body = dev.update(job, _small_delta(job))
    assert status == 200 and body["accepted"] and body["late"] and body["staleness"] == 0
    assert dev.heartbeat() == 409  # still offline until it registers
    dev.register()
    assert any(e["kind"] == "device_rejoined" for e in events)
    status, job2 = dev.task(wait=5)
    assert status == 200 and job2 is not None and job2.job_id != job.job_id


def test_finish_answers_410(served: tuple[ServerThread, list[dict]]) -> None:
    st, events = served
    dev = Http(st.url, "a", TOKENS["a"])
    dev.register()
    waiter = threading.Thread(target=lambda: results.append(dev.task(wait=10)[0]))
    results: list[int] = []
    waiter.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    st.server.finish(StopReason.max_versions)
    waiter.join(5)
    assert results in ([200], [410])  # it may have been handed a job just before the end
    assert dev.task(wait=1)[0] == 410 and time.monotonic() - t0 < 5
    assert dev.call("POST", "/register", b"{}")[0] == 410
    assert st.server.snapshot().stop_reason == StopReason.max_versions


def test_status_needs_a_token_and_reports_devices(served: tuple[ServerThread, list[dict]]) -> None:
    st, _ = served
    assert Http(st.url, "a", "bad").call("GET", "/status")[0] == 401
    status, body = Http(st.url, "a", TOKENS["a"]).call("GET", "/status")
    assert status == 200
    assert sorted(d["name"] for d in wire.loads(body, 1 << 20)["devices"]) == ["a", "b"]
