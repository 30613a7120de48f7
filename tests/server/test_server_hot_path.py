"""The server's per-request path under load (issue 14): updates handed to the coordinator thread
in batches, the GC and event-loop set-up of ServerThread, and the load generator's bodies.

Real loopback HTTP, real torch tensors, the real coordinator: the coordinator is only observed
(each submit recorded), never replaced.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.loopback import Http, make_coordinator, make_server

from ftte_cli.client import wire
from ftte_cli.engine import serialize
from ftte_cli.errors import RunError
from ftte_cli.server import runner
from ftte_cli.server.runner import ServerThread

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import loadtest  # noqa: E402

DEVICES = [f"d{i}" for i in range(8)]
TOKENS = {d: f"tok-{d}" * 8 for d in DEVICES}


def _record_submits(coord: Any) -> list[dict[str, Any]]:
    """Wrap coord.submit to record, in order, each call's job, thread, verdict and overlap."""
    calls: list[dict[str, Any]] = []
    inside = [0]
    real = coord.submit

    def submit(update: Any, now: float) -> Any:
        inside[0] += 1
        try:
            result = real(update, now)
        finally:
            inside[0] -= 1
        calls.append({"job_id": update.job_id, "thread": threading.get_ident(),
                      "overlap": inside[0], "result": result})
        return result

    coord.submit = submit
    return calls


def test_queued_updates_are_applied_one_at_a_time_in_arrival_order() -> None:
    coord = make_coordinator(DEVICES, buffer_size=4, concurrency=len(DEVICES))
    calls = _record_submits(coord)
    server = make_server(coord, TOKENS, [], start_devices=len(DEVICES))
    with ServerThread(server) as st:
        jobs = {}
        for d in DEVICES:
            Http(st.url, d, TOKENS[d]).register()
        for d in DEVICES:
            status, job = Http(st.url, d, TOKENS[d]).task(wait=5)
            assert status == 200 and job is not None
            jobs[d] = job
        # Hold the coordinator thread so that every upload queues, then release them at once:
        # one drain must apply all eight, one at a time, in the order they arrived.
        gate, held = threading.Event(), threading.Event()
        blocker = threading.Thread(target=st.server.call,
                                   args=(lambda c: (held.set(), gate.wait(30)),))
        blocker.start()
        assert held.wait(10)
        replies: dict[str, tuple[int, dict]] = {}

        def upload(d: str) -> None:
            delta = {k: torch.full_like(v, 0.01 * (1 + DEVICES.index(d)))
                     for k, v in jobs[d].subset.items()}
            replies[d] = Http(st.url, d, TOKENS[d]).update(jobs[d], delta)

        senders = [threading.Thread(target=upload, args=(d,)) for d in DEVICES]
        for t in senders:
            t.start()
        deadline = time.monotonic() + 20
        while len(server._submits) < len(DEVICES) and time.monotonic() < deadline:
            time.sleep(0.01)
        arrival = [u.job_id for u, _, _ in list(server._submits)]
        gate.set()
        for t in senders + [blocker]:
            t.join(30)
        assert len(arrival) == len(DEVICES)
        assert [c["job_id"] for c in calls] == arrival
        assert len({c["thread"] for c in calls}) == 1 and all(c["overlap"] == 0 for c in calls)
        by_job = {c["job_id"]: c["result"] for c in calls}
        for d in DEVICES:  # each device is told exactly what the coordinator decided for it
            status, body = replies[d]
            result = by_job[jobs[d].job_id]
            assert status == 200 and body["accepted"] is True and result.accepted
            assert body["version"] == result.version
        assert coord.metrics.accepted == len(DEVICES) == st.server.snapshot().accepted
        assert coord.version == 2  # 8 updates, buffer 4


def test_a_failing_submit_answers_500_and_the_queue_keeps_draining() -> None:
    coord = make_coordinator(DEVICES[:2], buffer_size=1, concurrency=2)
    real = coord.submit
    failing = {"job": None}

    def submit(update: Any, now: float) -> Any:
        if update.job_id == failing["job"]:
            raise RuntimeError("coordinator bug")
        return real(update, now)

    coord.submit = submit
    server = make_server(coord, {d: TOKENS[d] for d in DEVICES[:2]}, [], start_devices=2)
    with ServerThread(server) as st:
        a, b = (Http(st.url, d, TOKENS[d]) for d in DEVICES[:2])
        a.register()
        b.register()
        (_, job_a), (_, job_b) = a.task(wait=5), b.task(wait=5)
        assert job_a is not None and job_b is not None
        failing["job"] = job_a.job_id
        status, _ = a.update(job_a, {k: torch.zeros_like(v) for k, v in job_a.subset.items()})
        assert status == 500
        status, body = b.update(job_b, {k: torch.zeros_like(v) for k, v in job_b.subset.items()})
        assert status == 200 and body["accepted"] is True
        assert not server._draining and not server._submits


