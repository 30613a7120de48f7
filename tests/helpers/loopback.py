"""Test helpers for the server, agent and train tests: a tiny model, plan and loopback server.

Everything is real (torch training, aiohttp on a loopback port, urllib); only sizes are tiny so
each test runs in seconds on 2 cores.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import torch

from ftte_cli.client import wire
from ftte_cli.config.recipe import ModelConfig, StrategyConfig
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FULL, MaskKind, ParamMask, Plan, build_plan, dense_plan
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.server.app import FtteServer
from ftte_cli.server.protocol import ServerConfig, update_bound

INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
MODEL_CFG = ModelConfig("small_cnn", 0.5)


def tiny_model() -> torch.nn.Module:
    """small_cnn at half width on 8x8 inputs (about 6k parameters)."""
    torch.manual_seed(0)
    return build_model(MODEL_CFG, INPUT_SHAPE, NUM_CLASSES)


def tiny_plan(model: torch.nn.Module, sparse: bool = True) -> Plan:
    """Head + last conv's first 4 input channels + its norm (sparse), or everything (dense)."""
    if not sparse:
        return dense_plan(model, "small_cnn")
    masks = {
        "features.2.conv.weight": ParamMask(MaskKind.channels, (0, 1, 2, 3)),
        "features.2.norm.weight": FULL, "features.2.norm.bias": FULL,
        "head.weight": FULL, "head.bias": FULL,
    }
    return build_plan(model, masks, model_name="small_cnn", method="contribution")


def make_coordinator(devices: list[str], *, strategy: str = "ftte", buffer_size: int = 1,
                     concurrency: int = 4, sparse: bool = True,
                     evaluate: Any = None) -> Coordinator:
    """A coordinator over `devices` (40 samples each) for the tiny model."""
    model = tiny_model()
    plan = tiny_plan(model, sparse and strategy == "ftte")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfg = StrategyConfig(name=strategy, buffer_size=buffer_size, max_concurrency=concurrency)
    return Coordinator(params, plan, make_strategy(cfg), {d: 40 for d in devices},
                       CoordinatorConfig(strategy=cfg, eval_every=1), seed=1, evaluate=evaluate)


def make_server(coord: Coordinator, tokens: dict[str, str], events: list[dict],
                **config: Any) -> FtteServer:
    """An FtteServer whose events land in `events`."""
    cfg = ServerConfig(run_id="test-run", tokens=tokens, plan_sha256="0" * 64,
                       update_max_bytes=update_bound(coord.subset), **config)
    return FtteServer(coord, cfg, strategy=coord.strategy.name,
                      buffer_size=coord.config.strategy.buffer_size, on_event=events.append)


