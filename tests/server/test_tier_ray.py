"""The aggregator tier on a local Ray: 2 aggregators feeding one coordinator with partial sums
equal one server applying the same updates in the same order, killing an aggregator loses no
update, and devices authenticate at the aggregators with bounded bodies."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from helpers.tinymodel import Tiny

from ftte_cli.client import wire
from ftte_cli.config.recipe import GuardConfig, StrategyConfig
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig, Update
from ftte_cli.engine.plan import dense_plan
from ftte_cli.engine.serialize import tensors_and_metadata_from_bytes
from ftte_cli.errors import ConfigError

ray = pytest.importorskip("ray")
from ftte_cli.server.tier import (  # noqa: E402
    CoordinatorSpec,
    Verdict,
    start_aggregator,
    start_tier,
)

pytestmark = pytest.mark.slow
DEVICES = [f"d{i}" for i in range(6)]
TOKENS = {d: f"token-{d}-{'x' * 20}" for d in DEVICES}
EPS32 = float(torch.finfo(torch.float32).eps)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # few CPUs and a small object store: the machine is shared and has 2 cores
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


def _spec(strategy: str = "ftte") -> CoordinatorSpec:
    torch.manual_seed(0)
    model = Tiny()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    # the norm guard clips (it needs each delta's norm and scales some deltas): the tier must
    # reproduce both from the aggregators' measurements
    cfg = StrategyConfig(name=strategy, buffer_size=3, max_concurrency=4,
                         guard=GuardConfig(norm_bound=3.0, norm_action="clip", norm_warmup=2))
    sizes = {d: 10 + 7 * i for i, d in enumerate(DEVICES)}  # n_i differ: the weights show it
    return CoordinatorSpec(params, dense_plan(model, "tiny"), cfg, sizes,
                           CoordinatorConfig(strategy=cfg), seed=3)


def _body(job_body: bytes, device: str) -> bytes:
    """A deterministic update for a job: delta and variance depend on the job id only; every
    fifth job's delta is 40x larger (the guard clips it), every eleventh has a NaN."""
    job = wire.decode_job(job_body, 1 << 30)
    number = int(job.job_id[1:])
    gen = torch.Generator().manual_seed(number)
    scale = 0.4 if number % 5 == 0 else 1e-2
    # sorted: a decoded dict's order is not fixed, and the draws must not depend on it
    delta = {k: torch.randn(job.subset[k].shape, generator=gen) * scale
             for k in sorted(job.subset)}
    if number % 11 == 0:
        delta["head.bias"][0] = float("nan")
    variance = float(torch.rand((), generator=gen)) * 3
    return wire.encode_update(wire.UpdateMessage(job.job_id, job.version,
                                                 10 + DEVICES.index(device), variance, None,
                                                 delta))


class _Single:
    """One server: the same coordinator, called directly with the real deltas, in order."""

    def __init__(self, spec: CoordinatorSpec) -> None:
        self.coord: Coordinator = spec.build()
        self.queued: Dict[str, Any] = {}
        self.now = 0.0
        for device in spec.clients:
            self.coord.client_offline(device, self.now)

    def _dispatch(self) -> None:
        for job in self.coord.next_jobs(self.now):
            self.queued[job.client_id] = job

    def register(self, device: str) -> int:
        self.now += 1.0
        self.queued.pop(device, None)
        self.coord.client_offline(device, self.now)
        self.coord.client_online(device)
        self._dispatch()
        return self.coord.version

    def task(self, device: str) -> Optional[bytes]:
        job = self.queued.pop(device, None)
        return None if job is None else wire.encode_job(
            wire.JobMessage(job.job_id, job.version, job.seed, job.subset))

    def update(self, device: str, body: bytes) -> Verdict:
        self.now += 1.0
        msg = wire.decode_update(body, 1 << 30)
        res = self.coord.submit(Update(msg.job_id, device, msg.version, msg.delta,
                                       msg.num_samples, msg.grad_variance), self.now)
        self._dispatch()
        return Verdict(res.accepted, None if res.reason is None else res.reason.value,
                       res.version, res.staleness)


@dataclass
class _Fleet:
    """Devices driving a tier, one call at a time, recording what they did (for a replay)."""

    agg_of: Dict[str, Any]
    log: List[Tuple[str, str, bytes]] = field(default_factory=list)

    def register(self, device: str) -> int:
        self.log.append(("register", device, b""))
        return int(ray.get(self.agg_of[device].register.remote(wire.auth_headers(
            device, TOKENS[device]))))

    def task(self, device: str) -> Optional[bytes]:
        job: Optional[bytes] = ray.get(self.agg_of[device].task.remote(
            wire.auth_headers(device, TOKENS[device])))
        self.log.append(("task", device, b""))
        return job

    def update(self, device: str, body: bytes) -> Verdict:
        self.log.append(("update", device, body))
        verdict: Verdict = ray.get(self.agg_of[device].update.remote(
            wire.auth_headers(device, TOKENS[device]), body))
        return verdict

    def rounds(self, n: int, devices: List[str] = DEVICES) -> List[Tuple[str, Verdict]]:
        """Every device in a fixed order: fetch its job if any, send its update."""
        verdicts = []
        for _ in range(n):
            for d in devices:
                job = self.task(d)
                if job is not None:
                    verdicts.append((d, self.update(d, _body(job, d))))
        return verdicts


