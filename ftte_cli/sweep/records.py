"""What a sweep folder holds: its set-up (sweep.json) and one record per finished run.

The runner writes these and the comparison reads them; neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional

from ftte_cli.config.recipe import Recipe, recipe_from_dict
from ftte_cli.errors import ConfigError
from ftte_cli.rundir.store import read_json
from ftte_cli.sweep.grid import Axis, GridSpec, RunSpec, Scalar

SWEEP_FILE = "sweep.json"
RECORD_FILE = "record.json"


class RunStatus(str, Enum):
    """How a run of the grid ended."""

    ok = "ok"  # the run finished (whether or not it reached the target)
    failed = "failed"  # the run raised; `error` says why


@dataclass(frozen=True)
class RunRecord:
    """One finished run of the grid: the figures the comparison pools over seeds."""

    run_id: str
    group: str  # strategy + overrides: the comparison row
    strategy: str
    seed: int
    overrides: dict[str, Scalar]
    status: RunStatus
    run_dir: str
    error: Optional[str] = None
    stop_reason: Optional[str] = None
    time_to_target: Optional[float] = None  # wall (fleet) or virtual (simulate) seconds
    final_accuracy: Optional[float] = None
    best_accuracy: Optional[float] = None
    payload_to_target: Optional[int] = None
    payload_total: Optional[int] = None
    versions: Optional[int] = None
    elapsed: Optional[float] = None
    memory_per_device: Optional[int] = None  # the plan's training memory estimate
    peak_memory_by_class: dict[str, int] = field(default_factory=dict)  # measured (fleet)


@dataclass(frozen=True)
class SweepSetup:
    """A sweep's fixed set-up, as written to (or read from) sweep.json."""

    recipe: Recipe
    grid: GridSpec
    simulate: bool
    inventory: Optional[Path]
    limit: Optional[str]
    fleet: Optional[Path]


def read_record(out: Path, run: RunSpec) -> Optional[RunRecord]:
    """The run's record if it finished, else None."""
    path = out / "runs" / run.run_id / RECORD_FILE
    if not path.exists():
        return None
    raw = read_json(path)
    try:
        return RunRecord(**{**raw, "status": RunStatus(raw["status"])})
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: malformed run record ({err}); delete it to run again") \
            from None


def read_sweep(out: Path) -> SweepSetup:
    path = out / SWEEP_FILE
    if not path.exists():
        raise ConfigError(f"{out}: no {SWEEP_FILE} (not a sweep directory)")
    doc = read_json(path)
    try:
        grid = doc["grid"]
        spec = GridSpec(tuple(grid["strategies"]), tuple(int(s) for s in grid["seeds"]),
                        tuple(Axis(a["key"], tuple(a["values"])) for a in grid["axes"]))
        recipe = recipe_from_dict(doc["recipe"], f"{path}: recipe")
        return SweepSetup(recipe, spec, bool(doc["simulate"]), _opt_path(doc.get("inventory")),
                      doc.get("limit"), _opt_path(doc.get("fleet")))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: malformed sweep file ({err})") from None


def _opt_path(s: Optional[str]) -> Optional[Path]:
    return None if s is None else Path(s)
