"""The aggregator tier on loopback against one server: the same devices, the same HTTP protocol.

    .venv/bin/python benchmarks/tier_load.py [--devices 40] [--updates 400] [--buffer 10]
                                             [--aggregators 2] [--replicas 2]
                                             [--inline-max BYTES] [--format table|json]

Devices are asyncio tasks with one aiohttp session each, in this process: each registers, asks
for a job (`/v1/task?wait=1`), and uploads a sparse delta shaped by the load test's FTTE plan of
har_cnn (head + a quarter of the last conv's input channels; `benchmarks/loadtest.py`) at once:
no training, the servers are what is measured. Bounded: every side stops after `--updates`
accepted updates (or 120 s). Loopback only (127.0.0.1). The sides, one after the other:
- one server: `FtteServer` on a `ServerThread` in a child process (what `ftte train` runs);
- tier: `server/tier.py` (coordinator actor + `--aggregators` aggregators) behind
  `server/tier_http.py`'s Ray Serve front (`--replicas` replicas), on a local Ray with 2 CPUs.
Both aggregate with ftte (buffer `--buffer`) and evaluate 300 synthetic HAR windows every 5
versions. Reported per side: accepted updates/s, update p50/p99, versions, the lost-update check
(accepted replies = the coordinator's accepted count) and what reaches the coordinator per
version (one server: K update bodies; tier: the aggregators' partial sums). On 2 cores the tier
is slower: it runs the same work in more processes plus Serve's proxy; what it changes is where
the work can go once there is more than one machine (docs/SCALING.md, section 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import build_coordinator, device_names, token_for  # noqa: E402

HOST = "127.0.0.1"
SEED = 7
DEADLINE_S = 120.0


@dataclass
class Side:
    """One side's figures."""

    side: str
    accepted: int
    wall_s: float
    updates_per_s: float
    p50_ms: float
    p99_ms: float
    versions: int
    coordinator_accepted: int
    lost: int  # accepted replies the coordinator does not count (must be 0)
    bytes_in_per_version: int  # what the coordinator's process receives per version


def _spec_parts(devices: int, buffer: int) -> Any:
    return build_coordinator(devices, SEED, concurrency=devices, buffer_size=buffer)


def _delta_pool(subset: Dict[str, Any], n: int = 16) -> List[Dict[str, Any]]:
    import torch

    gen = torch.Generator().manual_seed(SEED)
    return [{k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in subset.items()}
            for _ in range(n)]


async def _devices(url: str, names: List[str], target: int, bound: int) -> Tuple[int, List[float]]:
    """Drive the devices until `target` accepted replies (or the deadline)."""
    import aiohttp

    from ftte_cli.client import wire

    accepted, latencies = 0, []
    started = time.monotonic()
    pool: List[Dict[str, Any]] = []

    async def one(name: str) -> None:
        nonlocal accepted
        headers = wire.auth_headers(name, token_for(name, SEED))
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{url}{wire.API}/register", data=b"{}") as resp:
                assert resp.status == 200, await resp.text()
            while accepted < target and time.monotonic() - started < DEADLINE_S:
                async with http.get(f"{url}{wire.API}/task?wait=1") as resp:
                    if resp.status != 200:
                        continue
                    job = wire.decode_job(await resp.read(), bound * 4)
                if not pool:
                    pool.extend(_delta_pool(job.subset))
                delta = pool[int(job.job_id[1:]) % len(pool)]
                body = wire.encode_update(wire.UpdateMessage(job.job_id, job.version, 100, 0.5,
                                                             None, delta))
                t0 = time.monotonic()
                async with http.post(f"{url}{wire.API}/update", data=body) as resp:
                    reply = await resp.json(content_type=None)
                latencies.append(time.monotonic() - t0)
                accepted += bool(reply.get("accepted"))

    await asyncio.gather(*(one(n) for n in names))
    return accepted, latencies


def _single_server(devices: int, buffer: int, port_q: Any, done_q: Any) -> None:
    """Child process: one FtteServer until the parent says stop; sends back its counts."""
    from ftte_cli.server.app import FtteServer
    from ftte_cli.server.protocol import ServerConfig, update_bound
    from ftte_cli.server.runner import ServerThread

    coord = _spec_parts(devices, buffer)
    names = device_names(devices)
    cfg = ServerConfig(run_id="tier-load", tokens={n: token_for(n, SEED) for n in names},
                       plan_sha256="0" * 64, update_max_bytes=update_bound(coord.subset))
    server = FtteServer(coord, cfg, strategy="ftte", buffer_size=buffer)
    with ServerThread(server, host=HOST, port=0) as st:
        port_q.put(st.url)
        done_q.get()
        counts = st.server.call(lambda c: (c.metrics.accepted, c.version))
    port_q.put(counts)


