"""Bytes on the wire per job (FTTE vs FedAvg) and server throughput with 50 clients on loopback.

    .venv/bin/python benchmarks/wire.py [--recipe recipes/har.yaml] [--clients 50]
                                        [--seconds 10] [--max-updates 3000] [--format json]

Part 1 (bytes per job): the recipe's model under its FTTE plan (budget = 20% of full training
memory, the paper's setting, or 20% of the way from head-only to full when 20% cannot hold the
head; method gradnorm to keep it quick) and under the dense plan FedAvg
trains. One client takes jobs and uploads deltas of the plan's shape; the server counts the HTTP
body bytes it sends (job) and receives (update) per device, which is what crosses the wire besides
HTTP headers.

Part 2 (throughput): the same server with `--clients` concurrent clients in a separate process
(aiohttp, one task per client) that long-poll, upload a precomputed delta and poll again, for
`--seconds` seconds or `--max-updates` accepted updates, whichever comes first. Sparse and dense
side by side. No training happens (clients echo a fixed delta), so this measures the server:
HTTP, safetensors decoding, validation and aggregation on its single coordinator thread.
Loopback only; the clients and the server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ftte_cli.client import wire
from ftte_cli.config.recipe import Recipe, StrategyConfig, load_recipe
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import Plan, dense_plan
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.errors import BudgetInfeasible
from ftte_cli.server.app import FtteServer
from ftte_cli.server.protocol import ServerConfig, update_bound
from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import StopReason
from ftte_cli.units import format_size


@dataclass(frozen=True)
class WireRow:
    """Bytes per job of one plan, measured at the server."""

    plan: str
    trainable_params: int
    job_bytes: float  # server -> device body per job
    update_bytes: float  # device -> server body per job
    total_bytes: float


@dataclass(frozen=True)
class ThroughputRow:
    """Server throughput for one plan."""

    plan: str
    clients: int
    accepted: int
    seconds: float
    updates_per_s: float
    versions: int


def plans(recipe: Recipe, fraction: float) -> dict[str, tuple[torch.nn.Module, Plan]]:
    """The FTTE plan at `fraction` of full training memory, and the dense plan."""
    from ftte_cli.engine.data import load_federated
    from ftte_cli.engine.selection import make_plan

    fed = load_federated(replace(recipe.data, windows=min(recipe.data.windows, 2000)), 4,
                         recipe.seed)
    shape = tuple(fed.input_shape)
    model = build_model(recipe.model, shape, fed.num_classes)
    dense = dense_plan(model, recipe.model.name)
    full = training_memory(model, dense, recipe.train.batch_size, shape).total
    quick = replace(recipe, plan=replace(recipe.plan, method="gradnorm"))
    try:
        sparse = make_plan(model, quick, fed, int(full * fraction), shape, fed.num_classes)
    except BudgetInfeasible as err:  # cannot hold the head: that far from head-only to full
        budget = err.smallest_bytes + int((full - err.smallest_bytes) * fraction)
        sparse = make_plan(model, quick, fed, budget, shape, fed.num_classes)
    return {"ftte (sparse)": (model, sparse), "fedavg (dense)": (model, dense)}


def make_server(model: torch.nn.Module, plan: Plan, names: list[str], buffer: int) -> FtteServer:
    """A server without evaluation whose clients are `names` (tokens = names)."""
    cfg = StrategyConfig(name="ftte" if plan.method != "dense" else "fedbuff",
                         buffer_size=buffer, max_concurrency=len(names))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    coord = Coordinator(params, plan, make_strategy(cfg), {n: 100 for n in names},
                        CoordinatorConfig(strategy=cfg, eval_every=10**9), seed=1)
    config = ServerConfig(run_id="bench", tokens={n: f"token-{n}" for n in names},
                          plan_sha256="-", update_max_bytes=update_bound(coord.subset),
                          offline_after=60.0, long_poll_max=5.0)
    return FtteServer(coord, config, strategy=cfg.name, buffer_size=buffer)


def bytes_per_job(name: str, model: torch.nn.Module, plan: Plan, jobs: int = 5) -> WireRow:
    """Run `jobs` jobs through one client; body bytes per job as the server counted them."""
    server = make_server(model, plan, ["c0"], buffer=1)
    with ServerThread(server) as st:
        asyncio.run(_clients(st.url, ["c0"], seconds=60.0, max_updates=jobs))
        row = server.snapshot().devices[0]
        n = max(row.accepted, 1)
        down, up = row.bytes_down / n, row.bytes_up / n
    return WireRow(name, plan.trainable_params, down, up, down + up)


def throughput(name: str, model: torch.nn.Module, plan: Plan, clients: int, seconds: float,
               max_updates: int) -> ThroughputRow:
    """Accepted updates per second with `clients` concurrent clients in another process."""
    names = [f"c{i}" for i in range(clients)]
    server = make_server(model, plan, names, buffer=10)
    with ServerThread(server) as st:
        spec = json.dumps({"url": st.url, "names": names, "seconds": seconds,
                           "max_updates": max_updates})
        done = subprocess.run([sys.executable, __file__, "--client-process"],
                              input=spec.encode(), check=True, timeout=seconds + 120,
                              capture_output=True)
        elapsed = float(json.loads(done.stdout)["elapsed"])  # first register to last reply
        snap = server.snapshot()
        server.finish(StopReason.max_versions)
    return ThroughputRow(name, clients, snap.accepted, elapsed, snap.accepted / elapsed,
                         snap.version)


async def _clients(url: str, names: list[str], seconds: float, max_updates: int) -> int:
    """Clients that register, long-poll, upload a fixed delta; returns updates sent."""
    import aiohttp

    deadline = time.monotonic() + seconds
    sent = [0]
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(_one_client(http, url, n, deadline, max_updates, sent)
                               for n in names))
    return sent[0]


async def _one_client(http: Any, url: str, name: str, deadline: float, max_updates: int,
                      sent: list[int]) -> None:
    headers = wire.auth_headers(name, f"token-{name}")
    base = url + wire.API
    async with http.post(f"{base}/register", data=b"{}", headers=headers) as resp:
        resp.raise_for_status()
    delta: dict[str, torch.Tensor] = {}
    while time.monotonic() < deadline and sent[0] < max_updates:
        async with http.get(f"{base}/task?wait=2", headers=headers) as resp:
            if resp.status != 200:
                continue
            job = wire.decode_job(await resp.read(), 1 << 30)
        if not delta:
            delta = {k: torch.full_like(v, 1e-4) for k, v in job.subset.items()}
        body = wire.encode_update(wire.UpdateMessage(job.job_id, job.version, 100, 0.1, None,
                                                     delta))
        async with http.post(f"{base}/update", data=body,
                             headers={**headers, "Content-Type": wire.TENSOR_TYPE}) as resp:
            await resp.read()
        sent[0] += 1


def _client_process() -> None:
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(1)
    t0 = time.monotonic()
    sent = asyncio.run(_clients(spec["url"], spec["names"], spec["seconds"], spec["max_updates"]))
    print(json.dumps({"sent": sent, "elapsed": time.monotonic() - t0}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/har.yaml"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--budget-fraction", type=float, default=0.2,
                        help="FTTE budget as a fraction of full training memory")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-updates", type=int, default=3000)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        _client_process()
        return 0
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    chosen = plans(recipe, args.budget_fraction)
    wire_rows = [bytes_per_job(name, m, p) for name, (m, p) in chosen.items()]
    thr_rows = [throughput(name, m, p, args.clients, args.seconds, args.max_updates)
                for name, (m, p) in chosen.items()]
    if args.format == "json":
        print(json.dumps({"bytes_per_job": [asdict(r) for r in wire_rows],
                          "throughput": [asdict(r) for r in thr_rows]}, indent=2))
        return 0
    _print(wire_rows, thr_rows, recipe)
    return 0


def _print(wire_rows: list[WireRow], thr_rows: list[ThroughputRow], recipe: Recipe) -> None:
    print(f"Bytes on the wire per job ({recipe.model.name} width {recipe.model.width}), "
          "HTTP bodies measured at the server")
    print(f"{'plan':<16}{'trainable':>12}{'job (down)':>14}{'update (up)':>14}{'total':>14}")
    for r in wire_rows:
        print(f"{r.plan:<16}{r.trainable_params:>12,}{format_size(r.job_bytes):>14}"
              f"{format_size(r.update_bytes):>14}{format_size(r.total_bytes):>14}")
    if len(wire_rows) == 2 and wire_rows[1].total_bytes:
        ratio = wire_rows[0].total_bytes / wire_rows[1].total_bytes
        print(f"FTTE / FedAvg payload per job: {ratio:.3f}")
    print()
    print("Server throughput on loopback (clients in another process, no training)")
    print(f"{'plan':<16}{'clients':>9}{'accepted':>10}{'seconds':>9}{'updates/s':>11}"
          f"{'versions':>10}")
    for r in thr_rows:
        print(f"{r.plan:<16}{r.clients:>9}{r.accepted:>10}{r.seconds:>9.1f}"
              f"{r.updates_per_s:>11.1f}{r.versions:>10}")


if __name__ == "__main__":
    sys.exit(main())