class Http:
    """A device's view of the server over real HTTP (urllib), with its credentials."""

    def __init__(self, url: str, device: str, token: str) -> None:
        self.base = url + wire.API
        self.headers = wire.auth_headers(device, token)

    def call(self, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[dict[str, str]] = None, timeout: float = 30.0) -> tuple[int, bytes]:
        """(status, body) of one request; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={**self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            data = err.read()
            err.close()
            return err.code, data

    def register(self) -> dict[str, Any]:
        status, body = self.call("POST", "/register", b"{}")
        assert status == 200, (status, body)
        return json.loads(body)

    def task(self, wait: float = 5.0) -> tuple[int, Optional[wire.JobMessage]]:
        status, body = self.call("GET", f"/task?wait={wait}")
        if status != 200:
            return status, None
        return status, wire.decode_job(body, 10 * 2**20)

    def update(self, job: wire.JobMessage, delta: dict[str, torch.Tensor],
               num_samples: int = 40) -> tuple[int, dict[str, Any]]:
        msg = wire.UpdateMessage(job.job_id, job.version, num_samples, 0.1, 1000, delta)
        status, body = self.call("POST", "/update", wire.encode_update(msg),
                                 {"Content-Type": wire.TENSOR_TYPE})
        return status, json.loads(body) if body.startswith(b"{") else {}

    def heartbeat(self, peak: int = 123) -> int:
        body = wire.dumps({"peak_memory": peak, "state": "idle"})
        return self.call("POST", "/heartbeat", body)[0]


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every record of an events.jsonl file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- bundles and agent processes ------------------------------------------------------------

def tiny_fed(num_clients: int, per_client: int = 60, seed: int = 0) -> Any:
    """A learnable 10-class task on 8x8 inputs: each class is a fixed pattern plus noise."""
    from ftte_cli.engine.data.dataset import ClientData, Dataset, FederatedData

    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(NUM_CLASSES, *INPUT_SHAPE, generator=gen)

    def sample(n: int) -> Dataset:
        y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        x = patterns[y] + 0.8 * torch.randn(n, *INPUT_SHAPE, generator=gen)
        return Dataset(x.float(), y)

    clients = [ClientData(i, sample(per_client), sample(10)) for i in range(num_clients)]
    return FederatedData(clients, sample(50), sample(300), NUM_CLASSES, INPUT_SHAPE,
                         [str(c) for c in range(NUM_CLASSES)])


def tiny_recipe(strategy: str = "ftte", buffer_size: int = 2, concurrency: int = 4) -> Any:
    """A recipe for the tiny model (names only matter to the bundle and the agent)."""
    from dataclasses import replace as _replace

    from ftte_cli.config.recipe import Recipe, StopConfig, TrainConfig

    return Recipe(name="tiny", seed=3, model=MODEL_CFG,
                  train=TrainConfig(epochs=1, batch_size=16, lr=0.1),
                  strategy=_replace(StrategyConfig(), name=strategy, buffer_size=buffer_size,
                                    max_concurrency=concurrency),
                  stop=StopConfig(target_accuracy=0.9, max_versions=1000, eval_every=1))


def local_devices(names: list[str], workdir: Path) -> list[Any]:
    """`connection: local` devices running this venv's python."""
    import sys

    from ftte_cli.config.inventory import Device

    return [Device(name=n, host="localhost", connection="local", python=sys.executable,
                   workdir=str(workdir / n)) for n in names]


def write_bundles(root: Path, names: list[str], recipe: Any, plan: Plan, fed: Any,
                  params: dict[str, torch.Tensor]) -> dict[str, Path]:
    """Real bundles (fleet/bundle.py) for local devices; device -> bundle folder."""
    from ftte_cli.fleet.bundle import build_bundles

    built = build_bundles(recipe, local_devices(names, root / "work"), plan, fed=fed,
                          params=params, root=root / "bundles")
    return {n: b.path for n, b in built.items()}


def start_agent(bundle: Path, url: str, *extra: str, log: Optional[Path] = None) -> Any:
    """The agent as a real process from its bundle's runtime zipapp."""
    import subprocess
    import sys

    out = open(log or bundle / "agent.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, str(bundle / "ftte-agent.pyz"), "--bundle", str(bundle), "--server",
         url, "--wait", "2", "--heartbeat", "0.5", "--threads", "1", "--backoff-max", "1", *extra],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tiny_run(tmp: Path, names: list[str], *, strategy: str = "ftte", buffer_size: int = 2,
             concurrency: int = 4) -> tuple[Any, Plan, Any, dict[str, Path], Coordinator]:
    """Recipe, plan, data, bundles and a server-side coordinator with test-set evaluation."""
    from ftte_cli.engine.train import evaluate

    recipe = tiny_recipe(strategy, buffer_size, concurrency)
    model = tiny_model()
    plan = tiny_plan(model, sparse=strategy == "ftte")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    fed = tiny_fed(len(names))
    bundles = write_bundles(tmp, names, recipe, plan, fed, params)
    coord = Coordinator(params, plan, make_strategy(recipe.strategy),
                        {n: 60 for n in names},
                        CoordinatorConfig(strategy=recipe.strategy, eval_every=1), seed=1,
                        evaluate=lambda p: evaluate(model, p, fed.test))
    return recipe, plan, fed, bundles, coord


def bundle_tokens(bundles: dict[str, Path]) -> dict[str, str]:
    """Device -> token, as the server loads them."""
    return {n: (p / "token").read_text().strip() for n, p in bundles.items()}