def run_single(devices: int, updates: int, buffer: int) -> Side:
    from ftte_cli.client import wire
    from ftte_cli.server.protocol import update_bound

    ctx = multiprocessing.get_context("spawn")
    port_q, done_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_single_server, args=(devices, buffer, port_q, done_q))
    proc.start()
    url = port_q.get(timeout=120)
    coord = _spec_parts(devices, buffer)
    bound = update_bound(coord.subset)
    t0 = time.monotonic()
    accepted, lat = asyncio.run(_devices(url, device_names(devices), updates, bound))
    wall = time.monotonic() - t0
    done_q.put("stop")
    coord_accepted, versions = port_q.get(timeout=120)
    proc.join(60)
    body = len(wire.encode_update(wire.UpdateMessage("j0000001", 0, 100, 0.5, None,
                                                     _delta_pool(coord.subset, 1)[0])))
    return _side("one server (aiohttp)", accepted, lat, wall, versions, coord_accepted,
                 buffer * body)


def run_tier(devices: int, updates: int, buffer: int, aggregators: int, replicas: int,
             inline_max: Optional[int]) -> Side:
    import ray

    from ftte_cli.server.tier import CoordinatorSpec, start_tier
    from ftte_cli.server.tier_http import start_front, stop_front

    coord = _spec_parts(devices, buffer)
    spec = CoordinatorSpec(dict(coord.params), coord.plan, coord.config.strategy,
                           {n: 100 for n in device_names(devices)}, coord.config, SEED,
                           coord._evaluate)
    # Ray inlines task results under 100 KiB into their owner's memory: with its default the
    # handed-over deltas (~53 KB for this plan) sit in the coordinator's process (not decoded,
    # not summed there); --inline-max 1024 keeps them in the object store
    config = {} if inline_max is None else {"max_direct_call_object_size": inline_max}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024, _system_config=config)
    try:
        tier = start_tier(spec, {n: token_for(n, SEED) for n in device_names(devices)},
                          aggregators)
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        url = start_front(tier, port=port, replicas=replicas)
        t0 = time.monotonic()
        accepted, lat = asyncio.run(_devices(url, device_names(devices), updates, tier.bound))
        wall = time.monotonic() - t0
        summary = ray.get(tier.coordinator.summary.remote())
        stop_front()
    finally:
        ray.shutdown()
    versions = max(summary["version"], 1)
    return _side(f"tier ({aggregators} aggregators, {replicas} Serve replicas)", accepted, lat,
                 wall, summary["version"], summary["metrics"]["accepted"],
                 summary["partial_bytes"] // versions)


def _side(name: str, accepted: int, lat: List[float], wall: float, versions: int,
          coord_accepted: int, bytes_in: int) -> Side:
    ordered = sorted(lat) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Side(name, accepted, round(wall, 2), round(accepted / wall, 1),
                round(statistics.median(ordered) * 1e3, 1), round(p99 * 1e3, 1), versions,
                coord_accepted, accepted - coord_accepted, bytes_in)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--buffer", type=int, default=10)
    parser.add_argument("--aggregators", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--inline-max", type=int, default=None,
                        help="Ray's max_direct_call_object_size (default: Ray's, 100 KiB)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    sides = [run_single(args.devices, args.updates, args.buffer),
             run_tier(args.devices, args.updates, args.buffer, args.aggregators, args.replicas,
                      args.inline_max)]
    if args.format == "json":
        print(json.dumps([asdict(s) for s in sides], indent=2))
        return 0
    one, tier = sides
    print(f"{args.devices} devices, ftte K={args.buffer}, {args.updates} updates per side, "
          "loopback")
    print(f"{'side':<42}{'upd/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'versions':>10}{'lost':>6}"
          f"{'into coord/version':>20}")
    for s in sides:
        print(f"{s.side:<42}{s.updates_per_s:>8}{s.p50_ms:>9}{s.p99_ms:>9}{s.versions:>10}"
              f"{s.lost:>6}{s.bytes_in_per_version:>20,}")
    print(f"tier / one server: updates/s {tier.updates_per_s / max(one.updates_per_s, 1e-9):.2f}x,"
          f" bytes into the coordinator per version "
          f"{tier.bytes_in_per_version / max(one.bytes_in_per_version, 1):.2f}x (tier: partial sums"
          "; handed-over deltas are Ray objects the coordinator owns, inline under "
          "--inline-max)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