def _replay(spec: CoordinatorSpec, log: List[Tuple[str, str, bytes]]) -> _Single:
    single = _Single(spec)
    for op, device, body in log:
        if op == "register":
            single.register(device)
        elif op == "task":
            single.task(device)
        else:
            single.update(device, body)
    return single


def _assert_same_model(tier_summary: Dict[str, Any], single: _Single) -> None:
    """Equal within 4 float32 ulps of the weights' scale: only the float64 summation order of
    the partial sums differs (docs/SCALING.md); on these updates the bits are equal."""
    a = tensors_and_metadata_from_bytes(tier_summary["subset"], 1 << 30)[0]
    b = single.coord.subset
    assert a.keys() == b.keys()
    for name in a:
        tol = 4 * EPS32 * float(b[name].abs().max())
        assert float((a[name] - b[name]).abs().max()) <= tol, name


def _kill(*actors: Any) -> None:
    for actor in actors:
        ray.kill(actor)


def _kill_and_wait(actor: Any, deadline_s: float = 120.0) -> None:
    """ray.kill returns before the process is gone: poll the actor until Ray says it died."""
    ray.kill(actor)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            ray.get(actor.ident.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"actor still answering {deadline_s:g} s after ray.kill")


@pytest.mark.timeout(300)
def test_two_aggregators_equal_one_server_on_the_same_updates_in_order(local_ray: None) -> None:
    spec = _spec()
    tier = start_tier(spec, TOKENS, aggregators=2)
    fleet = _Fleet({d: tier.aggregator_for(d) for d in DEVICES})
    assert len({id(a) for a in fleet.agg_of.values()}) == 2  # both aggregators serve devices
    for d in DEVICES:
        fleet.register(d)
    got = fleet.rounds(6)

    single = _Single(spec)
    for d in DEVICES:
        single.register(d)
    expected = []
    for _ in range(6):
        for d in DEVICES:
            job = single.task(d)
            if job is not None:
                expected.append((d, single.update(d, _body(job, d))))

    assert got == expected  # every verdict, staleness and version
    reasons = {v.reason for _, v in got}
    assert "non_finite" in reasons and sum(v.accepted for _, v in got) >= 15
    remote = ray.get(tier.coordinator.summary.remote())
    ref = single.coord.metrics.to_dict()
    assert remote["metrics"] == ref and ref["clipped"] > 0  # bytes, staleness, guard, drops
    assert remote["version"] == single.coord.version >= 5
    # sums forward: some buffers were split over both aggregators, never a delta per update
    assert remote["version"] < remote["partials"] < ref["accepted"]
    _assert_same_model(remote, single)
    _kill(tier.coordinator, *tier.aggregators)


@pytest.mark.timeout(300)
def test_fedbuff_buffer_normaliser_splits_too(local_ray: None) -> None:
    spec = _spec("fedbuff")
    tier = start_tier(spec, TOKENS, aggregators=2)
    fleet = _Fleet({d: tier.aggregator_for(d) for d in DEVICES})
    for d in DEVICES:
        fleet.register(d)
    fleet.rounds(4)
    single = _replay(spec, fleet.log)
    remote = ray.get(tier.coordinator.summary.remote())
    assert remote["metrics"] == single.coord.metrics.to_dict() and remote["version"] >= 3
    _assert_same_model(remote, single)
    _kill(tier.coordinator, *tier.aggregators)


@pytest.mark.timeout(300)
def test_killing_an_aggregator_loses_no_update(local_ray: None) -> None:
    spec = _spec()
    tier = start_tier(spec, TOKENS, aggregators=2)
    victim, survivor = tier.aggregators
    fleet = _Fleet({d: tier.aggregator_for(d) for d in DEVICES})
    moved = [d for d in DEVICES if fleet.agg_of[d] is victim]
    for d in DEVICES:
        fleet.register(d)
    told = fleet.rounds(2)
    # go on, one device at a time, until an accepted update of the victim's devices waits in
    # the buffer: its delta was handed over and must survive the victim's process
    victim_id = ray.get(victim.ident.remote())
    for _ in range(12):
        summary = ray.get(tier.coordinator.summary.remote())
        if summary["buffered_from"].get(victim_id, 0):
            break
        told += fleet.rounds(1, moved[:1])
    assert summary["buffered_from"].get(victim_id, 0) > 0
    held = [d for d in moved if fleet.task(d) is not None]  # jobs taken, never sent back
    _kill_and_wait(victim)
    # its devices re-register elsewhere: half at the survivor, half at a restarted aggregator
    restarted = start_aggregator(tier)
    for i, d in enumerate(moved):
        fleet.agg_of[d] = survivor if i % 2 else restarted
        fleet.register(d)
    after = fleet.rounds(4)

    remote = ray.get(tier.coordinator.summary.remote())
    metrics = remote["metrics"]
    # every update a device was told was accepted is counted, and no other
    assert metrics["accepted"] == sum(v.accepted for _, v in told + after)
    assert held and metrics["jobs_lost"] >= len(held)  # the jobs the dead one's devices held
    assert {d for d, v in after if v.accepted} & set(moved)  # they train on elsewhere
    assert remote["version"] >= 6
    # ... and is in the model: one server replaying what the devices did ends at the same w*
    single = _replay(spec, fleet.log)
    assert single.coord.metrics.to_dict() == metrics
    _assert_same_model(remote, single)
    _kill(tier.coordinator, survivor, restarted)


