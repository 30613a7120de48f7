"""Run a sweep's grid one run at a time, on the fleet (`ftte train`'s engine) or in the simulator.

Lifecycle of `run_sweep(opts)`:
1. a new sweep writes `<out>/sweep.json` (the recipe, the grid, the inventory, fleet or
   simulate); `--resume <out>` reads it back instead, so a resumed sweep runs the same grid;
2. every run whose `<out>/runs/<run_id>/record.json` exists is finished (ok or failed) and
   skipped; a fleet run that was cut off after its manifest was written is resumed from its last
   checkpoint (`ftte train --resume`, which also stops the agents the killed sweep left); any
   other unfinished run starts again from scratch;
3. each run gets a fresh server and coordinator (fleet) or a fresh world (simulate); unchanged
   bundles are not shipped again; a run that fails is recorded with its error and the sweep goes
   on (Ctrl-C stops the sweep; it can be resumed);
4. the records are compared (sweep/compare.py): `comparison.json` and PNGs in `<out>`.

    <out>/sweep.json                what to run (enough to resume)
    <out>/recipes/<run_id>.yaml     each fleet run's recipe (strategy, seed, --set applied)
    <out>/runs/<run_id>/            the run directory (train or simulate layout) + record.json
    <out>/fleet.json                simulate: the inventory's measured profiles, when replayed
    <out>/comparison.json, time_to_target.png, accuracy.png
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import Recipe, load_recipe, recipe_to_dict
from ftte_cli.errors import ConfigError, FtteError
from ftte_cli.fleet.ssh import SshOptions
from ftte_cli.rundir.store import write_json
from ftte_cli.sweep.compare import GroupStats, compare, write_comparison
from ftte_cli.sweep.grid import GridSpec, RunSpec, apply, expand
from ftte_cli.sweep.records import (
    RECORD_FILE,
    SWEEP_FILE,
    RunRecord,
    RunStatus,
    SweepSetup,
    read_record,
    read_sweep,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOptions:
    """What `ftte sweep` was asked for (a resume needs only `out` and `resume=True`)."""

    out: Path
    recipe: Optional[Path] = None
    inventory: Optional[Path] = None
    grid: Optional[GridSpec] = None
    simulate: bool = False
    limit: Optional[str] = None
    fleet: Optional[Path] = None  # simulate: profiles to replay (default: the inventory's)
    resume: bool = False
    ssh: SshOptions = field(default_factory=SshOptions)
    bundle_root: Path = Path(".ftte")
    offline_after: float = 10.0


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: every record (this call's and earlier ones) and the comparison."""

    out: Path
    simulate: bool
    records: list[RunRecord]
    ran: list[str]  # run ids executed by this call
    skipped: list[str]  # run ids already finished before this call
    comparison: list[GroupStats]  # one row per strategy (+ overrides), pooled over seeds
    plots: list[Path]

    @property
    def failed(self) -> list[RunRecord]:
        """The runs that raised."""
        return [r for r in self.records if r.status == RunStatus.failed]


OnRun = Callable[[RunSpec, Optional[RunRecord]], None]  # called before (None) and after a run


def run_sweep(opts: SweepOptions, on_run: Optional[OnRun] = None) -> SweepResult:
    """Run every missing run of the grid, then compare (see the module docstring)."""
    sweep = read_sweep(opts.out) if opts.resume else _fresh(opts)
    runs = expand(sweep.grid)
    done = {r.run_id: r for r in (read_record(opts.out, run) for run in runs) if r is not None}
    ran = []
    for run in runs:
        if run.run_id in done:
            continue
        if on_run is not None:
            on_run(run, None)
        record = _one(sweep, run, opts)
        write_json(opts.out / "runs" / run.run_id / RECORD_FILE, record)
        done[run.run_id] = record
        ran.append(run.run_id)
        if on_run is not None:
            on_run(run, record)
    records = [done[r.run_id] for r in runs]
    rows = compare(records)
    plots = write_comparison(opts.out, records, rows, sweep.recipe.stop.target_accuracy)
    return SweepResult(opts.out, sweep.simulate, records, ran,
                       [r.run_id for r in runs if r.run_id not in ran], rows, plots)


# ---- sweep.json -----------------------------------------------------------------------------


def _fresh(opts: SweepOptions) -> SweepSetup:
    if opts.recipe is None or opts.grid is None:
        raise ConfigError("sweep: --recipe is required (or --resume DIR)")
    if not opts.simulate and opts.inventory is None:
        raise ConfigError("sweep: --inventory is required on the fleet (or use --simulate)")
    if (opts.out / SWEEP_FILE).exists():
        raise ConfigError(f"{opts.out}: already holds a sweep; use --resume {opts.out} or "
                          "another --out")
    recipe = load_recipe(opts.recipe)
    inventory = opts.inventory.resolve() if opts.inventory is not None else None
    sweep = SweepSetup(recipe, opts.grid, opts.simulate, inventory, opts.limit,
                   opts.fleet.resolve() if opts.fleet is not None else None)
    for run in expand(opts.grid):  # every --set value is checked before the first run
        apply(recipe, run)
    opts.out.mkdir(parents=True, exist_ok=True)
    write_json(opts.out / SWEEP_FILE, {
        "kind": "sweep", "simulate": sweep.simulate, "recipe_path": str(opts.recipe),
        "recipe": recipe_to_dict(recipe), "inventory": _opt_str(inventory),
        "limit": opts.limit, "fleet": _opt_str(sweep.fleet),
        "grid": {"strategies": list(opts.grid.strategies), "seeds": list(opts.grid.seeds),
                 "axes": [{"key": a.key, "values": list(a.values)} for a in opts.grid.axes]},
        "runs": [r.run_id for r in expand(opts.grid)],
    })
    return sweep


