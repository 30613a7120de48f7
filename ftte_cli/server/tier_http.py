"""The aggregator tier's HTTP front on Ray Serve: the device protocol of `server/app.py`.

Lifecycle: `start_front(tier, port=...)` (Ray and a tier from `server/tier.py` already up) runs
`DeviceFront` as Ray Serve replicas behind Serve's HTTP proxy on 127.0.0.1:`port` (or another
host) and returns the URL an agent's `--server` takes; `stop_front()` removes it. The routes are
`server/app.py`'s under /v1: register, task (long-poll), update, heartbeat; the agent
(`client/agent.py`) runs against it unchanged.

A replica holds no device state: it bounds every body before reading it (the plan's update
bound, JSON_MAX_BYTES for JSON), passes the headers and the body to the device's aggregator,
which authenticates the device and reads the update, and maps the answer to the protocol's
status codes. Devices are spread over the live aggregators by a stable hash of their name; when
an aggregator dies the replica tells the coordinator, answers 503 and routes the device's next
request (the agent registers again after a 5xx) to a live one. Limits, compared with the single
server: /task polls the coordinator (20 ms, doubling up to 0.5 s) instead of waking on dispatch;
heartbeats only authenticate (no power or memory readings, no dashboard); no /status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

from ftte_cli.client import wire
from ftte_cli.server.tier import Tier, Verdict, import_ray

log = logging.getLogger(__name__)
APP_NAME = "ftte-tier"
LONG_POLL_MAX = 30.0  # cap on ?wait=, as ServerConfig.long_poll_max
POLL_FIRST, POLL_MAX = 0.02, 0.5  # /task re-asks the coordinator at these intervals (s)
LIVE_TTL = 5.0  # s: a replica re-reads the live aggregators this often (new ones get devices)


class TooLarge(Exception):
    """A body over its bound (read no further)."""


def route(device: str, count: int) -> int:
    """The index of a device's aggregator among `count` live ones (stable across replicas)."""
    return zlib.crc32(device.encode()) % count


class DeviceFront:
    """Serve replica body: HTTP in, aggregator calls out (see the module docstring)."""

    def __init__(self, coordinator: Any, run_id: str, plan_sha256: str, bound: int) -> None:
        self.coordinator = coordinator
        self.run_id = run_id
        self.plan_sha256 = plan_sha256
        self.bound = bound
        self.live: List[Tuple[str, Any]] = []  # (actor id, handle) of the live aggregators
        self.live_at = 0.0  # when `live` was read: re-read after LIVE_TTL s or a death

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response  # noqa: PLC0415

        path, method = request.url.path, request.method
        headers = dict(request.headers)
        device = headers.get(wire.DEVICE_HEADER.lower(), "")
        # starlette lower-cases names; authenticate() looks them up as the protocol spells them
        creds = {wire.DEVICE_HEADER: device,
                 wire.AUTH_HEADER: headers.get(wire.AUTH_HEADER.lower(), "")}
        import ray  # noqa: PLC0415

        try:
            if method == "POST" and path == f"{wire.API}/register":
                wire.loads(await _read(request, wire.JSON_MAX_BYTES), wire.JSON_MAX_BYTES)
                await self._call(device, "register", creds, retry=True)
                return JSONResponse({"client_id": device, "run_id": self.run_id,
                                     "plan_sha256": self.plan_sha256})
            if method == "GET" and path == f"{wire.API}/task":
                body = await self._task(device, creds, request.query_params.get("wait", "0"))
                if body is None:
                    return Response(status_code=wire.NO_JOB)
                return Response(body, media_type=wire.TENSOR_TYPE)
            if method == "POST" and path == f"{wire.API}/update":
                verdict = await self._call(device, "update", creds,
                                           await _read(request, self.bound))
                return _update_reply(verdict)
            if method == "POST" and path == f"{wire.API}/heartbeat":
                await _read(request, wire.JSON_MAX_BYTES)
                version = await self._call(device, "heartbeat", creds, retry=True)
                return JSONResponse({"version": version})
            return Response("no such route", status_code=404)
        except PermissionError:
            return Response("unknown device or wrong token", status_code=wire.UNAUTHORIZED)
        except TooLarge as err:
            return Response(str(err), status_code=wire.TOO_LARGE)
        except wire.WireError as err:
            return Response(str(err)[:200], status_code=400)
        except ray.exceptions.RayActorError:
            return Response("aggregator gone: register again", status_code=503)

    async def _task(self, device: str, creds: Dict[str, str], wait_arg: str) -> Optional[bytes]:
        try:
            wait = min(max(float(wait_arg), 0.0), LONG_POLL_MAX)
        except ValueError:
            raise wire.WireError("wait: not a number") from None
        deadline, pause = time.monotonic() + wait, POLL_FIRST
        while True:
            body: Optional[bytes] = await self._call(device, "task", creds)
            left = deadline - time.monotonic()
            if body is not None or left <= 0:
                return body
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX)

    async def _call(self, device: str, method: str, *args: Any, retry: bool = False) -> Any:
        """One call on the device's aggregator; a dead one is reported to the coordinator and
        the error raised, or (`retry`: calls that change nothing twice) the call goes to the
        device's aggregator among the live ones. An update is never sent twice: the dead one
        may have forwarded it."""
        import ray  # noqa: PLC0415

        if not self.live or time.monotonic() - self.live_at > LIVE_TTL:
            self.live = await self.coordinator.live_aggregators.remote()
            self.live_at = time.monotonic()
        if not self.live:
            raise ray.exceptions.RayActorError()
        actor_id, handle = self.live[route(device, len(self.live))]
        try:
            return await getattr(handle, method).remote(*args)
        except ray.exceptions.RayActorError:
            log.warning("aggregator %s is gone", actor_id)
            await self.coordinator.detach.remote(actor_id)
            self.live = []
            if not retry:
                raise
        return await self._call(device, method, *args)

async def _read(request: Any, bound: int) -> bytes:
    """The request body, refused (before reading it all) when over `bound` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > bound:
        raise TooLarge(f"declared {declared} bytes, bound {bound}")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > bound:
            raise TooLarge(f"body over the bound of {bound} bytes")
    return bytes(buf)


def _update_reply(verdict: Verdict) -> Any:
    from starlette.responses import Response  # noqa: PLC0415

    status = {"too_large": wire.TOO_LARGE, "malformed": 400}.get(verdict.reason or "", 422)
    body = {"accepted": verdict.accepted, "reason": verdict.reason, "version": verdict.version}
    return Response(json.dumps(body), status_code=200 if verdict.accepted else status,
                    media_type="application/json")


def start_front(tier: Tier, *, port: int, host: str = "127.0.0.1", replicas: int = 2,
                run_id: str = "tier", plan_sha256: str = "") -> str:
    """Serve `DeviceFront` x `replicas` for `tier` on host:port; returns the server URL."""
    import_ray()
    from ray import serve  # noqa: PLC0415

    serve.start(http_options={"host": host, "port": port})
    front = serve.deployment(name="device-front", num_replicas=replicas,
                             ray_actor_options={"num_cpus": 0},
                             max_ongoing_requests=256)(DeviceFront)
    serve.run(front.bind(tier.coordinator, run_id, plan_sha256, tier.bound), name=APP_NAME,
              route_prefix="/")
    return f"http://{host}:{port}"


def stop_front() -> None:
    """Remove the front (Serve's proxy and controller go with `ray.shutdown`)."""
    from ray import serve  # noqa: PLC0415

    serve.delete(APP_NAME)
