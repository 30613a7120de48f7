"""The tiny simulator recipe (8 clients, a half-width har_cnn, a few versions) and seeded shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ftte_cli.config.recipe import Recipe, load_recipe
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.sim.runner import StrategyResult

TINY = """
name: tiny
seed: 3
data: {dataset: synthetic_har, windows: 900, subjects: 8, partition: iid}
model: {name: har_cnn, width: 0.5}
train: {epochs: 1, batch_size: 16, lr: 0.05}
strategy: {buffer_size: 2, max_concurrency: 4}
plan: {memory_budget: %s, proxy_steps: 2}
stop: {target_accuracy: 0.99, max_versions: 6, time_limit: 10000, eval_every: 2}
sim: {clients: 8, stragglers: 0.5, dropout_rate: %s, return_after: 5}
"""


def tiny_recipe(tmp_path: Path, budget: str = "1GB", dropout: float = 0.0) -> Recipe:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % (budget, dropout))
    return load_recipe(path)


# A sparse FTTE plan (600 KB, well under full training), dropout on so lost jobs (never submitted)
# interleave with trained ones, a few versions: the backend-equality tests' world.
BACKEND = """
name: {name}
seed: 5
data: {{dataset: synthetic_har, windows: {windows}, subjects: 10, partition: iid}}
model: {{name: har_cnn, width: 0.5}}
train: {{epochs: 1, batch_size: 16, lr: 0.05}}
strategy: {{buffer_size: 3, max_concurrency: 8}}
plan: {{memory_budget: 600KB, proxy_steps: 2}}
stop: {{target_accuracy: 0.99, max_versions: 5, time_limit: 100000, eval_every: 1}}
sim: {{clients: {clients}, stragglers: 0.3, dropout_rate: 0.1, return_after: 5}}
"""


def backend_recipe_text(name: str, clients: int, windows: int) -> str:
    """The backend-equality recipe for `clients` simulated clients over `windows` windows."""
    return BACKEND.format(name=name, clients=clients, windows=windows)


def assert_same_result(a: StrategyResult, b: StrategyResult) -> None:
    """Two runs of one strategy gave the same metrics, summary, plan and clients."""
    assert a.metrics.to_dict() == b.metrics.to_dict()  # evals (accuracy, loss), bytes, staleness
    assert a.summary == b.summary
    assert a.plan == b.plan and a.clients == b.clients


# Ragged on purpose: an empty shard, one shorter than a batch, exactly one batch, partial last.
SIZES = (0, 5, 16, 37, 50, 23)


def make_shards(shape: tuple[int, ...], classes: int, sizes: tuple[int, ...] = SIZES
                ) -> List[Dataset]:
    """Seeded random client shards of the given sizes (the batched-backend tests' data)."""
    gen = torch.Generator().manual_seed(7)
    return [Dataset(torch.randn((n, *shape), generator=gen),
                    torch.randint(0, classes, (n,), generator=gen)) for n in sizes]


def cli_strategies(recipe: Path, out: Path, backend: Optional[str], *extra: str
                   ) -> List[Dict[str, Any]]:
    """`ftte simulate --format json` of ftte and fedavg on 12 clients with `--backend backend`
    (None: the default): each strategy's figures less the timings, which differ between
    backends by nature."""
    from typer.testing import CliRunner

    from ftte_cli.cli import app

    res = CliRunner().invoke(app, [
        "simulate", "-r", str(recipe), "--strategies", "ftte,fedavg", "--clients", "12",
        "--until", "limit", "--eval-samples", "200",
        *(["--backend", backend] if backend else []), *extra,
        "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    return [{k: v for k, v in s.items() if k not in ("wall_s", "cpu_s", "train_cpu_s")}
            for s in json.loads(res.output)["strategies"]]
