"""What `ftte simulate` is asked for (`SimSettings`) and what it returns (`SimResult`, one
`StrategyResult` per strategy), shared by the world set-up, the loop and the run directory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ftte_cli.config.recipe import Recipe
from ftte_cli.engine.metrics import RunMetrics, RunSummary
from ftte_cli.startmodel import StartInfo


@dataclass(frozen=True)
class SimSettings:
    """What to simulate (flags override the recipe's `sim` section)."""

    recipe: Recipe
    strategies: Tuple[str, ...] = ("ftte", "fedbuff", "fedavg")
    clients: Optional[int] = None  # default: recipe.data.clients, else recipe.sim.clients
    stragglers: Optional[float] = None  # default: recipe.sim.stragglers
    seed: Optional[int] = None  # default: recipe.seed
    fleet: Optional[Path] = None  # profiles JSON to replay instead of the distribution
    budget_fraction: Optional[float] = None  # FTTE budget as a fraction of full training memory
    stop_at_target: bool = True  # end each strategy once it reaches the target accuracy
    eval_samples: Optional[int] = 1000  # global test samples per evaluation (seeded subset)


@dataclass(frozen=True)
class PlanInfo:
    """The figures of one plan a strategy trained with."""

    method: str
    trainable_params: int
    total_params: int
    estimated_bytes: int  # training memory per device
    payload_bytes: int  # per job, down + up
    earliest_layer: Optional[str]
    units: List[str]


@dataclass(frozen=True)
class ClientRef:
    """A simulated client named in a result (e.g. one strict FedAvg left out)."""

    client: str  # coordinator id
    device: str  # DeviceModel name
    device_class: Optional[str]
    memory_bytes: int  # usable training memory M_i


@dataclass(frozen=True)
class StrategyResult:
    """One strategy's run."""

    name: str
    summary: RunSummary
    metrics: RunMetrics
    plan: PlanInfo
    clients: int  # clients that took part
    excluded: int  # left out under baseline_memory strict
    wall_s: float
    cpu_s: float  # process CPU of the whole run
    train_cpu_s: float  # process CPU inside train_job
    excluded_clients: List[ClientRef] = field(default_factory=list)  # strict FedAvg left out
    over_memory: List[ClientRef] = field(default_factory=list)  # kept, plan overflows (lenient)
    energy: Optional[Dict[str, Any]] = None  # sim_energy(): estimated joules (see there)


@dataclass(frozen=True)
class SimResult:
    """Every strategy's result and the shared set-up."""

    seed: int
    clients: int
    stragglers: float
    budget_bytes: int
    budget_source: str
    full_training_bytes: int
    target_accuracy: float
    results: List[StrategyResult]
    notes: List[str] = field(default_factory=list)
    fleet: Dict[str, int] = field(default_factory=dict)  # device class -> clients
    start: Optional[StartInfo] = None  # the initial model every strategy started from


Progress = Callable[[str, float, int, Optional[float]], None]  # strategy, time, version, acc


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a / b, None when either is missing or b is 0 (e.g. a target never reached)."""
    if a is None or b is None or b == 0 or math.isnan(b):
        return None
    return a / b
