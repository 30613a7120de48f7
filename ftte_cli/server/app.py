"""The aiohttp server around the Coordinator (docs/ARCHITECTURE.md, "Wire protocol").

Lifecycle: build an `FtteServer` from a coordinator and a `ServerConfig`, serve `make_app()` (the
runner in `server/runner.py` does it on a background thread), let agents register, long-poll for
jobs and upload updates; call `finish(reason)` to end the run (every endpoint then answers 410 and
the agents exit). Every coordinator call runs on one worker thread, so aggregation and evaluation
never block long-polls or heartbeats; the dashboard reads immutable snapshots under a lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from aiohttp import web

from ftte_cli.client import power, wire
from ftte_cli.engine.coordinator import (
    ClientState,
    Coordinator,
    RejectReason,
    SubmitResult,
    Update,
)
from ftte_cli.server.protocol import ServerConfig, ServerReason, authenticate
from ftte_cli.server.snapshot import (
    NOTABLE_EVENTS,
    AccuracyPoint,
    DeviceRow,
    DeviceStatus,
    EventLine,
    RunSnapshot,
    RunState,
    StopReason,
)
from ftte_cli.server.stop import rule_met

log = logging.getLogger(__name__)
T = TypeVar("T")
EventSink = Callable[[dict], None]
VersionHook = Callable[[Coordinator, float, SubmitResult], None]
# Paused devices are online (heartbeating): they wait for their own conditions, so they are
# neither offline nor stragglers; they hold no job while paused.
ONLINE = (DeviceStatus.idle, DeviceStatus.training, DeviceStatus.paused)
ISSUED_PER_DEVICE = 8  # job ids remembered per device for wrong_device checks
DECODE_OFF_LOOP_BYTES = 256 * 1024  # larger bodies are parsed (or encoded) on a worker thread


@dataclass
class _Device:
    """Mutable per-device bookkeeping, private to the server and changed under its lock."""

    name: str
    status: DeviceStatus = DeviceStatus.waiting
    version: Optional[int] = None
    staleness: Optional[int] = None
    last_seen: Optional[float] = None
    peak_memory: Optional[int] = None
    bytes_up: int = 0
    bytes_down: int = 0
    accepted: int = 0
    rejected: int = 0
    job_id: Optional[str] = None  # job delivered and not yet answered
    power: Optional[dict] = None  # the agent's last power reading (client/power.FIELDS)
    energy_j: Optional[float] = None  # energy of every job it sent back (None: none reported)
    energy_estimated: bool = False  # some of it estimated from CPU time, not a sensor
    reason: Optional[str] = None  # why it is paused


@dataclass(frozen=True)
class _Pending:
    """A job dispatched by the coordinator and not yet fetched by its device.

    Holds the message, not its bytes: w*_t is the coordinator's read-only snapshot, shared by
    every job of a version, and is encoded when the device fetches it, off the coordinator thread.
    """

    job_id: str
    version: int
    message: wire.JobMessage


class FtteServer:
    """HTTP front of one run; see the module docstring for the lifecycle."""

    def __init__(self, coordinator: Coordinator, config: ServerConfig, *, strategy: str,
                 buffer_size: int, target_accuracy: Optional[float] = None,
                 max_versions: Optional[int] = None,
                 on_event: Optional[EventSink] = None, on_version: Optional[VersionHook] = None,
                 elapsed_offset: float = 0.0,
                 get_time: Callable[[], float] = time.monotonic) -> None:
        self.coordinator = coordinator
        self.config = config
        self._strategy = strategy
        self._buffer_size = buffer_size
        self._target = target_accuracy
        self._max_versions = max_versions
        self._on_event = on_event
        self._on_version = on_version
        self._get_time = get_time
        self._t0 = get_time() - elapsed_offset
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordinator")
        self._devices = {name: _Device(name) for name in config.tokens}
        self._pending: dict[str, _Pending] = {}
        # job id -> device it was issued to, for wrong_device; the oldest ids are forgotten past
        # ISSUED_PER_DEVICE per device (a forgotten id replayed is still refused: unknown_job or
        # duplicate_job at the coordinator), so memory stays bounded per device, not per job.
        self._issued: OrderedDict[str, str] = OrderedDict()
        self._issued_cap = max(ISSUED_PER_DEVICE * len(config.tokens), 1024)
        self._events: deque[EventLine] = deque(maxlen=config.event_log_lines)
        # notable ones (offline, rejected, ...) also here, so routine ones never push them out
        self._notable: deque[EventLine] = deque(maxlen=config.event_log_lines)
        self._accept_times: deque[float] = deque()
        self._stale_sum = 0  # running figures, not a list: memory must not grow per update
        self._stale_max: Optional[int] = None
        self._accepted = 0
        self._dropped: dict[str, int] = {}
        self._accuracy: list[AccuracyPoint] = []
        self._version = coordinator.version
        self._buffer_fill = 0
        self._state = RunState.running
        self._stop_reason: Optional[StopReason] = None
        self._announced = False
        self._waiters: dict[str, asyncio.Event] = {}
        # Updates waiting for the coordinator thread, drained in batches (see _submit_update).
        self._submits: deque[tuple[Update, float, asyncio.Future[Any]]] = deque()
        self._draining = False
        self._updates_in_flight = 0  # handlers between body read and reply (loop thread only)
        self.updates_deferred = 0  # updates answered 503 + Retry-After (the agent resends them)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._monitor: Optional[asyncio.Task[None]] = None
        self._started = False
        self._first_join: Optional[float] = None
        self._carry_counters()
        # Nobody is connected yet: clients become idle when their agent registers. On --resume
        # this also releases the jobs the previous server had in flight (their agents are gone).
        for name in config.tokens:
            coordinator.client_offline(name, self.now())
        self._sync_coordinator_view()

    def _carry_counters(self) -> None:
        """On --resume the dashboard goes on counting from the checkpoint, not from 0."""
        metrics = self.coordinator.metrics
        self._accepted = metrics.accepted
        self._dropped = dict(metrics.dropped)
        self._stale_sum = sum(tau * n for tau, n in metrics.staleness.items())
        self._stale_max = max(metrics.staleness, default=None)
        for name, info in self.coordinator.client_info().items():
            if name in self._devices:
                self._devices[name].accepted = int(info["updates"])
                self._devices[name].staleness = info["last_staleness"]

    # ---- time, events, snapshots -------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the run started (continues across --resume)."""
        return self._get_time() - self._t0

    def event(self, kind: str, device: str = "", detail: str = "", **fields: Any) -> None:
        """Record an event in the log shown on the dashboard and in events.jsonl."""
        now = self.now()
        line = EventLine(now, kind, device, detail)
        with self._lock:
            self._events.append(line)
            if kind in NOTABLE_EVENTS:
                self._notable.append(line)
        record = {"t": round(now, 3), "kind": kind, "device": device, "detail": detail, **fields}
        if self._on_event is not None:
            self._on_event(record)
        log.info("%s %s %s", kind, device, detail)

    def snapshot(self) -> RunSnapshot:
        """The whole run now, as an immutable value."""
        now = self.now()
        with self._lock:
            self._prune_accept_times()
            window = min(max(now, 1e-9), 60.0)
            rows = tuple(self._row(d, now) for d in self._devices.values())
            accepted = self._accepted
            return RunSnapshot(
                run_id=self.config.run_id, strategy=self._strategy, state=self._state,
                elapsed=now, version=self._version, buffer_fill=self._buffer_fill,
                buffer_size=self._buffer_size,
                updates_per_min=len(self._accept_times) * 60.0 / window,
                staleness_mean=self._stale_sum / accepted if accepted else None,
                staleness_max=self._stale_max, accepted=accepted,
                dropped=dict(self._dropped), accuracy=tuple(self._accuracy),
                target_accuracy=self._target, devices=rows, events=self._event_lines(),
                stop_reason=self._stop_reason,
            )

    def _event_lines(self) -> tuple[EventLine, ...]:
        """Recent events plus every remembered notable one, oldest first (under the lock)."""
        oldest = self._events[0].elapsed if self._events else float("inf")
        older = [e for e in self._notable if e.elapsed < oldest]
        return (*older, *self._events)

    def _prune_accept_times(self) -> None:
        """Keep the last minute of accept times (under the lock): the rate window, bounded."""
        now = self.now()
        while self._accept_times and now - self._accept_times[0] > 60.0:
            self._accept_times.popleft()

    def _row(self, d: _Device, now: float) -> DeviceRow:
        return DeviceRow(
            name=d.name, status=d.status, version=d.version, staleness=d.staleness,
            last_seen=None if d.last_seen is None else max(now - d.last_seen, 0.0),
            peak_memory=d.peak_memory, memory_budget=self.config.memory_budgets.get(d.name),
            bytes_up=d.bytes_up, bytes_down=d.bytes_down, accepted=d.accepted,
            rejected=d.rejected, waiting_reason=d.reason, **_power_fields(d.power),
            energy_j=d.energy_j, energy_estimated=d.energy_estimated,
        )

    # ---- run control (any thread) ------------------------------------------------------------

    def finish(self, reason: StopReason) -> None:
        """End the run: every endpoint answers 410 from now on and waiting long-polls return."""
        if self._end(reason):
            self._announce_end()

    def _end(self, reason: StopReason) -> bool:
        """Mark the run done (nothing is applied after this); False if it already was."""
        with self._lock:
            if self._state == RunState.done:
                return False
            self._state, self._stop_reason = RunState.done, reason
            return True

    def _announce_end(self) -> None:
        with self._lock:
            reason, already = self._stop_reason, self._announced
            self._announced = True
        if reason is None or already:
            return
        self.event("run_finished", detail=reason.value, reason=reason.value)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_all)

    def mark_failed(self, device: str, detail: str, *, memory_peak: Optional[int] = None,
                    killed_for_memory: bool = False) -> None:
        """The orchestrator saw this device's agent die: show it as failed, or as killed for
        memory with the peak its memory cgroup reached (the dashboard's peak column)."""
        with self._lock:
            dev = self._devices[device]
            was_online = dev.status in ONLINE
            dev.status = DeviceStatus.killed_for_memory if killed_for_memory else \
                DeviceStatus.failed
            dev.job_id = None
            if memory_peak is not None:  # what the kernel saw when it killed the agent
                dev.peak_memory = memory_peak
            self._pending.pop(device, None)
        if was_online:
            self._executor.submit(self._release, device, self.now()).result()
        self.event("device_failed", device, detail)

    @property
    def done(self) -> bool:
        """True once finish() was called."""
        with self._lock:
            return self._state == RunState.done

    def close(self) -> None:
        """Stop the coordinator worker (after the HTTP side has stopped)."""
        self._executor.shutdown(wait=True)

    def call(self, fn: Callable[[Coordinator], T]) -> T:
        """Run `fn(coordinator)` on the coordinator thread and wait (checkpoints, final state)."""
        return self._executor.submit(fn, self.coordinator).result()

    # ---- coordinator thread ------------------------------------------------------------------

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _sync_coordinator_view(self) -> None:
        """Copy what the snapshot shows from the coordinator (coordinator thread or init only)."""
        c = self.coordinator
        # Only the new evaluations: this runs after every update, and a long run has thousands.
        new = [AccuracyPoint(e.time, e.version, e.accuracy, e.loss)
               for e in c.metrics.evals[len(self._accuracy):]]
        with self._lock:
            self._version = c.version
            self._buffer_fill = c.strategy.pending()
            self._accuracy.extend(new)

    def _dispatch(self, now: float) -> list[str]:
        """Ask the coordinator for jobs and queue them; returns the devices that got one."""
        got: list[str] = []
        if not self._started:
            return got
        for job in self.coordinator.next_jobs(now):
            msg = wire.JobMessage(job.job_id, job.version, job.seed, job.subset)
            with self._lock:
                self._pending[job.client_id] = _Pending(job.job_id, job.version, msg)
                self._issued[job.job_id] = job.client_id
                while len(self._issued) > self._issued_cap:
                    self._issued.popitem(last=False)
            got.append(job.client_id)
        self._sync_coordinator_view()
        return got

    def _release(self, device: str, now: float) -> None:
        """The device lost its job (offline, restarted): give the coordinator its slot back."""
        self.coordinator.client_offline(device, now)
        self._record_guard_events()
        self._dispatch(now)

    def _record_guard_events(self) -> None:
        """Move the coordinator's model-check events (roll-backs) into the event log."""
        events, self.coordinator.guard_events[:] = list(self.coordinator.guard_events), []
        for ev in events:
            self.event(ev.kind, detail=ev.detail, version=ev.version)

    def _rejoin(self, device: str, now: float) -> list[str]:
        """The device (re)registered and holds no job: anything it had in flight is lost."""
        if self.coordinator.client_state(device) != ClientState.offline:
            self.coordinator.client_offline(device, now)
        self.coordinator.client_online(device)
        self._maybe_start(now)
        return self._dispatch(now)

    def _maybe_start(self, now: float) -> None:
        """Hold the first dispatch until enough devices registered (a FedAvg round needs them)."""
        if self._started:
            return
        with self._lock:
            joined = sum(d.status != DeviceStatus.waiting for d in self._devices.values())
            if self._first_join is None and joined:
                self._first_join = now
            first = self._first_join
        enough = joined >= min(self.config.start_devices or len(self._devices), len(self._devices))
        if enough or (first is not None and now - first >= self.config.start_grace):
            self._started = True
            self.event("dispatch_started", detail=f"{joined} devices registered")

    def _submit(self, update: Update,
                now: float) -> Optional[tuple[SubmitResult, list[str]]]:
        """Submit on the coordinator thread: the verdict and the devices that got a job from the
        freed slot; None when the run ended meanwhile (nothing applied)."""
        if self.done:
            return None
        result = self.coordinator.submit(update, now)
        self._record_guard_events()
        if result.advanced:
            if self._on_version is not None:
                self._on_version(self.coordinator, now, result)
            self._apply_stop_rules()
        got: list[str] = []
        if not self.done:
            got = self._dispatch(now)
        else:
            self._sync_coordinator_view()
        return result, got

    async def _submit_update(self, update: Update,
                             now: float) -> Optional[tuple[SubmitResult, list[str]]]:
        """`_submit` on the coordinator thread, through a queue drained in batches.

        One executor job per update cost more GIL hand-offs and futures than the coordinator's
        own work on it (benchmarks/loadtest.py's profile): under load one drain applies every
        queued update in arrival order and answers them with one call back to the loop.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._submits.append((update, now, fut))
            start, self._draining = not self._draining, True
        if start:
            self._executor.submit(self._drain_submits, loop)
        return await fut

    def _drain_submits(self, loop: asyncio.AbstractEventLoop) -> None:
        """Coordinator thread: submit every queued update, then settle their futures."""
        while True:
            with self._lock:
                batch = list(self._submits)
                self._submits.clear()
                if not batch:
                    self._draining = False
                    return
            settled: list[tuple[asyncio.Future[Any], Any, Optional[BaseException]]] = []
            for update, now, fut in batch:
                try:
                    settled.append((fut, self._submit(update, now), None))
                except Exception as err:  # the handler answers 500, as run_in_executor did
                    settled.append((fut, None, err))
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, settled)

    def _apply_stop_rules(self) -> None:
        """Target accuracy and max versions end the run at the version that met them."""
        c = self.coordinator
        last = c.metrics.evals[-1] if c.metrics.evals else None
        current = last.accuracy if last is not None and last.version == c.version else None
        reason = rule_met(version=c.version, accuracy=current, target=self._target,
                          max_versions=self._max_versions)
        # The handler announces the end after recording the update that caused it.
        if reason is not None:
            self._end(reason)

    # ---- event loop side ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application (routes under /v1, body cap = the largest route bound)."""
        app = web.Application(client_max_size=self.config.client_max_size + 1)
        app.add_routes([
            web.post(f"{wire.API}/register", self._register),
            web.get(f"{wire.API}/task", self._task),
            web.post(f"{wire.API}/update", self._update),
            web.post(f"{wire.API}/heartbeat", self._heartbeat),
            web.get(f"{wire.API}/status", self._status),
        ])
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._monitor = asyncio.create_task(self._watch_offline())

    async def _cleanup(self, app: web.Application) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        self._wake_all()

    def _waiter(self, device: str) -> asyncio.Event:
        return self._waiters.setdefault(device, asyncio.Event())

    def _wake(self, devices: list[str]) -> None:
        for name in devices:
            self._waiter(name).set()

    def _wake_all(self) -> None:
        self._wake(list(self._devices))

    def _auth(self, request: web.Request) -> str:
        device = authenticate(self.config.tokens, request.headers)
        if device is None:
            claimed = request.headers.get(wire.DEVICE_HEADER, "")
            self._reject(claimed, ServerReason.wrong_token, f"{request.method} {request.path}")
            raise web.HTTPUnauthorized(text="unknown device or wrong token")
        return device

    def _reject(self, device: str, reason: Any, detail: str = "", **fields: Any) -> None:
        with self._lock:
            self._dropped[reason.value] = self._dropped.get(reason.value, 0) + 1
            if device in self._devices:
                self._devices[device].rejected += 1
        self.event("update_rejected" if reason != ServerReason.wrong_token else "auth_failed",
                   device, f"{reason.value} {detail}".strip(), reason=reason.value, **fields)

    def _check_running(self, device: str) -> None:
        if self.done:
            with self._lock:
                self._devices[device].status = DeviceStatus.done
            raise web.HTTPGone(text="run over")

    def _touch(self, device: str) -> DeviceStatus:
        with self._lock:
            dev = self._devices[device]
            dev.last_seen = self.now()
            return dev.status

    def _require_online(self, device: str) -> None:
        if self._touch(device) not in ONLINE:
            raise web.HTTPConflict(text="register first")

    async def _read_json(self, request: web.Request, device: str) -> dict:
        try:
            body = await _read_bounded(request, self.config.json_max_bytes)
            return wire.loads(body, self.config.json_max_bytes)
        except wire.BodyTooLarge as err:
            self._reject(device, ServerReason.too_large, str(err))
            raise web.HTTPRequestEntityTooLarge(self.config.json_max_bytes,
                                                request.content_length or 0) from None
        except wire.WireError as err:
            raise web.HTTPBadRequest(text=str(err)) from None

    async def _register(self, request: web.Request) -> web.Response:
        device = self._auth(request)
        self._check_running(device)
        await self._read_json(request, device)
        with self._lock:
            dev = self._devices[device]
            rejoined = dev.status in (DeviceStatus.offline, DeviceStatus.failed,
                                      DeviceStatus.killed_for_memory)
            dev.status, dev.job_id, dev.last_seen = DeviceStatus.idle, None, self.now()
        got = await self._in_worker(self._rejoin, device, self.now())
        self._wake(got)
        self.event("device_rejoined" if rejoined else "device_registered", device)
        return web.json_response({"client_id": device, "run_id": self.config.run_id,
                                  "plan_sha256": self.config.plan_sha256})

    async def _task(self, request: web.Request) -> web.Response:
        device = self._auth(request)
        self._check_running(device)
        self._require_online(device)
        try:
            wait = min(max(float(request.query.get("wait", "0")), 0.0), self.config.long_poll_max)
        except ValueError:
            raise web.HTTPBadRequest(text="wait: not a number") from None
        await self._resume(device)
        await self._recover_lost_job(device)
        deadline = self.now() + wait
        while True:
            job = self._take_job(device)
            if job is not None:
                return web.Response(body=await self._job_body(device, job),
                                    content_type=wire.TENSOR_TYPE)
            self._check_running(device)
            left = deadline - self.now()
            if left <= 0:
                self._touch(device)
                return web.Response(status=wire.NO_JOB)
            event = self._waiter(device)
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    async def _recover_lost_job(self, device: str) -> None:
        # An agent asks for work only when it holds none: a device still marked training lost
        # its job in transit (or its agent restarted without re-registering).
        with self._lock:
            dev = self._devices[device]
            lost = dev.status == DeviceStatus.training and device not in self._pending
            if lost:
                dev.status, dev.job_id = DeviceStatus.idle, None
        if lost:
            self.event("job_lost", device)
            self._wake(await self._in_worker(self._rejoin, device, self.now()))

    def _take_job(self, device: str) -> Optional[_Pending]:
        with self._lock:
            dev = self._devices[device]
            job = self._pending.pop(device, None) if dev.status in ONLINE else None
            if job is not None:
                dev.status, dev.version, dev.job_id = DeviceStatus.training, job.version, job.job_id
                dev.last_seen = self.now()
        return job

    async def _job_body(self, device: str, job: _Pending) -> bytes:
        """Encode a fetched job: small ones on the loop (a thread hop costs more than encoding
        them), large ones on the default thread pool (not the loop, not the coordinator)."""
        if wire.tensor_bytes(job.message.subset) < DECODE_OFF_LOOP_BYTES:
            body = wire.encode_job(job.message)
        else:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, wire.encode_job, job.message)
        with self._lock:
            self._devices[device].bytes_down += len(body)
        return body

    async def _update(self, request: web.Request) -> web.Response:
        device = self._auth(request)
        self._check_running(device)
        bound = self.config.max_updates_in_flight
        if bound and self._updates_in_flight >= bound:
            # Busy: the device retries this update later instead of waiting behind the others
            # (a closed loop of a thousand devices otherwise just lengthens every queue).
            self.updates_deferred += 1
            self._touch(device)  # it is alive, just early
            return web.Response(status=503, text="busy: retry later",
                                headers={"Retry-After": str(self.config.retry_after_s)})
        self._updates_in_flight += 1
        try:
            return await self._apply_update(request, device)
        finally:
            self._updates_in_flight -= 1

    async def _apply_update(self, request: web.Request, device: str) -> web.Response:
        # An offline device may still deliver the job it was issued (stalled, then resumed):
        # that late update goes to the coordinator's staleness rule, not back with a 409.
        online = self._touch(device) in ONLINE
        bound = self.config.update_max_bytes
        try:
            body = await _read_bounded(request, bound)
            msg = await self._decode_update(body, bound)
        except wire.BodyTooLarge as err:
            self._reject(device, ServerReason.too_large, str(err))
            raise web.HTTPRequestEntityTooLarge(bound, request.content_length or 0) from None
        except wire.WireError as err:
            self._reject(device, ServerReason.malformed, str(err))
            return web.json_response({"accepted": False, "reason": ServerReason.malformed.value,
                                      "detail": str(err)}, status=400)
        with self._lock:
            owner = self._issued.get(msg.job_id)
            self._devices[device].bytes_up += len(body)
        if not online and owner != device:
            raise web.HTTPConflict(text="register first")
        if owner is not None and owner != device:
            self._reject(device, ServerReason.wrong_device, f"job {msg.job_id} is {owner}'s")
            return self._update_reply(False, ServerReason.wrong_device.value)
        update = Update(job_id=msg.job_id, client_id=device, version=msg.version,
                        delta=msg.delta, num_samples=msg.num_samples,
                        grad_variance=msg.grad_variance, peak_memory=msg.peak_memory)
        submitted = await self._submit_update(update, self.now())
        if submitted is None:  # the run ended while this update waited for the coordinator
            self._check_running(device)
            raise web.HTTPServiceUnavailable(text="update not applied")
        result, got = submitted
        self._record(device, msg, result)
        if result.advanced and self.done:
            self._announce_end()
        # Only the devices given a job now: waking every device with a queued job cost
        # O(queued jobs) per update (the monitor still wakes those every second, a safety net).
        self._wake(got)
        reason = None if result.reason is None else RejectReason(result.reason).value
        return self._update_reply(result.accepted, reason, result.version,
                                  staleness=result.staleness, late=result.late)

    async def _decode_update(self, body: bytes, bound: int) -> wire.UpdateMessage:
        """Parse an update; large bodies on the default thread pool, never the coordinator's."""
        if len(body) < DECODE_OFF_LOOP_BYTES:  # a thread hop costs more than parsing this
            return wire.decode_update(body, bound)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, wire.decode_update, body, bound)

    def _update_reply(self, accepted: bool, reason: Optional[str],
                      version: Optional[int] = None, **extra: Any) -> web.Response:
        body = {"accepted": accepted, "reason": reason,
                "version": self._version if version is None else version}
        if extra.get("late"):  # only late updates say more: the agent logs the verdict
            body.update(extra)
        return web.json_response(body, status=200 if accepted else 422)

    def _record(self, device: str, msg: wire.UpdateMessage, result: SubmitResult) -> None:
        with self._lock:
            dev = self._devices[device]
            if dev.job_id == msg.job_id:
                dev.status, dev.job_id = DeviceStatus.idle, None
            if msg.peak_memory is not None:
                dev.peak_memory = max(dev.peak_memory or 0, msg.peak_memory)
            if msg.energy_j is not None:  # spent whether or not the update is accepted
                dev.energy_j = (dev.energy_j or 0.0) + msg.energy_j
                dev.energy_estimated |= msg.energy_source != "measured"
            if result.accepted:
                dev.accepted += 1
                dev.staleness = result.staleness
                stale = int(result.staleness or 0)
                self._accepted += 1
                self._stale_sum += stale
                self._stale_max = stale if self._stale_max is None else max(self._stale_max, stale)
                self._accept_times.append(self.now())
                self._prune_accept_times()
        late = " late (released when the device went offline)" if result.late else ""
        if result.accepted:
            self.event("update_accepted", device,
                       f"job {msg.job_id} v{msg.version} staleness {result.staleness}{late}"
                       + (f" -> v{result.version}" if result.advanced else "")
                       + (f" ({result.detail})" if result.clipped else ""),
                       job_id=msg.job_id, staleness=result.staleness, version=result.version,
                       clipped=result.clipped, late=result.late, **_energy_fields(msg))
        else:
            age = "" if result.staleness is None else f" staleness {result.staleness}"
            self._reject(device, RejectReason(result.reason),
                         f"job {msg.job_id}{age}{late} {result.detail}".strip(),
                         **_energy_fields(msg))

    async def _heartbeat(self, request: web.Request) -> web.Response:
        device = self._auth(request)
        self._check_running(device)
        self._require_online(device)
        body = await self._read_json(request, device)
        peak = body.get("peak_memory")
        with self._lock:
            dev = self._devices[device]
            if isinstance(peak, int) and peak >= 0:
                dev.peak_memory = max(dev.peak_memory or 0, peak)
            if isinstance(body.get("power"), dict):  # only the known fields are kept
                dev.power = {k: body["power"].get(k) for k in power.FIELDS}
        if body.get("state") == "waiting":
            await self._pause(device, str(body.get("reason") or "device conditions")[:200])
        else:
            await self._resume(device)
        return web.json_response({"version": self._version})

    # ---- device conditions (recipe devices.require, checked by the agent) --------------------

    async def _pause(self, device: str, reason: str) -> None:
        """The agent waits for its conditions: free its slot (a queued or held job goes back to
        the coordinator) and show why; it is not offline and not a straggler."""
        with self._lock:
            dev = self._devices[device]
            changed = dev.status != DeviceStatus.paused or dev.reason != reason
            was = dev.status
            dev.status, dev.reason, dev.job_id = DeviceStatus.paused, reason, None
            self._pending.pop(device, None)
            reading = dict(dev.power or {})
        if was != DeviceStatus.paused:
            await self._in_worker(self._release, device, self.now())
        if changed:
            self.event("device_waiting", device, reason, power=reading)

    async def _resume(self, device: str) -> None:
        """A paused device that heartbeats as ready (or asks for work) is counted in again."""
        with self._lock:
            dev = self._devices[device]
            paused = dev.status == DeviceStatus.paused
            if paused:
                dev.status, dev.reason = DeviceStatus.idle, None
            reading = dict(dev.power or {})
        if paused:
            self.event("device_ready", device, "conditions met", power=reading)
            self._wake(await self._in_worker(self._rejoin, device, self.now()))

    async def _status(self, request: web.Request) -> web.Response:
        self._auth(request)
        from ftte_cli.rundir.jsonable import to_jsonable

        return web.json_response(to_jsonable(self.snapshot()))

    async def _watch_offline(self) -> None:
        """Mark devices not heard from for `offline_after` seconds offline; free their jobs."""
        period = min(1.0, self.config.offline_after / 4)
        while True:
            await asyncio.sleep(period)
            now = self.now()
            with self._lock:
                gone = [d for d in self._devices.values() if d.status in ONLINE and
                        d.last_seen is not None and now - d.last_seen > self.config.offline_after]
                for d in gone:
                    d.status, d.job_id = DeviceStatus.offline, None
                    self._pending.pop(d.name, None)
            for d in gone:
                self.event("device_offline", d.name, f"not seen for {self.config.offline_after:g}s")
                await self._in_worker(self._release, d.name, now)
            if not self._started:
                await self._in_worker(self._start_if_due, now)
            if gone or self._pending:
                self._wake(list(self._pending))

    def _start_if_due(self, now: float) -> None:
        self._maybe_start(now)
        self._dispatch(now)




