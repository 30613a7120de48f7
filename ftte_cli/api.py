"""The public Python API of ftte: what the `ftte` commands are built on, for scripting testbeds.

    from pathlib import Path
    from ftte_cli import api

    inv = api.load_inventory(Path(".testbed/inventory.yaml"))
    profiles = api.profile(inv.path)                   # FleetResults, values DeviceProfile
    chosen = api.plan(Path("recipes/har.yaml"), budget="2MB")
    result = api.train(Path("recipes/har.yaml"), inv.path, strategy="fedbuff")
    sweep = api.sweep(api.SweepOptions(out=Path("runs/sweep"), recipe=..., inventory=...,
                                       grid=api.grid("ftte,fedbuff", "1,2")))

Every function returns typed records (the same data the command prints with `--format json`),
raises the documented errors of `ftte_cli.errors` (`ConfigError` for a bad file or argument,
`BudgetInfeasible`, `RunError`, ...) and prints nothing. Fleet calls report per device in a
`FleetResults` (`.succeeded`, `.failed`, `.exit_code()`) instead of raising for one bad device.

Names whose modules import torch are loaded on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ftte_cli.config.inventory import Device, Inventory, load_inventory
from ftte_cli.config.recipe import Recipe, load_recipe
from ftte_cli.errors import (
    BudgetInfeasible,
    ConfigError,
    DataError,
    ExitCode,
    FleetError,
    FtteError,
    RunError,
)
from ftte_cli.fleet import adhoc
from ftte_cli.fleet.adhoc import CommandOutput
from ftte_cli.fleet.ssh import SLOW_DEVICE_SSH, DeviceResult, FleetResults, Outcome, SshOptions

if TYPE_CHECKING:
    import fabric

    from ftte_cli.engine.plan import Plan
    from ftte_cli.fleet.budget import FleetBudget
    from ftte_cli.fleet.deploy import DeployInfo
    from ftte_cli.fleet.profile import DeviceProfile
    from ftte_cli.rundir.reader import RunReport
    from ftte_cli.sim.settings import SimResult, SimSettings, StrategyResult
    from ftte_cli.sweep.compare import Comparison, GroupStats
    from ftte_cli.sweep.grid import GridSpec, RunSpec
    from ftte_cli.sweep.runner import RunRecord, RunStatus, SweepOptions, SweepResult
    from ftte_cli.testbed.lifecycle import DeviceStatus as TestbedDevice
    from ftte_cli.testbed.lifecycle import DownReport
    from ftte_cli.testbed.state import TestbedState
    from ftte_cli.train.planning import FleetPlan, fleet_plan, plan_and_deploy, shard_bytes
    from ftte_cli.train.run import TrainOptions, TrainResult
    from ftte_cli.ui.dashboard import Phases

PathLike = Union[str, Path]

# Public names defined in modules that import torch: resolved on first attribute access.
_LAZY = {
    "Plan": "ftte_cli.engine.plan",
    "DeviceProfile": "ftte_cli.fleet.profile",
    "DeployInfo": "ftte_cli.fleet.deploy",
    "FleetBudget": "ftte_cli.fleet.budget",
    "FleetPlan": "ftte_cli.train.planning",
    "fleet_plan": "ftte_cli.train.planning",
    "plan_and_deploy": "ftte_cli.train.planning",
    "shard_bytes": "ftte_cli.train.planning",
    "TrainOptions": "ftte_cli.train.run",
    "TrainResult": "ftte_cli.train.run",
    "SimSettings": "ftte_cli.sim.settings",
    "SimResult": "ftte_cli.sim.settings",
    "StrategyResult": "ftte_cli.sim.settings",
    "RunReport": "ftte_cli.rundir.reader",
    "GridSpec": "ftte_cli.sweep.grid",
    "RunSpec": "ftte_cli.sweep.grid",
    "SweepOptions": "ftte_cli.sweep.runner",
    "SweepResult": "ftte_cli.sweep.runner",
    "RunRecord": "ftte_cli.sweep.runner",
    "RunStatus": "ftte_cli.sweep.runner",
    "GroupStats": "ftte_cli.sweep.compare",
    "Comparison": "ftte_cli.sweep.compare",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


# ---- inventory and recipe -------------------------------------------------------------------


def select_devices(inventory: PathLike, limit: Optional[str] = None
                   ) -> tuple[Inventory, list[Device]]:
    """Load the inventory and apply a `--limit`-style filter (unknown name: ConfigError)."""
    inv = load_inventory(Path(inventory))
    return inv, inv.select(limit)


# ---- ad-hoc commands ------------------------------------------------------------------------


def run_command(inventory: PathLike, command: str, *, limit: Optional[str] = None,
                sudo: bool = False, ssh: Optional[SshOptions] = None,
                on_done: Optional[Callable[[DeviceResult], None]] = None) -> FleetResults:
    """Run one shell command on every selected device (`ftte exec`); values are
    `CommandOutput(rc, stdout, stderr)`, outcome ok for exit status 0, failed otherwise."""
    _inv, devices = select_devices(inventory, limit)
    return adhoc.run_command(devices, command, ssh or SshOptions(), sudo=sudo, on_done=on_done)


def fabric_group(inventory: PathLike, limit: Optional[str] = None,
                 accept_new_host_keys: bool = False, *,
                 ssh: Optional[SshOptions] = None) -> fabric.ThreadingGroup:
    """A `fabric.ThreadingGroup` of the selected devices with ftte's settings: host, user, port,
    key, jump host (a gateway), timeouts; unknown host keys refused unless
    `accept_new_host_keys`, changed ones always. Each connection's `.device` is its inventory
    `Device`. `ssh` sets known_hosts and timeouts (its accept_new_host_keys is or-ed in).
    A `connection: local` device is a ConfigError (Fabric connections are SSH only)."""
    from ftte_cli.fleet import fabric_group as fg

    opts = ssh or SshOptions()
    opts = dataclasses.replace(
        opts, accept_new_host_keys=accept_new_host_keys or opts.accept_new_host_keys)
    _inv, devices = select_devices(inventory, limit)
    return fg.fabric_group(devices, opts)


# ---- profile and plan -----------------------------------------------------------------------


def profile(inventory: PathLike, *, limit: Optional[str] = None,
            recipe: Union[PathLike, Recipe, None] = None, benchmark: bool = False,
            max_age: Optional[float] = None, ssh: Optional[SshOptions] = None,
            probe_timeout: Optional[float] = None,
            out: Optional[PathLike] = None) -> FleetResults:
    """Profile the devices (values: `DeviceProfile`) and update the inventory's profile cache.

    `benchmark` also times training steps of the recipe's model, the RTT and the upload; cached
    profiles younger than `max_age` seconds are reused. `out` also writes the records of the
    devices profiled now to that file (the cache's format)."""
    from ftte_cli.fleet import budget
    from ftte_cli.fleet import profile as prof

    if benchmark and recipe is None:
        raise ConfigError("profile: benchmark needs a recipe (the model to time)")
    _inv, devices = select_devices(inventory, limit)
    rec = recipe if isinstance(recipe, Recipe) or recipe is None else load_recipe(recipe)
    request = prof.ProfileRequest(recipe=rec, benchmark=benchmark)
    if probe_timeout is not None:
        request = dataclasses.replace(request, probe_timeout=probe_timeout)
    cache = budget.profiles_path(Path(inventory))
    results = prof.profile_fleet(devices, ssh or SshOptions(), request,
                                 budget.load_profiles(cache), max_age)
    records = prof.save_profiles(cache, results)
    if out is not None:
        prof.write_records(Path(out), {n: records[n] for n in results.succeeded if n in records})
    return results


def memory_budget(recipe: Union[PathLike, Recipe], profiles: FleetResults) -> FleetBudget:
    """M_min of the profiled devices for the recipe (its safety margin; its plan.memory_budget,
    when set, overrides), with every device's usable memory M_i."""
    from ftte_cli.fleet.budget import fixed_bytes, recipe_budget
    from ftte_cli.fleet.profile import profile_record

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    records = {n: profile_record(r.value) for n, r in profiles.succeeded.items()}
    fixed = fixed_bytes(rec)
    if not records and fixed is None:
        raise RunError("memory budget: no device could be profiled")
    return recipe_budget(records, rec.plan.safety_margin, fixed)


@dataclass(frozen=True)
class PlanResult:
    """A chosen plan, the budget it fits and the report `ftte plan --format json` prints
    (with `fleet`: M_min and each device's headroom; with `saved`: the files written)."""

    plan: Plan
    budget_bytes: int
    budget_source: str
    scores: dict[str, float]
    report: dict[str, Any]


def plan(recipe: Union[PathLike, Recipe], *, budget: Union[str, int, None] = None,
         num_clients: Optional[int] = None, inventory: Optional[PathLike] = None,
         limit: Optional[str] = None, out: Optional[PathLike] = None) -> PlanResult:
    """The sparse plan for `recipe` under the budget `fleet.budget.resolve_budget` picks:
    `budget`, else its plan.memory_budget, else the M_min of the `inventory`'s cached profiles
    (of the devices `limit` selects; the report then has each device's headroom). The data is
    split into `num_clients` (default: one per inventory device, else the recipe's
    sim.clients). `out` also writes plan.json + plan.safetensors into that folder.

    Raises ConfigError without a budget and BudgetInfeasible when not even the head fits."""
    from ftte_cli.engine.plan import save_plan
    from ftte_cli.engine.selection import plan_for_recipe
    from ftte_cli.fleet import budget as fb
    from ftte_cli.plan_report import plan_report

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    fleet = (fb.inventory_budget(Path(inventory), rec, limit, budget)
             if inventory is not None else None)
    chosen = fb.resolve_budget(rec, flag=budget,
                               fleet=None if fleet is None else fb.fleet_candidate(fleet))
    if chosen is None:
        raise ConfigError(f"{rec.source}: no memory budget: pass --budget (e.g. 2MB) or "
                          "--inventory (profiled fleet), or set plan.memory_budget in the recipe")
    if num_clients is None and inventory is not None:  # one shard per device, as `ftte train`
        num_clients = len(load_inventory(Path(inventory)).devices)
    sel = plan_for_recipe(rec, chosen.bytes, num_clients)
    report = plan_report(sel, chosen)
    if fleet is not None:
        rows = fb.headroom(fleet, sel.plan.estimated_bytes or 0,
                           sel.plan.full_training_bytes or 0)
        report["fleet"] = fb.headroom_json(fleet, rows)
    if out is not None:
        report["saved"] = [str(p) for p in save_plan(sel.plan, Path(out))]
    return PlanResult(sel.plan, chosen.bytes, chosen.source, dict(sel.scores), report)


# ---- deploy ---------------------------------------------------------------------------------


def deploy(recipe: Union[PathLike, Recipe], inventory: PathLike, *, limit: Optional[str] = None,
           dry_run: bool = False, ssh: Optional[SshOptions] = None, root: Optional[Path] = None,
           say: Callable[[str], None] = lambda _message: None) -> FleetResults:
    """Build every device's bundle and ship it (values: `DeployInfo`; `ok` = already there)."""
    from ftte_cli.train.planning import plan_and_deploy

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    inv, selected = select_devices(inventory, limit)
    return plan_and_deploy(rec, Path(inventory), list(inv.devices.values()), selected,
                           ssh or SshOptions(), dry_run=dry_run, root=root, say=say)


# ---- train, simulate, read a run --------------------------------------------------------------


def train(recipe: Optional[PathLike] = None, inventory: Optional[PathLike] = None, *,
          strategy: Optional[str] = None, limit: Optional[str] = None,
          run_dir: Optional[PathLike] = None, resume: Optional[PathLike] = None,
          direct: Optional[str] = None, ssh: Optional[SshOptions] = None,
          offline_after: float = 10.0, bundle_root: PathLike = ".ftte",
          quiet: bool = True, dashboard: Optional[bool] = False,
          phases: Optional[Phases] = None) -> TrainResult:
    """One training run on the fleet (as `ftte train`); `quiet=False` shows progress lines,
    `dashboard` None the live dashboard on a terminal, `phases` the steps before training.

    Raises ConfigError / BudgetInfeasible / RunError before or while starting; a run that
    starts always returns, with its `stop_reason`, after stopping every agent it started."""
    from ftte_cli.train.run import TrainOptions, run_training

    return run_training(TrainOptions(
        recipe=_opt_path(recipe), inventory=_opt_path(inventory), strategy=strategy,
        limit=limit, direct=direct, run_dir=_opt_path(run_dir), resume=_opt_path(resume),
        ssh=ssh or SLOW_DEVICE_SSH, dashboard=dashboard, quiet=quiet, phases=phases,
        offline_after=offline_after, bundle_root=Path(bundle_root)))


def simulate(recipe: Union[PathLike, Recipe], *, strategies: tuple[str, ...] = (
                 "ftte", "fedbuff", "fedavg"),
             clients: Optional[int] = None, stragglers: Optional[float] = None,
             seed: Optional[int] = None, fleet: Optional[PathLike] = None,
             budget_fraction: Optional[float] = None, until_target: bool = True,
             eval_samples: Optional[int] = 1000, out: Optional[PathLike] = None,
             progress: Optional[Callable[[str, float, int, Optional[float]], None]] = None
             ) -> SimResult:
    """Every strategy on one simulated fleet (as `ftte simulate`); `out` also writes the run
    directory (metrics, summary, plots) that `read_run` and `ftte report` read; `progress`
    is called with (strategy, virtual time, version, accuracy) as evaluations come in."""
    from ftte_cli.rundir.sim import RunWriter
    from ftte_cli.sim.runner import simulate as run_simulation
    from ftte_cli.sim.settings import SimSettings

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    settings = SimSettings(recipe=rec, strategies=tuple(strategies), clients=clients,
                           stragglers=stragglers, seed=seed, fleet=_opt_path(fleet),
                           budget_fraction=budget_fraction, stop_at_target=until_target,
                           eval_samples=eval_samples)
    writer = RunWriter(Path(out)) if out is not None else None
    result = run_simulation(settings, progress, writer.on_eval if writer else None)
    if writer is not None:
        writer.finish(settings, result)
    return result


def sim_backend(name: str = "inprocess", address: Optional[str] = None,
                workers: Optional[int] = None) -> AbstractContextManager[None]:
    """A context within which `simulate` trains client jobs on backend `name`: auto (threads
    where they can run, else inprocess: sim/auto_backend.py), inprocess, batched, processes
    (`workers` forked processes, default one per usable CPU), threads (`workers` trainer
    threads in this process, same default), or ray (`address`: a Ray cluster, default a local
    one). Checked now, before any work: an unknown name, `address` without ray, `workers`
    without auto, processes or threads, or a missing Ray is a ConfigError."""
    if name not in ("auto", "inprocess", "batched", "processes", "threads", "ray"):
        raise ConfigError(f"--backend: expected auto, inprocess, batched, processes, threads "
                          f"or ray, got {name!r}")
    if name != "ray" and address is not None:
        raise ConfigError("--address: only with --backend ray")
    if name not in ("auto", "processes", "threads") and workers is not None:
        raise ConfigError("--workers: only with --backend auto, processes or threads")
    if name == "inprocess":
        return nullcontext()
    from ftte_cli.sim.runner import using_backend

    if name == "batched":
        from ftte_cli.sim.batched_backend import BatchedBackend

        return using_backend(BatchedBackend)
    if name in ("auto", "processes", "threads"):
        from ftte_cli.sim.backend_common import worker_count

        worker_count(workers)  # a bad worker count fails now, before the data loads
        return using_backend(lambda: _pool_backend(name, workers))
    from ftte_cli.sim.ray_backend import RayBackend, import_ray

    import_ray()  # a missing Ray is a usage error now, not after loading the data
    return using_backend(lambda: RayBackend(address))


def _pool_backend(name: str, workers: Optional[int]) -> Any:
    """A backend that trains jobs in parallel on this machine (imported only when chosen)."""
    if name == "processes":
        from ftte_cli.sim.process_backend import ProcessBackend

        return ProcessBackend(workers)
    if name == "threads":
        from ftte_cli.sim.thread_backend import ThreadBackend

        return ThreadBackend(workers)
    from ftte_cli.sim.auto_backend import AutoBackend

    return AutoBackend(workers)


def read_run(path: PathLike) -> RunReport:
    """A train or simulate run directory as series of points and summaries (ConfigError if
    it holds no metrics)."""
    from ftte_cli.rundir.reader import load_run

    return load_run(Path(path))


@dataclass(frozen=True)
class ReportResult:
    """`ftte report RUN_DIR`: the run, its summary rows (the JSON document) and the PNGs."""

    run: RunReport
    rows: list[dict[str, Any]]
    plots: list[Path]


def report(path: PathLike, out_dir: Optional[PathLike] = None) -> ReportResult:
    """Read a run, write its PNGs (into RUN_DIR/report/ unless `out_dir`) and its rows."""
    from ftte_cli.rundir.reader import report_rows
    from ftte_cli.ui.report import render_plots

    run = read_run(path)
    plots = render_plots(run, _opt_path(out_dir))
    return ReportResult(run, report_rows(run), plots)


def export_tensorboard(path: PathLike, logdir: PathLike) -> list[Path]:
    """Write a run's scalars for TensorBoard into `logdir/<run folder>/<series>` (several runs
    in one logdir overlay); ConfigError naming the `tensorboard` extra when it is missing."""
    from ftte_cli.ui.tensorboard import export_run

    return export_run(read_run(path), Path(logdir))


def require_tensorboard() -> None:
    """Fail early (ConfigError, exit 2) when `--tensorboard` cannot work: the extra is missing."""
    from ftte_cli.ui.tensorboard import summary_writer_class

    summary_writer_class()


def compare_runs(a: PathLike, b: PathLike) -> Comparison:
    """Two sweeps (or runs) side by side: per strategy, simulated / measured time to target."""
    from ftte_cli.sweep.compare import compare_runs as compare

    return compare(Path(a), Path(b))


# ---- sweeps ---------------------------------------------------------------------------------


def grid(strategies: str, seeds: str, sets: tuple[str, ...] = ()) -> GridSpec:
    """A sweep grid from the command's spellings: "ftte,fedbuff", "1,2,3",
    ("strategy.buffer_size=5,10",)."""
    from ftte_cli.sweep.grid import make_spec

    return make_spec(strategies, seeds, list(sets))


def sweep(opts: SweepOptions, on_run: Optional[Callable[..., None]] = None) -> SweepResult:
    """Run a sweep's missing runs one at a time (fleet or `opts.simulate`), then compare."""
    from ftte_cli.sweep.runner import run_sweep

    return run_sweep(opts, on_run)


# ---- the emulated testbed --------------------------------------------------------------------


def testbed_up(directory: PathLike, devices: int = 4, mix: Optional[str] = None,
               bandwidth: bool = True) -> TestbedState:
    """Start `devices` emulated devices (classes of `mix`, round-robin; default the standard
    mix) and write their inventory, key pair and known_hosts into `directory`."""
    from ftte_cli.testbed import lifecycle
    from ftte_cli.testbed.devices import DEFAULT_MIX

    return lifecycle.up(Path(directory), devices, mix or ",".join(DEFAULT_MIX), bandwidth)


def testbed_status(directory: PathLike) -> tuple[Optional[TestbedState], list[TestbedDevice]]:
    """The testbed in `directory` (None when there is none) and each device's state."""
    from ftte_cli.testbed import lifecycle

    return lifecycle.status(Path(directory))


def testbed_down(directory: PathLike) -> DownReport:
    """Stop every process and remove every cgroup, namespace and link the testbed made."""
    from ftte_cli.testbed import lifecycle

    return lifecycle.down(Path(directory))


def testbed_power(directory: PathLike, device: str,
                  values: Optional[dict[str, Any]]) -> Path:
    """Write (or with None, clear) one testbed device's emulated power state; its file."""
    from ftte_cli.testbed import lifecycle

    return lifecycle.set_power(Path(directory), device, values)


def _opt_path(p: Optional[PathLike]) -> Optional[Path]:
    return None if p is None else Path(p)


__all__ = [
    # records and options
    "CommandOutput", "Comparison", "DeployInfo", "Device", "DeviceProfile", "DeviceResult",
    "FleetBudget",
    "FleetPlan",
    "FleetResults", "GridSpec", "GroupStats", "Inventory", "Outcome", "Plan", "PlanResult",
    "Recipe", "ReportResult", "RunRecord", "RunReport", "RunSpec", "RunStatus", "SimResult",
    "SimSettings", "SshOptions", "StrategyResult", "SweepOptions", "SweepResult",
    "TrainOptions", "TrainResult",
    # errors
    "BudgetInfeasible", "ConfigError", "DataError", "ExitCode", "FleetError", "FtteError",
    "RunError",
    # functions
    "compare_runs", "deploy", "fleet_plan", "grid", "load_inventory", "load_recipe",
    "memory_budget",
    "plan", "plan_and_deploy", "profile", "read_run", "report", "select_devices",
    "shard_bytes", "sim_backend", "simulate",
    "export_tensorboard", "fabric_group", "require_tensorboard", "run_command", "sweep",
    "testbed_down", "testbed_power", "testbed_status", "testbed_up", "train",
]
