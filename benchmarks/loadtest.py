"""Load test of the ftte server: N simulated devices speak the real protocol over loopback.

    .venv/bin/python benchmarks/loadtest.py [--devices 1000] [--duration 90] [--procs 2]
                                            [--baseline DIR] [--repeat N] [--max-in-flight N]
                                            [--format table|json]

The server (`FtteServer` + `ServerThread`, the same code `ftte train` runs) lives in a child
process so its memory is measured alone; the devices are asyncio tasks with aiohttp client
sessions in `--procs` client processes. Each device registers, long-polls `/v1/task`, "trains" for
a random while (a sleep: the server is what is measured), sends heartbeats while it trains and
uploads a sparse delta shaped by a real FTTE plan of har_cnn (head + a quarter of the last conv's
input channels). The server aggregates with the ftte strategy and evaluates on a synthetic HAR test
set, as in a real run. Bounded in time (`--duration`, every request ends by then) and count
(`--devices`); loopback only (127.0.0.1).

Reported: accepted updates per second, p50/p99 latency per endpoint (`task` split into "got a job"
and "nothing yet", whose latency includes the long-poll wait), server RSS before registration,
after every device registered and at the end, RSS per registered device, and the lost-update
check: the coordinator's accepted count must equal the number of "accepted" replies the devices
received.

Where a request's time goes: per endpoint the time from the device's send to the server handler's
start, an update's handler time by phase (UPDATE_PHASES), GC pauses, event-loop lag of the server
and of the device processes, and the CPU seconds each side used. The devices are a closed loop
(each waits for its reply): what they offer drops as the server slows. `--baseline DIR` serves
the same devices with another checkout's ftte_cli (e.g. main's) too, runs alternated, and prints
them side by side with medians over `--repeat` runs and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import hashlib
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Optional

HOST = "127.0.0.1"
MODEL_INPUT = (9, 128)
NUM_CLASSES = 6
REGISTERED_AT = 3.5  # seconds after the start: every device registered, none polling yet
# Seconds after the start past which updates count as steady state: every device registers in
# the first 2 s and gets its first job at once, so the first wave of uploads lands together.
STEADY_AFTER = 10.0
SENT_HEADER = "X-Loadtest-Sent"  # the device's wall clock when it sent the request (same host)
# The phases of an update's time in the server, in order (see _ServerProbe.update_phase).
UPDATE_PHASES = ("read body + auth", "decode", "to hand-off", "coordinator queue",
                 "coordinator run", "back on loop", "record + reply")


def token_for(name: str, seed: int) -> str:
    """Each device's token, derived so both sides agree without a file."""
    return hashlib.sha256(f"loadtest:{seed}:{name}".encode()).hexdigest()