def test_server_thread_freezes_the_heap_and_restores_gc() -> None:
    before = gc.get_threshold()
    coord = make_coordinator(DEVICES[:1])
    with ServerThread(make_server(coord, {"d0": TOKENS["d0"]}, [])) as st:
        assert gc.get_freeze_count() > 10_000  # torch, the model, the app
        assert gc.get_threshold()[0] >= runner.GC_YOUNG
        assert Http(st.url, "d0", TOKENS["d0"]).register()["client_id"] == "d0"
        loop_module = type(st._loop).__module__
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert loop_module.startswith("asyncio")
    else:
        assert loop_module.startswith("uvloop")


def test_a_port_in_use_is_a_run_error_and_gc_is_restored() -> None:
    before = gc.get_threshold()
    coord = make_coordinator(DEVICES[:1])
    with ServerThread(make_server(coord, {"d0": TOKENS["d0"]}, [])) as first:
        taken = ServerThread(make_server(make_coordinator(DEVICES[:1]), {"d0": TOKENS["d0"]}, []),
                             port=first.port)
        with pytest.raises(RunError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            taken.start()
        assert gc.get_freeze_count() > 10_000  # the first server's freeze still holds
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_load_generator_bodies_decode_as_the_agents_do() -> None:
    delta = {"features.3.conv.weight": torch.randn(4, 3, 5), "head.bias": torch.randn(6)}
    bodies = loadtest._UpdateBodies(serialize.tensors_to_bytes(delta, {}))
    meta = {"job_id": "j7", "version": "3", "num_samples": "100", "grad_variance": "0.75",
            "peak_memory": "1000000"}
    body = bodies.body(meta)
    msg = wire.decode_update(body, len(body))
    agent = wire.decode_update(wire.encode_update(wire.UpdateMessage(
        "j7", 3, 100, 0.75, 1000000, delta)), 1 << 20)
    assert (msg.job_id, msg.version, msg.num_samples, msg.grad_variance, msg.peak_memory) == \
        (agent.job_id, agent.version, agent.num_samples, agent.grad_variance, agent.peak_memory)
    assert all(torch.equal(msg.delta[k], delta[k]) for k in delta)
    assert len(body) == len(serialize.tensors_to_bytes(delta, meta))


def test_probe_splits_an_update_into_phases_that_add_up() -> None:
    probe = loadtest._ServerProbe()
    marks = {"start": 0.0, "read": 0.001, "decoded": 0.002, "handoff": 0.002, "run": 0.010,
             "ran": 0.011, "back": 0.030}
    probe.update_phase(marks, 0.031)
    probe.update_phase({"start": 0.0}, 0.5)  # refused before the coordinator: not counted
    spent = {k: v for k, v in probe.phases.items()}
    assert list(spent) == list(loadtest.UPDATE_PHASES)
    assert all(len(v) == 1 for v in spent.values())
    assert abs(sum(v[0] for v in spent.values()) - 0.031) < 1e-12
    assert spent["coordinator queue"][0] == pytest.approx(0.008)
    assert spent["back on loop"][0] == pytest.approx(0.019)


def test_busy_server_defers_an_update_with_retry_after_and_the_resend_is_applied() -> None:
    names = DEVICES[:2]
    coord = make_coordinator(names, buffer_size=1, concurrency=2)
    server = make_server(coord, {d: TOKENS[d] for d in names}, [], start_devices=2,
                         max_updates_in_flight=1, retry_after_s=2)
    with ServerThread(server) as st:
        a, b = (Http(st.url, d, TOKENS[d]) for d in names)
        a.register()
        b.register()
        (_, job_a), (_, job_b) = a.task(wait=5), b.task(wait=5)
        assert job_a is not None and job_b is not None
        delta_a = {k: torch.full_like(v, 0.01) for k, v in job_a.subset.items()}
        delta_b = {k: torch.full_like(v, 0.02) for k, v in job_b.subset.items()}
        gate, held = threading.Event(), threading.Event()
        blocker = threading.Thread(target=st.server.call,
                                   args=(lambda c: (held.set(), gate.wait(30)),))
        blocker.start()
        assert held.wait(10)
        first: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: first.update(r=a.update(job_a, delta_a)))
        sender.start()
        deadline = time.monotonic() + 20
        while not server._submits and time.monotonic() < deadline:
            time.sleep(0.01)
        msg = wire.UpdateMessage(job_b.job_id, job_b.version, 40, 0.1, 1000, delta_b)
        req = urllib.request.Request(st.url + wire.API + "/update", method="POST",
                                     data=wire.encode_update(msg),
                                     headers={**wire.auth_headers("d1", TOKENS["d1"]),
                                              "Content-Type": wire.TENSOR_TYPE})
        with pytest.raises(urllib.error.HTTPError) as busy:
            urllib.request.urlopen(req, timeout=30)
        assert busy.value.code == 503 and busy.value.headers["Retry-After"] == "2"
        busy.value.close()
        assert coord.metrics.accepted == 0  # nothing applied while the coordinator was held
        gate.set()
        sender.join(30)
        blocker.join(30)
        assert first["r"][0] == 200 and first["r"][1]["accepted"] is True
        status, body = b.update(job_b, delta_b)  # the resend: the same job, now applied
        assert status == 200 and body["accepted"] is True
        assert coord.metrics.accepted == 2 and server.updates_deferred == 1
        assert st.server.snapshot().accepted == 2