def _settle(settled: list[tuple[asyncio.Future[Any], Any, Optional[BaseException]]]) -> None:
    """Event loop: hand each drained update's verdict (or error) to its waiting handler."""
    for fut, result, err in settled:
        if fut.cancelled():  # the device hung up; the update was applied all the same
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(result)


def _energy_fields(msg: wire.UpdateMessage) -> dict[str, Any]:
    """The job's energy for events.jsonl (absent when the agent reported none)."""
    if msg.energy_j is None:
        return {}
    return {"energy_j": round(msg.energy_j, 4), "energy_source": msg.energy_source,
            "cpu_s": None if msg.cpu_seconds is None else round(msg.cpu_seconds, 4)}


def _power_fields(reading: Optional[dict]) -> dict[str, Any]:
    """DeviceRow's battery, charging and temperature from an agent's reading (None: missing)."""
    r = reading or {}

    def num(key: str) -> Optional[float]:
        value = r.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else None

    charging = r.get("charging")
    return {"battery": num("battery"), "temperature_c": num("temperature_c"),
            "charging": charging if isinstance(charging, bool) else None}


async def _read_bounded(request: web.Request, bound: int) -> bytes:
    """The request body, refusing (before reading it all) anything over `bound` bytes."""
    if request.content_length is not None and request.content_length > bound:
        raise wire.BodyTooLarge(f"declared {request.content_length} bytes, bound {bound}")
    buf = bytearray()
    while True:
        chunk = await request.content.read(1 << 16)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > bound:
            raise wire.BodyTooLarge(f"body over the bound of {bound} bytes")