def device_names(n: int) -> List[str]:
    """d0000, d0001, ..."""
    return [f"d{i:04d}" for i in range(n)]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    return _proc_status(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


# ---- server child ----------------------------------------------------------------------------

def build_coordinator(devices: int, seed: int, concurrency: int, buffer_size: int) -> Any:
    """The coordinator a load test serves: har_cnn, a sparse FTTE plan (head + a quarter of the
    last conv's input channels), ftte aggregation, evaluation on 300 synthetic HAR windows."""
    import torch

    from ftte_cli.config.recipe import ModelConfig, StrategyConfig
    from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig
    from ftte_cli.engine.data import synthetic_har
    from ftte_cli.engine.data.dataset import Dataset
    from ftte_cli.engine.evaluation import PlanEvaluator
    from ftte_cli.engine.models import build_model
    from ftte_cli.engine.plan import FULL, MaskKind, ParamMask, build_plan
    from ftte_cli.engine.strategies import make_strategy

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = build_model(ModelConfig("har_cnn", 1.0), MODEL_INPUT, NUM_CLASSES)
    masks = {"features.3.conv.weight": ParamMask(MaskKind.channels, tuple(range(32))),
             "features.3.norm.weight": FULL, "features.3.norm.bias": FULL,
             "head.weight": FULL, "head.bias": FULL}
    plan = build_plan(model, masks, model_name="har_cnn", method="contribution")
    x, y, _ = synthetic_har.generate(300, 5, seed)
    test = Dataset(x, y, None)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfg = StrategyConfig(name="ftte", buffer_size=buffer_size, max_concurrency=concurrency)
    return Coordinator(params, plan, make_strategy(cfg), {n: 100 for n in device_names(devices)},
                       CoordinatorConfig(strategy=cfg, eval_every=5), seed=seed,
                       evaluate=PlanEvaluator(model, plan, test))


def serve(devices: int, seed: int, concurrency: int, buffer_size: int,
          max_in_flight: int = 0) -> None:
    """Child process: serve a run for `devices` devices; print the URL, then the final counts."""
    from ftte_cli.server.protocol import ServerConfig, update_bound
    from ftte_cli.server.runner import ServerThread

    coord = build_coordinator(devices, seed, concurrency, buffer_size)
    names = device_names(devices)
    tokens = {n: token_for(n, seed) for n in names}
    config = ServerConfig(run_id="loadtest", tokens=tokens, plan_sha256="0" * 64,
                          update_max_bytes=update_bound(coord.subset), start_grace=60.0,
                          **({"max_updates_in_flight": max_in_flight} if max_in_flight else {}))
    probe = _ServerProbe()
    server = _Measured(probe, coord, config, strategy="ftte", buffer_size=buffer_size)
    with ServerThread(server, HOST, 0) as st:
        # From here: the full collection ServerThread runs before freezing the heap (~100 ms,
        # before it accepts a request) is start-up, not a pause any request waits for.
        gc.callbacks.append(probe.on_gc)
        shapes = {k: list(v.shape) for k, v in coord.subset.items()}
        print(json.dumps({"url": st.url, "shapes": shapes}), flush=True)
        sys.stdin.readline()  # the parent says stop
        snap = server.snapshot()
        counts = server.call(lambda c: {"coordinator_accepted": c.metrics.accepted,
                                        "version": c.version, "evals": len(c.metrics.evals)})
        print(json.dumps({**counts, "server_accepted": snap.accepted,
                          "dropped": snap.dropped, "handler": probe.handler_figures(),
                          "loop_lag": _percentiles(probe.lags), **probe.breakdown(),
                          "peak_rss": _proc_status(os.getpid(), "VmHWM")}), flush=True)


# The timing marks of the request being handled (set by the probe's middleware).
_MARKS: contextvars.ContextVar[Optional[Dict[str, float]]] = contextvars.ContextVar(
    "loadtest_marks", default=None)


class _ServerProbe:
    """Server-side timings (no client noise): handler time per endpoint, time a request waited
    before its handler, an update's time by phase, event-loop lag and garbage-collector pauses."""

    def __init__(self) -> None:
        self.handler: Dict[str, List[float]] = defaultdict(list)
        self.queued: Dict[str, List[float]] = defaultdict(list)
        self.phases: Dict[str, List[float]] = defaultdict(list)
        self.lags: List[float] = []
        self.gc_pauses: List[float] = []
        self.gc_by_gen: Dict[int, List[float]] = defaultdict(list)
        self._gc_start = 0.0

    def handler_figures(self) -> Dict[str, Dict[str, float]]:
        return {k: _percentiles(v) for k, v in sorted(self.handler.items())}

    def on_gc(self, phase: str, info: Dict[str, int]) -> None:
        """gc.callbacks hook: the length of every collection (all generations)."""
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            pause = time.perf_counter() - self._gc_start
            self.gc_pauses.append(pause)
            self.gc_by_gen[info["generation"]].append(pause)

    def update_phase(self, marks: Dict[str, float], end: float) -> None:
        """Split one update's handler time at the marks the overrides below left."""
        keys = ("start", "read", "decoded", "handoff", "run", "ran", "back")
        if not all(k in marks for k in keys):
            return  # refused before the coordinator (auth, bound, malformed)
        points = [marks[k] for k in keys] + [end]
        for name, a, b in zip(UPDATE_PHASES, points, points[1:]):
            self.phases[name].append(max(b - a, 0.0))

    def breakdown(self) -> Dict[str, Any]:
        return {"queued": {k: _percentiles(v) for k, v in sorted(self.queued.items())},
                "update_phases": {k: _percentiles(self.phases[k]) for k in UPDATE_PHASES},
                "gc": {**_percentiles(self.gc_pauses), "max_ms": round(max(
                    self.gc_pauses, default=0.0) * 1e3, 2), "total_s": round(sum(
                        self.gc_pauses), 3), "by_generation": {
                            str(g): [len(v), round(sum(v), 3)]
                            for g, v in sorted(self.gc_by_gen.items())}},
                "cpu_s": round(time.process_time(), 2)}

    async def watch_lag(self) -> None:
        """How late a 50 ms sleep wakes up: the time the loop spent on something else."""
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.05)
            self.lags.append(time.perf_counter() - start - 0.05)