@pytest.mark.timeout(300)
def test_devices_authenticate_at_the_aggregators_and_bodies_are_bounded(local_ray: None
                                                                        ) -> None:
    spec = _spec()
    tier = start_tier(spec, TOKENS, aggregators=1)
    agg = tier.aggregators[0]
    with pytest.raises(PermissionError, match="'d0': unknown device or wrong token"):
        ray.get(agg.register.remote(wire.auth_headers("d0", "not-the-token")))
    with pytest.raises(PermissionError, match="'intruder'"):
        ray.get(agg.update.remote(wire.auth_headers("intruder", TOKENS["d0"]), b"x"))
    headers = wire.auth_headers("d0", TOKENS["d0"])
    ray.get(agg.register.remote(headers))
    job = ray.get(agg.task.remote(headers))
    assert job is not None
    body = _body(job, "d0")
    over = body + b"\0" * (tier.bound - len(body) + 1)  # one byte over the plan's bound
    assert ray.get(agg.update.remote(headers, over)) == Verdict(False, "too_large", -1)
    assert ray.get(agg.update.remote(headers, b"not safetensors")).reason == "malformed"
    metrics = ray.get(tier.coordinator.summary.remote())["metrics"]
    assert metrics["bytes_up"] == 0 and metrics["accepted"] == 0  # none reached it
    assert ray.get(agg.update.remote(headers, body)).accepted
    _kill(tier.coordinator, agg)


def test_a_strategy_the_tier_cannot_split_is_refused_by_field() -> None:
    spec = _spec()
    robust = CoordinatorSpec(spec.params, spec.plan,
                             StrategyConfig(guard=GuardConfig(aggregator="median")),
                             spec.clients, spec.config, spec.seed)
    with pytest.raises(ConfigError, match="strategy.guard.aggregator: 'median'"):
        start_tier(robust, TOKENS)
    fedavg = CoordinatorSpec(spec.params, spec.plan, StrategyConfig(name="fedavg"),
                             spec.clients, spec.config, spec.seed)
    with pytest.raises(ConfigError, match="strategy.name: 'fedavg'"):
        start_tier(fedavg, TOKENS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Serve's own pydantic fields
def test_devices_speak_the_wire_protocol_to_a_ray_serve_front(local_ray: None) -> None:
    """Real HTTP on loopback through Serve's proxy and 2 replicas to 2 aggregators; an
    aggregator killed mid-run costs its devices a 503 and a re-registration, no update."""
    from helpers.loopback import Http

    from ftte_cli.server.tier_http import start_front, stop_front

    tier = start_tier(_spec(), TOKENS, aggregators=2)
    url = start_front(tier, port=_free_port(), replicas=2)
    devices = {d: Http(url, d, TOKENS[d]) for d in DEVICES}
    told: List[Dict[str, Any]] = []
    unavailable = 0

    def rounds(n: int) -> None:
        nonlocal unavailable
        for _ in range(n):
            for d, http in devices.items():
                status, body = http.call("GET", "/task?wait=0")
                if status == 200:
                    status, body = http.call("POST", "/update", _body(body, d),
                                             {"Content-Type": wire.TENSOR_TYPE})
                    if status != 503:
                        assert status in (200, 422), (status, body)
                        told.append(json.loads(body))
                if status == 503:  # its aggregator died: register again, elsewhere
                    unavailable += 1
                    http.register()
                else:
                    assert status in (200, 204, 422), (status, body)

    try:
        wrong = Http(url, "d0", "not-the-token")
        assert wrong.call("POST", "/register", b"{}")[0] == wire.UNAUTHORIZED
        assert devices["d0"].call("POST", "/update", b"\0" * (tier.bound + 1))[0] == \
            wire.TOO_LARGE
        for http in devices.values():
            assert http.register()["client_id"] in DEVICES
        assert devices["d1"].heartbeat() == 200
        rounds(3)
        _kill_and_wait(tier.aggregators[0])
        rounds(4)
        remote = ray.get(tier.coordinator.summary.remote())
        assert unavailable >= 1  # the dead aggregator's devices noticed
        assert remote["metrics"]["accepted"] == sum(r["accepted"] for r in told) >= 15
        assert remote["version"] >= 5 and remote["metrics"]["bytes_up"] > 0
    finally:
        stop_front()
        _kill(tier.coordinator, *tier.aggregators)