def _opt_str(p: Optional[Path]) -> Optional[str]:
    return None if p is None else str(p)


# ---- one run --------------------------------------------------------------------------------


def _one(sweep: SweepSetup, run: RunSpec, opts: SweepOptions) -> RunRecord:
    """Run one grid point; any failure becomes a failed record (Ctrl-C stops the sweep)."""
    run_dir = opts.out / "runs" / run.run_id
    try:
        recipe = apply(sweep.recipe, run)
        if sweep.simulate:
            return _simulated(sweep, run, recipe, run_dir, opts)
        return _on_fleet(sweep, run, recipe, run_dir, opts)
    except Exception as err:  # noqa: BLE001 - a failed run is data; the sweep goes on
        detail = str(err) if isinstance(err, FtteError) else f"{type(err).__name__}: {err}"
        log.warning("sweep run %s failed: %s", run.run_id, detail)
        return _record(run, run_dir, RunStatus.failed, error=detail or type(err).__name__)


def _record(run: RunSpec, run_dir: Path, status: RunStatus, **figures: Any) -> RunRecord:
    return RunRecord(run_id=run.run_id, group=run.group, strategy=run.strategy, seed=run.seed,
                     overrides=dict(run.overrides), status=status, run_dir=str(run_dir),
                     **figures)


def _on_fleet(sweep: SweepSetup, run: RunSpec, recipe: Recipe, run_dir: Path,
              opts: SweepOptions) -> RunRecord:
    import yaml  # type: ignore[import-untyped]

    from ftte_cli.config.inventory import load_inventory
    from ftte_cli.train.run import TrainOptions, run_training

    assert sweep.inventory is not None
    base = TrainOptions(ssh=opts.ssh, dashboard=False, quiet=True,
                        bundle_root=opts.bundle_root, offline_after=opts.offline_after)
    if (run_dir / "manifest.json").exists():  # cut off mid-run: continue from its checkpoint
        train_opts = replace(base, resume=run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        recipe_path = opts.out / "recipes" / f"{run.run_id}.yaml"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        train_opts = replace(base, recipe=recipe_path, inventory=sweep.inventory,
                             limit=sweep.limit, run_dir=run_dir)
    result = run_training(train_opts)
    devices = load_inventory(sweep.inventory).devices
    s = result.summary
    return _record(run, run_dir, RunStatus.ok, stop_reason=result.stop_reason.value,
                   time_to_target=result.time_to_target, final_accuracy=result.final_accuracy,
                   best_accuracy=result.best_accuracy,
                   payload_to_target=s.get("payload_to_target"),
                   payload_total=s.get("payload_total"), versions=result.version,
                   elapsed=result.elapsed, memory_per_device=s.get("memory_per_device"),
                   peak_memory_by_class=peak_by_class(result.devices, devices))


def peak_by_class(rows: list[dict[str, Any]], devices: dict[str, Device]) -> dict[str, int]:
    """Largest measured peak memory per device class (the device name when it has no class)."""
    out: dict[str, int] = {}
    for row in rows:
        peak = row.get("peak_memory")
        if not isinstance(peak, int):
            continue
        device = devices.get(str(row.get("name")))
        cls = (device.device_class if device is not None else None) or str(row.get("name"))
        out[cls] = max(out.get(cls, 0), peak)
    return dict(sorted(out.items()))


def _simulated(sweep: SweepSetup, run: RunSpec, recipe: Recipe, run_dir: Path,
               opts: SweepOptions) -> RunRecord:
    from ftte_cli.rundir.sim import RunWriter
    from ftte_cli.sim.runner import SimSettings, simulate

    clients, fleet = _sim_fleet(sweep, opts.out)
    settings = SimSettings(recipe=recipe, strategies=(run.strategy,), clients=clients,
                           fleet=fleet, stop_at_target=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    writer = RunWriter(run_dir)
    result = simulate(settings, None, writer.on_eval)
    writer.finish(settings, result)
    s = result.results[0].summary
    return _record(run, run_dir, RunStatus.ok,
                   stop_reason="target" if s.time_to_target is not None else "limit",
                   time_to_target=s.time_to_target, final_accuracy=s.final_accuracy,
                   best_accuracy=s.best_accuracy, payload_to_target=s.payload_to_target,
                   payload_total=s.payload_total, versions=s.versions, elapsed=s.duration,
                   memory_per_device=s.memory_per_device)


def _sim_fleet(sweep: SweepSetup, out: Path) -> tuple[Optional[int], Optional[Path]]:
    """(clients, profiles file): one simulated client per selected device, replaying their
    measured profiles when every one was benchmarked; else the recipe's sim distribution."""
    if sweep.fleet is not None:
        return None, sweep.fleet
    if sweep.inventory is None:
        return None, None
    from ftte_cli.config.inventory import load_inventory
    from ftte_cli.fleet.budget import load_profiles, profiles_path

    devices = load_inventory(sweep.inventory).select(sweep.limit)
    records = load_profiles(profiles_path(sweep.inventory))
    chosen = [records.get(d.name) for d in devices]
    keys = ("sec_per_sample_fwd", "sec_per_sample_bwd", "bandwidth_bps", "rtt_s")
    if all(r is not None and all(r.get(k) is not None for k in keys) for r in chosen):
        path = out / "fleet.json"
        write_json(path, {"devices": chosen})
        return len(devices), path
    log.info("sweep --simulate: not every device has a benchmarked profile; simulating %d "
             "clients from the recipe's sim section", len(devices))
    return len(devices), None