def _measured_class() -> type:
    from aiohttp import web

    from ftte_cli.server.app import FtteServer

    class Measured(FtteServer):
        """FtteServer plus a timing middleware and a loop-lag watcher (the benchmark's probe)."""

        def __init__(self, probe: _ServerProbe, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.probe = probe
            self._running_marks: Dict[str, Dict[str, float]] = {}  # job id -> its marks

        def make_app(self) -> web.Application:
            app = super().make_app()
            probe = self.probe

            @web.middleware
            async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
                start = time.perf_counter()
                name = request.path.rsplit("/", 1)[-1]
                sent = request.headers.get(SENT_HEADER)
                if sent:  # from the device's send to this handler: sockets, parsing, the loop
                    probe.queued[name].append(max(time.time() - float(sent), 0.0))
                marks = {"start": start}
                _MARKS.set(marks)  # this request's task only
                status = 500
                try:
                    resp = await handler(request)
                    status = resp.status
                    return resp
                except web.HTTPException as err:
                    status = err.status
                    raise
                finally:
                    end = time.perf_counter()
                    if name == "task":
                        name = "task (job)" if status == 200 else "task (none)"
                    if name == "update" and status in (200, 422):
                        probe.update_phase(marks, end)
                    probe.handler[name].append(end - start)

            async def lag(app: web.Application) -> None:
                app["lag"] = asyncio.create_task(probe.watch_lag())

            async def stop_lag(app: web.Application) -> None:
                app["lag"].cancel()

            app.middlewares.append(timing)
            app.on_startup.append(lag)
            app.on_cleanup.append(stop_lag)
            return app

        async def _decode_update(self, body: bytes, bound: int) -> Any:
            marks = _MARKS.get()
            if marks is not None:
                marks["read"] = time.perf_counter()
            try:
                return await super()._decode_update(body, bound)
            finally:
                if marks is not None:
                    marks["decoded"] = time.perf_counter()

        async def _in_worker(self, fn: Any, *args: Any) -> Any:
            marks = _MARKS.get()  # a server whose updates go through run_in_executor
            if marks is None or getattr(fn, "__name__", "") != "_submit":
                return await super()._in_worker(fn, *args)
            marks["handoff"] = time.perf_counter()
            try:
                return await super()._in_worker(_timed(fn, marks), *args)
            finally:
                marks["back"] = time.perf_counter()

        async def _submit_update(self, update: Any, now: float) -> Any:
            marks = _MARKS.get()  # a server whose updates go through a batched queue
            if marks is not None:
                self._running_marks[update.job_id] = marks
                marks["handoff"] = time.perf_counter()
            try:
                return await super()._submit_update(update, now)
            finally:
                if marks is not None:
                    marks["back"] = time.perf_counter()

        def _submit(self, update: Any, now: float) -> Any:
            marks = self._running_marks.pop(update.job_id, None)
            if marks is None:
                return super()._submit(update, now)
            return _timed(super()._submit, marks)(update, now)

    return Measured


def _timed(fn: Any, marks: Dict[str, float]) -> Any:
    """`fn`, marking when the coordinator thread started and finished it."""
    def run(*args: Any) -> Any:
        marks["run"] = time.perf_counter()
        try:
            return fn(*args)
        finally:
            marks["ran"] = time.perf_counter()

    return run


def _Measured(*args: Any, **kw: Any) -> Any:  # noqa: N802  (a class made on demand)
    return _measured_class()(*args, **kw)


# ---- devices ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientPlan:
    """What one client process runs."""

    url: str
    names: List[str]
    shapes: Dict[str, List[int]]
    seed: int
    start_at: float  # wall clock (time.time) when the devices may start
    stop_at: float  # wall clock by which every request has ended
    train_s: tuple  # (min, max) seconds a job "trains"
    heartbeat_s: float
    long_poll_s: float


class _Device:
    """One simulated device: the agent's request pattern over an aiohttp session."""

    def __init__(self, plan: ClientPlan, name: str, session: Any, stats: Dict[str, Any],
                 bodies: _UpdateBodies) -> None:
        from ftte_cli.client import wire

        self.plan, self.name, self.session, self.stats = plan, name, session, stats
        self.wire = wire
        self.base = plan.url + wire.API
        self.headers = wire.auth_headers(name, token_for(name, plan.seed))
        self.rng = random.Random(f"{plan.seed}:{name}")
        self.bodies = bodies

    def left(self) -> float:
        return self.plan.stop_at - time.time()

    retry_after = "1"  # the last Retry-After the server sent

    async def request(self, endpoint: str, method: str, path: str, data: bytes = b"",
                      content_type: str = "application/json") -> tuple:
        """(status, body); latency recorded per endpoint; errors counted, not raised."""
        start = time.perf_counter()
        headers = {**self.headers, "Content-Type": content_type, SENT_HEADER: repr(time.time())}
        try:
            async with self.session.request(method, self.base + path, headers=headers,
                                            data=data or None) as resp:
                body = await resp.read()
                status = resp.status
                if status == 503:
                    self.retry_after = resp.headers.get("Retry-After", "1")
        except (OSError, asyncio.TimeoutError, Exception) as err:  # counted as errors
            self.stats["errors"][f"{endpoint}: {type(err).__name__}"] += 1
            return 0, b""
        label = endpoint if endpoint != "task" else ("task (job)" if status == 200
                                                     else "task (none)")
        if endpoint == "update" and status == 503:
            label = "update (503)"  # answered at once; the resend is another request
        self.stats["latency"][label].append(time.perf_counter() - start)
        if label == "update":  # when, for the steady-state figure (the first wave excluded)
            self.stats["update_at"].append(time.time() - self.plan.start_at)
        self.stats["status"][f"{endpoint} {status}"] += 1
        return status, body

    async def run(self) -> None:
        await asyncio.sleep(max(self.plan.start_at - time.time(), 0.0)
                            + self.rng.random() * 2.0)  # registrations spread over 2 s
        while self.left() > 0.5:
            status, _ = await self.request("register", "POST", "/register", data=b"{}")
            if status != 200:
                await asyncio.sleep(1.0)
                continue
            self.stats["registered"] += 1
            # Everyone registers within 2 s, then waits until 4 s, so the parent reads the
            # server's RSS with the fleet registered (and the first jobs queued) before polls.
            await asyncio.sleep(max(self.plan.start_at + REGISTERED_AT + 0.5 - time.time(), 0))
            await self.work()
            return

    async def work(self) -> None:
        wire = self.wire
        while True:
            wait = min(self.plan.long_poll_s, self.left() - 1.0)
            if wait <= 0:
                return
            status, body = await self.request("task", "GET", f"/task?wait={wait:.2f}")
            if status == 200:
                job = wire.decode_job(body, len(body))
                if not await self.train(job):
                    return
            elif status == wire.REGISTER_AGAIN:
                await self.request("register", "POST", "/register", data=b"{}")
            elif status != wire.NO_JOB:
                return

    async def train(self, job: Any) -> bool:
        """Sleep like training, heartbeating; upload; False when the test time is up."""
        lo, hi = self.plan.train_s
        until = time.time() + lo + self.rng.random() * (hi - lo)
        while time.time() < until:
            await asyncio.sleep(min(self.plan.heartbeat_s, until - time.time()))
            if self.left() < 1.0:
                return False
            if time.time() < until:
                await self.request("heartbeat", "POST", "/heartbeat",
                                   data=b'{"peak_memory": 1000000, "state": "training"}')
        meta = {"job_id": job.job_id, "version": str(job.version), "num_samples": "100",
                "grad_variance": repr(0.5 + self.rng.random()), "peak_memory": "1000000"}
        body = self.bodies.body(meta)
        first = time.perf_counter()
        while True:
            status, reply = await self.request("update", "POST", "/update", body,
                                               self.wire.TENSOR_TYPE)
            if status != 503 or self.left() < 1.0:
                break
            # The server is busy: resend this same update after Retry-After (plus jitter, so
            # the deferred devices do not come back at once), as the agent retries it.
            self.stats["deferred"] += 1
            await asyncio.sleep(float(self.retry_after) + self.rng.random() * 0.5)
        if status in (200, 422):
            self.stats["latency"]["update (end to end)"].append(time.perf_counter() - first)
        if status in (200, 422):
            doc = json.loads(reply)
            self.stats["accepted" if doc.get("accepted") else "refused"] += 1
            self.stats["per_device"][self.name] += bool(doc.get("accepted"))
            if not doc.get("accepted"):
                self.stats["refused_by"][str(doc.get("reason"))] += 1
        return self.left() > 1.0


class _UpdateBodies:
    """Update bodies for one delta under each job's metadata, without re-encoding tensors.

    A safetensors body is an 8-byte header length, a JSON header (tensor offsets plus
    "__metadata__") and the tensor bytes: the delta's header entries and bytes are kept and only
    the metadata changes per job. Decoding and re-encoding the tensors for every upload was
    ~45% of a device process's CPU, taken from the server on the same cores. The server parses
    these as any agent's body (the same bytes safetensors writes, metadata aside).
    """

    def __init__(self, template: bytes) -> None:
        (size,) = struct.unpack("<Q", template[:8])
        self.entries = {k: v for k, v in json.loads(template[8:8 + size]).items()
                        if k != "__metadata__"}
        self.data = template[8 + size:]

    def body(self, meta: Dict[str, str]) -> bytes:
        header = json.dumps({"__metadata__": meta, **self.entries},
                            separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
        return struct.pack("<Q", len(header)) + header + self.data


def run_clients(plan: ClientPlan) -> Dict[str, Any]:
    """Client process: run its devices until stop_at; return counts and latencies."""
    from ftte_cli.server.runner import raise_fd_limit

    raise_fd_limit()
    try:  # the lighter loop where installed: the devices' CPU is taken from the server's
        import uvloop
    except ImportError:
        return asyncio.run(_clients(plan))
    return uvloop.run(_clients(plan))


async def _clients(plan: ClientPlan) -> Dict[str, Any]:
    import aiohttp
    import torch

    from ftte_cli.engine import serialize

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(plan.seed)
    delta = {k: 1e-3 * torch.randn(tuple(s), generator=gen) for k, s in plan.shapes.items()}
    template = serialize.tensors_to_bytes(delta, {})
    stats: Dict[str, Any] = {"latency": defaultdict(list), "status": defaultdict(int),
                             "errors": defaultdict(int), "refused_by": defaultdict(int),
                             "accepted": 0, "refused": 0, "registered": 0, "deferred": 0,
                             "update_at": [],
                             "per_device": {n: 0 for n in plan.names}}
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=plan.long_poll_s + 30.0)
    probe = _ServerProbe()  # its loop-lag watcher, here on the devices' own loop
    watcher = asyncio.create_task(probe.watch_lag())
    cpu0 = time.process_time()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        bodies = _UpdateBodies(template)
        devices = [_Device(plan, n, session, stats, bodies) for n in plan.names]
        await asyncio.gather(*(d.run() for d in devices))
    watcher.cancel()
    stats["cpu_s"] = time.process_time() - cpu0
    stats["lags"] = probe.lags
    stats["latency"] = dict(stats["latency"])
    for key in ("status", "errors", "refused_by"):
        stats[key] = dict(stats[key])
    return stats


# ---- orchestration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadResult:
    """What one load test measured."""

    devices: int
    registered: int
    duration_s: float
    accepted_client: int  # "accepted" replies the devices received
    accepted_coordinator: int  # the coordinator's count
    accepted_server: int  # the server's (dashboard) count
    refused: Dict[str, int]
    errors: Dict[str, int]
    versions: int
    accepted_per_s: float
    latency: Dict[str, Dict[str, float]]  # endpoint -> {count, p50_ms, p99_ms}
    rss_start: int
    rss_registered: int
    rss_end: int
    rss_peak: int
    per_device_bytes: int  # (RSS with every device registered and jobs queued - before) / devices
    per_device_end_bytes: int  # (RSS at the end - RSS before) / devices
    rss_samples: List[int]  # server RSS every 5 s from the first registration
    handler: Dict[str, Dict[str, float]]  # server-side handler time per endpoint
    loop_lag: Dict[str, float]  # server event-loop lag (p50/p99 ms)
    fairness: Dict[str, float]  # accepted updates per device: min, p50, max, share of devices >0
    queued: Dict[str, Dict[str, float]]  # device sent -> server handler start, per endpoint
    update_phases: Dict[str, Dict[str, float]]  # an update's server time by phase (UPDATE_PHASES)
    gc: Dict[str, float]  # the server's garbage-collector pauses
    cpu: Dict[str, float]  # CPU seconds over the devices' run: server, clients; load average
    client_lag: Dict[str, float]  # the client processes' own event-loop lag
    offered: Dict[str, float]  # requests per second the devices sent, per endpoint
    deferred: int = 0  # updates answered 503 + Retry-After and sent again (not lost)
    steady_update: Optional[Dict[str, float]] = None  # update latency from STEADY_AFTER s on
    label: str = "now"  # which server code ran ("main" for a --baseline run)

    @property
    def lost(self) -> int:
        """Accepted replies the coordinator does not know about (must be 0)."""
        return self.accepted_client - self.accepted_coordinator


def _merge(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"latency": defaultdict(list), "errors": defaultdict(int),
                           "refused_by": defaultdict(int), "accepted": 0, "registered": 0,
                           "per_device": [], "cpu_s": 0.0, "lags": [], "deferred": 0,
                           "steady": []}
    for p in parts:
        out["steady"].extend(lat for at, lat in zip(p["update_at"], p["latency"].get("update", []))
                             if at >= STEADY_AFTER)
        out["deferred"] += p["deferred"]
        out["cpu_s"] += p["cpu_s"]
        out["lags"].extend(p["lags"])
        out["per_device"].extend(p["per_device"].values())
        out["accepted"] += p["accepted"]
        out["registered"] += p["registered"]
        for k, v in p["latency"].items():
            out["latency"][k].extend(v)
        for key in ("errors", "refused_by"):
            for k, v in p[key].items():
                out[key][k] += v
    return out


def _percentiles(values: List[float]) -> Dict[str, float]:
    if len(values) < 2:
        v = values[0] * 1e3 if values else 0.0
        return {"count": len(values), "p50_ms": v, "p99_ms": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"count": len(values), "p50_ms": round(q[49] * 1e3, 2), "p99_ms": round(q[98] * 1e3, 2)}


def load_test(devices: int = 1000, duration: float = 90.0, procs: int = 2, seed: int = 0,
              concurrency: int = 200, buffer_size: int = 10, train_s: tuple = (0.5, 2.0),
              heartbeat_s: float = 1.0, long_poll_s: float = 10.0,
              server_root: Optional[str] = None, label: str = "now",
              max_in_flight: int = 0) -> LoadResult:
    """Start the server child, run the devices for `duration` seconds, gather the figures.

    `server_root`: a checkout whose ftte_cli the server child imports (a --baseline run of
    another commit's server against the same devices); default this tree's."""
    cmd = [sys.executable, __file__, "--serve", "--devices", str(devices), "--seed", str(seed),
           "--concurrency", str(concurrency), "--buffer-size", str(buffer_size)]
    if server_root is not None:
        cmd += ["--server-root", server_root]
    if max_in_flight:
        cmd += ["--max-in-flight", str(max_in_flight)]
    # Its own session: where the kernel shares CPU between sessions (autogroup, as on the
    # development machine) the server then competes as one party, not inside the devices'
    # share; in a real fleet the devices are not on the server's machine at all.
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdin is not None and child.stdout is not None
        hello = json.loads(child.stdout.readline() or "{}")
        if "url" not in hello:
            raise RuntimeError("loadtest: the server child did not start")
        time.sleep(0.5)
        rss_start = rss_bytes(child.pid)
        names = device_names(devices)
        start = time.time() + 3.0  # client processes import torch first
        plans = [ClientPlan(hello["url"], names[i::procs], hello["shapes"], seed, start,
                            start + duration, train_s, heartbeat_s, long_poll_s)
                 for i in range(procs)]
        with ProcessPoolExecutor(procs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_clients, p) for p in plans]
            time.sleep(max(start - time.time(), 0.0))
            server_cpu0 = cpu_seconds(child.pid)
            rss_registered, samples = _rss_series(child.pid, hello["url"], seed, start,
                                                  duration)
            merged = _merge([f.result() for f in futures])
        server_cpu = cpu_seconds(child.pid) - server_cpu0
        load1 = os.getloadavg()[0]
        rss_end = rss_bytes(child.pid)
        child.stdin.write("stop\n")
        child.stdin.flush()
        final = json.loads(child.stdout.readline() or "{}")
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    return LoadResult(
        devices=devices, registered=merged["registered"], duration_s=duration,
        accepted_client=merged["accepted"], accepted_coordinator=final["coordinator_accepted"],
        accepted_server=final["server_accepted"], refused=dict(merged["refused_by"]),
        errors=dict(merged["errors"]), versions=final["version"],
        accepted_per_s=round(final["coordinator_accepted"] / duration, 2),
        latency={k: _percentiles(v) for k, v in sorted(merged["latency"].items())},
        rss_start=rss_start, rss_registered=rss_registered, rss_end=rss_end,
        rss_peak=final["peak_rss"],
        per_device_bytes=max(rss_registered - rss_start, 0) // max(devices, 1),
        per_device_end_bytes=max(rss_end - rss_start, 0) // max(devices, 1),
        rss_samples=samples, handler=final["handler"], loop_lag=final["loop_lag"],
        fairness=_fairness(merged["per_device"]), queued=final["queued"],
        update_phases=final["update_phases"], gc=final["gc"],
        cpu={"server_s": round(server_cpu, 1), "clients_s": round(merged["cpu_s"], 1),
             "load_avg_1m": round(load1, 2)},
        client_lag=_percentiles(merged["lags"]),
        offered={k: round(len(v) / duration, 1) for k, v in sorted(merged["latency"].items())},
        deferred=merged["deferred"], label=label, steady_update=_percentiles(merged["steady"]),
    )


def _fairness(counts: List[int]) -> Dict[str, float]:
    """How evenly jobs went round: long-polls must not starve some devices."""
    if not counts:
        return {"min": 0, "p50": 0, "max": 0, "served": 0.0}
    counts = sorted(counts)
    return {"min": counts[0], "p50": counts[len(counts) // 2], "max": counts[-1],
            "served": round(sum(c > 0 for c in counts) / len(counts), 3)}


def _all_registered(url: str, seed: int) -> bool:
    """Whether the server shows no device still waiting to register (GET /v1/status)."""
    import urllib.request

    from ftte_cli.client import wire

    name = device_names(1)[0]
    req = urllib.request.Request(url + wire.API + "/status",
                                 headers=wire.auth_headers(name, token_for(name, seed)))
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc = json.loads(resp.read())
    return all(d["status"] != "waiting" for d in doc["devices"])


def _rss_series(pid: int, url: str, seed: int, start: float, duration: float) -> tuple:
    """(RSS once every device registered, RSS every 5 s from the start until the end)."""
    samples = [rss_bytes(pid)]
    registered = 0
    t = start + 5.0
    while t < start + duration:
        while not registered and time.time() < t:
            if time.time() >= start and _all_registered(url, seed):
                registered = rss_bytes(pid)
            else:
                time.sleep(0.25)
        time.sleep(max(t - time.time(), 0.0))
        samples.append(rss_bytes(pid))
        t += 5.0
    return registered or rss_bytes(pid), samples


def render(res: LoadResult, fmt: str) -> None:
    """Print the result as a table or JSON."""
    doc = {**res.__dict__, "lost": res.lost}
    if fmt == "json":
        print(json.dumps(doc, indent=2))
        return
    from ftte_cli.units import format_size

    print(f"{res.devices} devices ({res.registered} registered), {res.duration_s:g} s, "
          f"{res.versions} versions")
    print(f"accepted updates: {res.accepted_coordinator} at the coordinator, "
          f"{res.accepted_client} told accepted -> lost {res.lost}; "
          f"{res.accepted_per_s:.1f} accepted/s; refused {res.refused or 0}; "
          f"errors {res.errors or 0}; deferred (503 + Retry-After, sent again) {res.deferred}")
    print(f"server RSS: start {format_size(res.rss_start)}, registered "
          f"{format_size(res.rss_registered)}, end {format_size(res.rss_end)}, peak "
          f"{format_size(res.rss_peak)}; per device {format_size(res.per_device_bytes)} "
          f"(registered), {format_size(res.per_device_end_bytes)} (end)")
    print("server RSS every 5 s (MiB): "
          + " ".join(f"{s / 2**20:.0f}" for s in res.rss_samples))
    f = res.fairness
    print(f"accepted updates per device: min {f['min']}, median {f['p50']}, max {f['max']}; "
          f"{f['served']:.1%} of devices served")
    lag = res.loop_lag
    print(f"server event-loop lag: p50 {lag['p50_ms']:.2f} ms, p99 {lag['p99_ms']:.2f} ms")
    print(f"{'endpoint':<14}{'requests':>10}{'client p50':>12}{'client p99':>12}"
          f"{'server p50':>12}{'server p99':>12}   (ms)")
    for name, row in res.latency.items():
        srv = res.handler.get(name, {"p50_ms": float("nan"), "p99_ms": float("nan")})
        print(f"{name:<14}{row['count']:>10}{row['p50_ms']:>12.2f}{row['p99_ms']:>12.2f}"
              f"{srv['p50_ms']:>12.2f}{srv['p99_ms']:>12.2f}")


# ---- coordinator profile (no HTTP: where the coordinator thread's time goes) ----------------

PROFILE_PHASES = ("decode", "validate+ingest", "aggregate", "evaluate", "next_jobs")
# Measured on main before issue 14 at the defaults (1,000 devices, C = 200, 90 s; the devices'
# own pace allows ~160/s there), for the side-by-side; --concurrency 1000 measures capacity.
BEFORE = {"accepted_per_s": 147.0, "p99_ms": 82.0, "lost": 0}
# The profile on main before issue 14 part A's coordinator changes (idle index, one-pass
# finiteness check, aggregation without float64 copies, evaluation with the frozen prefix kept):
# the lightest of three runs alternated with the new code on the shared 2-core machine
# (load average ~7; the new code's lightest read 269 us), microseconds per update.
PROFILE_BEFORE = {"decode": 37.0, "validate+ingest": 138.3, "aggregate": 29.3,
                  "evaluate": 186.4, "next_jobs": 41.0, "total": 433.1}


def coordinator_profile(devices: int = 1000, updates: int = 2000, seed: int = 0,
                        concurrency: int = 200, buffer_size: int = 10) -> Dict[str, Any]:
    """Microseconds per accepted update spent in each phase of the coordinator thread's work,
    measured in-process on the load test's coordinator, plan and update bodies: decode (the
    safetensors body -> tensors; on the event loop or a pool thread in the server), validation
    + buffering, aggregation (the strategy's step when the buffer is full), evaluation (every
    eval_every versions) and next_jobs (dispatch). Deterministic work, so it can be compared
    across commits on a loaded machine better than the HTTP figures can."""
    import torch

    from ftte_cli.client import wire
    from ftte_cli.engine.coordinator import Update

    coord = build_coordinator(devices, seed, concurrency, buffer_size)
    spent = dict.fromkeys(PROFILE_PHASES, 0.0)

    def timed(phase: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[phase] += time.perf_counter() - t0
        return wrapper

    strategy = coord.strategy
    strategy._step = timed("aggregate", strategy._step)  # type: ignore[attr-defined]
    coord._evaluate = timed("evaluate", coord._evaluate)
    gen = torch.Generator().manual_seed(seed)
    bodies = [wire.encode_update(wire.UpdateMessage(
        "j", 0, 100, 0.5, None,
        {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in coord.subset.items()}))
        for _ in range(8)]
    bound = 1 << 30
    jobs = coord.next_jobs(0.0)
    start = time.perf_counter()
    for i in range(updates):
        job = jobs.pop(0)
        t0 = time.perf_counter()
        msg = wire.decode_update(bodies[i % len(bodies)], bound)
        t1 = time.perf_counter()
        coord.submit(Update(job.job_id, job.client_id, job.version, msg.delta, 100,
                            0.5 + 0.1 * (i % 7), None), float(i))
        t2 = time.perf_counter()
        jobs.extend(coord.next_jobs(float(i)))
        t3 = time.perf_counter()
        spent["decode"] += t1 - t0
        spent["validate+ingest"] += t2 - t1
        spent["next_jobs"] += t3 - t2
    total = time.perf_counter() - start
    spent["validate+ingest"] -= spent["aggregate"] + spent["evaluate"]
    per = {k: round(v / updates * 1e6, 1) for k, v in spent.items()}
    return {"updates": updates, "devices": devices, "versions": coord.version,
            "us_per_update": per, "total_us_per_update": round(total / updates * 1e6, 1),
            "updates_per_s_one_core": round(updates / total, 1)}


def render_profile(prof: Dict[str, Any]) -> None:
    """The profile as one line per phase."""
    total = prof["total_us_per_update"]
    print(f"coordinator profile, {prof['devices']} devices, {prof['updates']} updates in-process "
          f"({prof['versions']} versions): {total / 1e3:.2f} ms per update = "
          f"{prof['updates_per_s_one_core']:.0f} updates/s on one core")
    print(f"  {'phase':<16}{'now':>8}  {'share':>6}  {'before':>8}")
    for phase, us in prof["us_per_update"].items():
        print(f"  {phase:<16}{us / 1e3:>8.3f} ms  {us / total:>6.1%}  "
              f"{PROFILE_BEFORE[phase] / 1e3:>8.3f} ms")
    print(f"  {'total':<16}{total / 1e3:>8.3f} ms  {'':>6}  "
          f"{PROFILE_BEFORE['total'] / 1e3:>8.3f} ms (before: main, see PROFILE_BEFORE)")


def render_breakdown(res: LoadResult) -> None:
    """Where a request's time goes, what the devices offered, and who used the CPU."""
    cpu = res.cpu
    print(f"CPU over the devices' {res.duration_s:g} s: server {cpu['server_s']:.1f} s "
          f"({cpu['server_s'] / res.duration_s:.0%} of a core), device processes "
          f"{cpu['clients_s']:.1f} s; load average {cpu['load_avg_1m']:.2f} (2 cores here)")
    g, lag = res.gc, res.client_lag
    print(f"server GC pauses: {g['count']} collections, p99 {g['p99_ms']:.2f} ms, max "
          f"{g['max_ms']:.2f} ms, {g['total_s']:.2f} s in all (by generation: count, s: "
          f"{g.get('by_generation')}); device processes' loop lag: "
          f"p50 {lag['p50_ms']:.2f} ms, p99 {lag['p99_ms']:.2f} ms")
    print("offered (closed loop: each device waits for its reply before its next request; "
          "jobs train a uniform 0.5-2 s sleep, heartbeat every 1 s): "
          + ", ".join(f"{k} {v:.0f}/s" for k, v in res.offered.items()))
    print("p50/p99: statistics.quantiles (inclusive) over every request of the run, client "
          "side from send to reply read; 'queued' is the device's send to the server "
          "handler's start (sockets, HTTP parsing, the server loop's backlog)")
    st = res.steady_update or {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0}
    print(f"update latency from {STEADY_AFTER:g} s on (the first wave of uploads excluded): "
          f"{st['count']} requests, p50 {st['p50_ms']:.1f} ms, p99 {st['p99_ms']:.1f} ms")
    print(f"  {'endpoint':<14}{'queued p50':>12}{'queued p99':>12}   (ms)")
    for name, row in res.queued.items():
        print(f"  {name:<14}{row['p50_ms']:>12.2f}{row['p99_ms']:>12.2f}")
    print(f"  {'update phase':<20}{'p50':>9}{'p99':>9}   (ms, in the server handler)")
    for name, row in res.update_phases.items():
        print(f"  {name:<20}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}")


def _median_row(runs: List[LoadResult]) -> Dict[str, float]:
    """The figures the goals name, each the median over `runs`."""
    def med(fn: Any) -> float:
        return float(statistics.median(fn(r) for r in runs))

    return {"accepted_per_s": med(lambda r: r.accepted_per_s),
            "update_p50_ms": med(lambda r: r.latency.get("update", {}).get("p50_ms", 0.0)),
            "update_p99_ms": med(lambda r: r.latency.get("update", {}).get("p99_ms", 0.0)),
            "e2e_p99_ms": med(lambda r: r.latency.get("update (end to end)", {}).get(
                "p99_ms", r.latency.get("update", {}).get("p99_ms", 0.0))),
            "steady_p99_ms": med(lambda r: (r.steady_update or {}).get("p99_ms", 0.0)),
            "deferred": med(lambda r: r.deferred),
            "worst_p99_ms": med(_worst_p99), "lost": med(lambda r: r.lost),
            "rss_end_mib": med(lambda r: r.rss_end / 2**20),
            "loop_lag_p99_ms": med(lambda r: r.loop_lag["p99_ms"]),
            "server_cpu_s": med(lambda r: r.cpu["server_s"]),
            "server_cpu_ms_per_update": med(lambda r: r.cpu["server_s"] * 1e3
                                            / max(r.accepted_coordinator, 1))}


def _worst_p99(res: LoadResult) -> float:
    """The highest client p99 over the requests (not 'task (none)', the long-poll wait, nor an
    update's end to end time, which spans its resends)."""
    return max((row["p99_ms"] for name, row in res.latency.items()
                if name not in ("task (none)", "update (end to end)")), default=0.0)


def render_side_by_side(runs: List[LoadResult]) -> None:
    """Every run, then the median per server code (main vs now), one line each."""
    print(f"{'run':<8}{'accepted/s':>11}{'update p50':>12}{'update p99':>12}{'steady p99':>12}"
          f"{'e2e p99':>11}"
          f"{'deferred':>9}{'worst p99':>11}"
          f"{'lost':>6}{'RSS end':>9}{'loop lag p99':>14}{'server CPU':>12}{'per update':>12}")
    labels = list(dict.fromkeys(r.label for r in runs))

    def line(name: str, row: Dict[str, float]) -> None:
        print(f"{name:<8}{row['accepted_per_s']:>11.1f}{row['update_p50_ms']:>10.1f}ms"
              f"{row['update_p99_ms']:>10.1f}ms{row['steady_p99_ms']:>10.1f}ms"
              f"{row['e2e_p99_ms']:>9.1f}ms{row['deferred']:>9.0f}"
              f"{row['worst_p99_ms']:>9.1f}ms{row['lost']:>6.0f}"
              f"{row['rss_end_mib']:>6.0f}MiB{row['loop_lag_p99_ms']:>12.1f}ms"
              f"{row['server_cpu_s']:>11.1f}s{row['server_cpu_ms_per_update']:>10.2f}ms")

    for r in runs:
        line(r.label, _median_row([r]))
    if len(runs) > len(labels):
        for label in labels:
            line(f"{label} med", _median_row([r for r in runs if r.label == label]))
    if len(labels) == 2:
        a, b = (_median_row([r for r in runs if r.label == x]) for x in labels)
        rate = b["accepted_per_s"] / max(a["accepted_per_s"], 1e-9)
        p99 = b["update_p99_ms"] / max(a["update_p99_ms"], 1e-9)
        cpu = b["server_cpu_ms_per_update"] / max(a["server_cpu_ms_per_update"], 1e-9)
        print(f"ratio {labels[1]}/{labels[0]}: accepted/s x{rate:.2f}, update p99 x{p99:.2f}, "
              f"server CPU per accepted update x{cpu:.2f} (the figure least moved by other "
              f"load on the machine: wall-clock ones depend on the CPU share the server gets)")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--duration", type=float, default=90.0, help="seconds (max 300)")
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=200, help="jobs in flight (C)")
    p.add_argument("--buffer-size", type=int, default=10)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--profile-only", action="store_true",
                   help="only the in-process coordinator profile (no server, no devices)")
    p.add_argument("--baseline", metavar="DIR",
                   help="also serve with the ftte_cli of this checkout (e.g. main's), "
                        "alternating runs with this tree's, same devices")
    p.add_argument("--repeat", type=int, default=1, help="runs of each server (medians)")
    p.add_argument("--max-in-flight", type=int, default=0,
                   help="this tree's server answers 503 + Retry-After past this many updates "
                        "in flight (ServerConfig.max_updates_in_flight; 0: no bound)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server-root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        if args.server_root:  # before anything imports ftte_cli
            sys.path.insert(0, args.server_root)
        serve(args.devices, args.seed, args.concurrency, args.buffer_size, args.max_in_flight)
        return 0
    if not 1 <= args.devices <= 5000 or not 5 <= args.duration <= 300:
        p.error("--devices must be 1..5000 and --duration 5..300 s")
    prof = coordinator_profile(args.devices, seed=args.seed, concurrency=args.concurrency,
                               buffer_size=args.buffer_size)
    if args.profile_only:
        if args.format == "json":
            print(json.dumps({**prof, "before_us_per_update": PROFILE_BEFORE}, indent=2))
        else:
            render_profile(prof)
        return 0
    servers = ([("main", str(Path(args.baseline).resolve()))] if args.baseline else []) \
        + [("now", None)]
    runs = [load_test(args.devices, args.duration, args.procs, args.seed, args.concurrency,
                      args.buffer_size, server_root=root, label=label,
                      max_in_flight=0 if root else args.max_in_flight)
            for _ in range(max(args.repeat, 1)) for label, root in servers]
    res = runs[-1]
    if args.format == "json":
        print(json.dumps({**res.__dict__, "lost": res.lost, "coordinator_profile": prof,
                          "before": BEFORE, "runs": [{**r.__dict__, "lost": r.lost}
                                                     for r in runs],
                          "medians": {label: _median_row([r for r in runs if r.label == label])
                                      for label, _ in servers}}, indent=2))
    else:
        if len(runs) > 1:
            render_side_by_side(runs)
            print(f"the last run ({res.label}) in detail:")
        render(res, args.format)
        render_breakdown(res)
        upd = res.latency.get("update", {}).get("p99_ms", float("nan"))
        print(f"before (main at the defaults, C = 200): {BEFORE['accepted_per_s']:.0f} "
              f"accepted/s, update p99 {BEFORE['p99_ms']:.0f} ms, lost {BEFORE['lost']}; now "
              f"(C = {args.concurrency}): {res.accepted_per_s:.0f} accepted/s, update p99 "
              f"{upd:.0f} ms, lost {res.lost}")
        render_profile(prof)
    return 0 if all(r.lost == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
