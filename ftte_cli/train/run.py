"""`ftte train`: one training run on a real fleet, from recipe to run directory.

Lifecycle of `run_training(opts)`:
1. load the recipe and inventory; profiles -> budget -> plan (train/planning.py), or on
   `--resume` the run directory's manifest, plan and latest checkpoint;
2. build and ship the bundles (fleet/bundle.py, fleet/deploy.py; unchanged ones are not uploaded);
3. start the server (server/app.py) on loopback (or `--direct HOST:PORT`), open the tunnels and
   start the agents (fleet/launch.py);
4. drive: show the dashboard, apply the stop rules (target accuracy, max versions, time limit,
   Ctrl-C / SIGTERM), mark devices whose agent died as failed;
5. always, in `finally`: end the run on the server (agents exit on 410), stop every agent it
   started, write the final checkpoint and summary.json, stop the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from ftte_cli.config.inventory import Device, Inventory, load_inventory
from ftte_cli.config.recipe import Recipe, load_recipe, recipe_from_dict, recipe_to_dict
from ftte_cli.engine.coordinator import Coordinator, CoordinatorConfig, SubmitResult
from ftte_cli.engine.data import FederatedData
from ftte_cli.engine.evaluation import PlanEvaluator
from ftte_cli.engine.metrics import summarize
from ftte_cli.engine.plan import Plan, load_plan, plan_to_dict, save_plan
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.fleet.ssh import SshOptions
from ftte_cli.rundir.store import new_run_dir
from ftte_cli.rundir.train import RunDir, file_sha256, package_versions
from ftte_cli.server.app import FtteServer
from ftte_cli.server.protocol import ServerConfig, update_bound
from ftte_cli.server.runner import ServerThread
from ftte_cli.server.snapshot import DeviceStatus, RunSnapshot, StopReason
from ftte_cli.server.stop import rule_met
from ftte_cli.startmodel import initial_model, initial_params
from ftte_cli.train import planning
from ftte_cli.train.watchdog import Watchdog
from ftte_cli.ui.dashboard import Dashboard, Phases

if TYPE_CHECKING:  # paramiko-importing modules, loaded when a run starts
    from ftte_cli.fleet.launch import AgentFleet
    from ftte_cli.fleet.locks import InventoryLock

log = logging.getLogger(__name__)
# agents that died for good (after their one restart)
GONE = (DeviceStatus.failed, DeviceStatus.killed_for_memory)

POLL_S = 0.25  # how often the driver looks at the run
FAILURE_CHECK_S = 3.0  # how often offline devices are checked for a dead agent
EXIT_WAIT_S = 8.0  # how long agents get to leave on their own after the run ends


@dataclass(frozen=True)
class TrainOptions:
    """Everything `ftte train` was asked for."""

    recipe: Optional[Path] = None
    inventory: Optional[Path] = None
    strategy: Optional[str] = None
    limit: Optional[str] = None
    direct: Optional[str] = None  # "HOST:PORT": bind there, agents dial it (no tunnels)
    run_dir: Optional[Path] = None
    resume: Optional[Path] = None
    ssh: SshOptions = field(default_factory=SshOptions)
    dashboard: Optional[bool] = None  # None: live on a terminal, lines otherwise
    quiet: bool = False  # print nothing at all (the Python API, sweeps)
    offline_after: float = 10.0
    bundle_root: Path = Path(".ftte")
    checkpoint_every: int = 1
    phases: Optional[Phases] = None  # the steps before training, shown live


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (the command prints it as a table or JSON)."""

    run_dir: Path
    stop_reason: StopReason
    target_reached: bool
    version: int
    final_accuracy: Optional[float]
    best_accuracy: Optional[float]
    time_to_target: Optional[float]
    elapsed: float
    resumed_from: Optional[int]
    devices: list[dict[str, Any]]
    excluded: dict[str, str]
    summary: dict[str, Any]


@dataclass
class _TrainRun:
    """The pieces of a run while it is set up and driven."""

    recipe: Recipe
    inventory: Inventory
    devices: list[Device]  # taking part
    all_devices: list[Device]  # the whole inventory, in order (bundle shards follow it)
    plan: Plan
    fed: FederatedData  # one client per inventory device
    model: torch.nn.Module
    coordinator: Coordinator
    rundir: RunDir
    manifest: dict[str, Any]
    elapsed_offset: float = 0.0
    resumed_from: Optional[int] = None
    excluded: dict[str, str] = field(default_factory=dict)


# ---- set-up -------------------------------------------------------------------------------------


def _federated(recipe: Recipe, num_clients: int) -> FederatedData:
    from ftte_cli.engine.data import load_federated

    return load_federated(recipe.data, num_clients, recipe.seed, recipe.init)


def _initial_params(recipe: Recipe, fed: FederatedData) -> dict[str, torch.Tensor]:
    return initial_params(recipe, fed.input_shape, fed.num_classes, fed)


def _model(recipe: Recipe, fed: FederatedData) -> torch.nn.Module:
    return initial_model(recipe, fed.input_shape, fed.num_classes, fed)


def _evaluator(model: torch.nn.Module, plan: Plan, fed: FederatedData
               ) -> Callable[[dict], tuple[float, float]]:
    """Global test accuracy, computed by the server (on its coordinator thread); the plan's
    frozen prefix runs once over the test set, not at every evaluation."""
    return PlanEvaluator(model, plan, fed.test)


def _clients(devices: list[Device], all_devices: list[Device],
             fed: FederatedData) -> dict[str, int]:
    """Device -> n_i (its shard's training samples; 1 for device-local data, unknown here)."""
    index = {d.name: i for i, d in enumerate(all_devices)}
    return {d.name: int(fed.clients[index[d.name]].train.y.shape[0]) if d.data is None else 1
            for d in devices}


def _coordinator(recipe: Recipe, plan: Plan, params: dict, clients: dict[str, int],
                 evaluate_fn: Callable, state: Optional[tuple[dict, dict]] = None) -> Coordinator:
    config = CoordinatorConfig(strategy=recipe.strategy, eval_every=recipe.stop.eval_every)
    strategy = make_strategy(recipe.strategy)
    if state is not None:
        return Coordinator.from_state(state[0], state[1], plan, strategy, config, evaluate_fn)
    return Coordinator(params, plan, strategy, clients, config, recipe.seed, evaluate_fn)


def _fresh(opts: TrainOptions) -> _TrainRun:
    recipe_path, inventory_path = _recipe_and_inventory(opts)
    recipe = load_recipe(recipe_path)
    if opts.strategy:
        recipe = recipe.with_strategy(opts.strategy)
    inventory = load_inventory(inventory_path)
    all_devices = list(inventory.devices.values())
    chosen = inventory.select(opts.limit)
    planning.check_devices(chosen)
    planned = planning.fleet_plan(recipe, inventory_path, all_devices, chosen, opts.ssh)
    fed, choice, params = planned.fed, planned.choice, planned.params
    model = _model(recipe, fed)
    coord = _coordinator(recipe, choice.plan, params, _clients(choice.devices, all_devices, fed),
                         _evaluator(model, choice.plan, fed))
    rundir = RunDir(opts.run_dir or new_run_dir("runs", "train"))
    save_plan(choice.plan, rundir.path)
    manifest = {
        "kind": "train", "run_id": f"{recipe.name}-{secrets.token_hex(4)}",
        "started_at": datetime.now(timezone.utc).isoformat(),
        "recipe": recipe_to_dict(recipe), "recipe_path": str(recipe_path),
        "inventory": str(inventory_path.resolve()),
        "inventory_sha256": file_sha256(inventory_path),
        "limit": opts.limit, "direct": opts.direct, "strategy": recipe.strategy.name,
        "seed": recipe.seed, "devices": [d.name for d in choice.devices],
        "excluded": choice.excluded, "plan": plan_to_dict(choice.plan), "plan_notes": choice.notes,
        "budget": choice.budget, "profiles": choice.profiles, "init": asdict(planned.start),
        "bundle_root": str(opts.bundle_root.resolve()), "packages": package_versions(),
        "resumes": [],
    }
    return _TrainRun(recipe, inventory, choice.devices, all_devices, choice.plan, fed, model,
                     coord, rundir, manifest, excluded=choice.excluded)


def _resumed(opts: TrainOptions) -> _TrainRun:
    assert opts.resume is not None
    rundir = RunDir(opts.resume)
    manifest = rundir.read_manifest()
    recipe = recipe_from_dict(manifest["recipe"], f"{rundir.manifest_path}: recipe")
    inventory = load_inventory(Path(manifest["inventory"]))
    all_devices = list(inventory.devices.values())
    missing = [n for n in manifest["devices"] if n not in inventory.devices]
    if missing:
        raise ConfigError(f"{manifest['inventory']}: devices of the run are gone: {missing}")
    devices = [inventory.devices[n] for n in manifest["devices"]]
    plan = load_plan(rundir.path)
    fed = _federated(recipe, len(all_devices))
    model = _model(recipe, fed)
    state = rundir.latest_checkpoint()
    params = _initial_params(recipe, fed)
    coord = _coordinator(recipe, plan, params, _clients(devices, all_devices, fed),
                         _evaluator(model, plan, fed), state)
    elapsed = float(state[1].get("elapsed", 0.0)) if state else 0.0
    manifest["resumes"] = [*manifest.get("resumes", []),
                           {"at": datetime.now(timezone.utc).isoformat(),
                            "version": coord.version, "elapsed": elapsed}]
    return _TrainRun(recipe, inventory, devices, all_devices, plan, fed, model, coord, rundir,
                     manifest, elapsed_offset=elapsed,
                     resumed_from=coord.version if state else None,
                     excluded=dict(manifest.get("excluded", {})))


# ---- deploy and launch --------------------------------------------------------------------------


def _deploy(run: _TrainRun, opts: TrainOptions) -> tuple[dict[str, str], dict[str, str]]:
    """Build and ship bundles; (device -> remote bundle, device -> token) of those that work."""
    from ftte_cli.fleet.bundle import build_bundles, load_tokens
    from ftte_cli.fleet.deploy import ship_bundles

    params = _initial_params(run.recipe, run.fed)
    bundles = build_bundles(run.recipe, run.all_devices, run.plan, fed=run.fed, params=params,
                            root=opts.bundle_root)
    run.manifest["bundles"] = {n: b.sha256 for n, b in bundles.items()
                               if n in {d.name for d in run.devices}}
    _say(opts, f"deploying bundles to {len(run.devices)} devices")
    results = ship_bundles(run.devices, bundles, opts.ssh, on_done=lambda r: _say(
        opts, f"deploy {r.device.name}: {r.outcome.value} {r.detail}"))
    for name, res in results.failed.items():
        run.rundir.event({"t": run.elapsed_offset, "kind": "deploy_failed", "device": name,
                          "detail": res.detail, "outcome": res.outcome.value})
        log.warning("%s: deploy failed: %s", name, res.detail)
    remote = {n: r.value.remote_bundle for n, r in results.succeeded.items()}
    if not remote:
        raise RunError("deploy failed on every device: "
                       + "; ".join(f"{n}: {r.detail}" for n, r in results.failed.items()))
    tokens = load_tokens(run.recipe.name, list(remote), opts.bundle_root)
    return remote, tokens


def _stop_previous_agents(opts: TrainOptions) -> None:
    """On --resume: agents of the crashed server may still be retrying; end their process groups.

    Runs before anything else of the resume (only the manifest and the inventory are read), so
    the old agents are stopped even when the resume itself then fails.
    """
    from ftte_cli.fleet.ssh import connect

    assert opts.resume is not None
    rundir = RunDir(opts.resume)
    try:
        manifest = rundir.read_manifest()
    finally:
        rundir.close()
    pids: dict[str, int] = manifest.get("agent_pids", {})
    inventory = load_inventory(Path(manifest["inventory"]))
    for device in inventory.devices.values():
        pid = pids.get(device.name)
        if not pid:
            continue
        try:
            with connect(device, opts.ssh) as session:
                session.run(f"kill -TERM -{int(pid)} 2>/dev/null; sleep 1; "
                            f"kill -KILL -{int(pid)} 2>/dev/null; true", timeout=30)
        except Exception as err:  # noqa: BLE001 - best effort: the device may be gone
            log.info("%s: could not stop the previous agent %s: %s", device.name, pid, err)


# ---- the run ------------------------------------------------------------------------------------


def _server(run: _TrainRun, tokens: dict[str, str], opts: TrainOptions) -> FtteServer:
    budgets = {d.name: d.mem_cap_mb * 2**20 for d in run.devices if d.mem_cap_mb}
    config = ServerConfig(
        run_id=run.manifest["run_id"], tokens=tokens,
        plan_sha256=file_sha256(run.rundir.path / "plan.json"),
        update_max_bytes=update_bound(run.coordinator.subset), offline_after=opts.offline_after,
        memory_budgets=budgets,
    )
    every = max(1, opts.checkpoint_every)

    def on_version(coord: Coordinator, now: float, result: SubmitResult) -> None:
        record: dict[str, Any] = {"t": round(now, 3), "version": coord.version,
                                  "accepted": coord.metrics.accepted,
                                  "bytes_total": coord.metrics.bytes_total}
        last = coord.metrics.evals[-1] if coord.metrics.evals else None
        if last is not None and last.version == coord.version:
            record.update(accuracy=last.accuracy, loss=last.loss)
        run.rundir.metric(record)
        if coord.version % every == 0:
            run.rundir.save_checkpoint(coord, now)

    return FtteServer(run.coordinator, config, strategy=run.recipe.strategy.name,
                      buffer_size=run.recipe.strategy.buffer_size,
                      target_accuracy=run.recipe.stop.target_accuracy,
                      max_versions=run.recipe.stop.max_versions,
                      on_event=run.rundir.event, on_version=on_version,
                      elapsed_offset=run.elapsed_offset)


def stop_rule(snap: RunSnapshot, recipe: Recipe) -> Optional[StopReason]:
    """Which stop rule (if any) the run meets now: the server's own verdict, the recipe's rules
    (`server.stop.rule_met`, on the best accuracy so far), then every device gone."""
    if snap.stop_reason is not None:
        return snap.stop_reason
    stop = recipe.stop
    reason = rule_met(version=snap.version, accuracy=snap.best_accuracy, elapsed=snap.elapsed,
                      target=stop.target_accuracy, max_versions=stop.max_versions,
                      time_limit=stop.time_limit)
    if reason is not None:
        return reason
    if snap.devices and all(d.status in GONE for d in snap.devices):
        return StopReason.no_devices
    return None


class _Interrupted(Exception):
    """SIGTERM arrived: stop like Ctrl-C."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drive(run: _TrainRun, server: FtteServer, watch: Optional[_AgentWatch],
           dashboard: Dashboard) -> StopReason:
    """Watch the run until a stop rule fires; dead agents are restarted once, then failed."""
    next_check = time.monotonic() + FAILURE_CHECK_S
    offline: set[str] = set()
    first = server.snapshot()
    watchdog = Watchdog(run.recipe.stop.stall_factor, run.recipe.stop.stall_min, first.version,
                        first.elapsed)
    while True:
        snap = server.snapshot()
        reason = stop_rule(snap, run.recipe)
        if reason is not None:
            return reason
        stalled = watchdog.observe(snap.version, snap.elapsed)
        if stalled is not None:
            server.event("run_stalled", detail=stalled)
            return StopReason.stalled
        dashboard.tick()
        now_offline = {d.name for d in snap.devices if d.status == DeviceStatus.offline}
        if watch is not None and (now_offline - offline or time.monotonic() >= next_check):
            watch.check(snap, restart=True)
            next_check = time.monotonic() + FAILURE_CHECK_S
        offline = now_offline
        time.sleep(POLL_S)


class _AgentWatch:
    """Offline devices whose agent process is gone: restart it (the device rejoins) up to
    `max_restarts` times, after that show the device as failed (e.g. OOM-killed every job)."""

    def __init__(self, run: _TrainRun, server: FtteServer, agents: AgentFleet,
                 max_restarts: int = 1) -> None:
        self.run, self.server, self.agents = run, server, agents
        self.max_restarts = max_restarts
        self.restarts: dict[str, int] = {}

    def check(self, snap: RunSnapshot, restart: bool) -> None:
        """Look at every offline device once."""
        for row in snap.devices:
            if row.status == DeviceStatus.offline and row.name in self.agents.names:
                self._check_one(row.name, restart)

    def _check_one(self, name: str, restart: bool) -> None:
        try:
            if self.agents.alive(name):
                return
            kill = self.agents.memory_kill(name)
            if kill is not None:
                self.server.event("killed_for_memory", name, kill.describe(),
                                  peak=kill.peak, cap=kill.limit)
            if restart and self.restarts.get(name, 0) < self.max_restarts:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                pid = self.agents.restart(name)
                self.server.event("agent_restarted", name, f"agent process was gone; pid {pid}")
                self.run.manifest.setdefault("agent_pids", {})[name] = pid
                self.run.rundir.write_manifest(self.run.manifest)
                return
        except Exception as err:  # noqa: BLE001 - unreachable device: it stays offline
            log.info("%s: agent check failed: %s", name, err)
            return
        if kill is not None:
            self.server.mark_failed(name, kill.describe(), memory_peak=kill.peak,
                                    killed_for_memory=True)
        else:
            self.server.mark_failed(name, "agent process exited (killed or out of memory)")


def _wait_agents_left(server: FtteServer, agents: AgentFleet, names: list[str]) -> None:
    """Give agents a moment to see the 410 and exit on their own."""
    deadline = time.monotonic() + EXIT_WAIT_S
    while time.monotonic() < deadline:
        rows = {d.name: d.status for d in server.snapshot().devices}
        if all(rows.get(n) in (DeviceStatus.done, *GONE, DeviceStatus.offline,
                               DeviceStatus.waiting) for n in names):
            return
        time.sleep(POLL_S)


def run_training(opts: TrainOptions) -> TrainResult:
    """One whole run (see the module docstring); always stops every agent it started."""
    from ftte_cli.fleet.locks import InventoryLock

    with InventoryLock(_inventory_path(opts), f"starting (pid {os.getpid()})") as lock:
        return _run_training(opts, lock)


def _inventory_path(opts: TrainOptions) -> Path:
    if opts.resume is not None:
        rundir = RunDir(opts.resume)
        try:
            return Path(rundir.read_manifest()["inventory"])
        finally:
            rundir.close()
    return _recipe_and_inventory(opts)[1]


def _recipe_and_inventory(opts: TrainOptions) -> tuple[Path, Path]:
    """A fresh run's recipe and inventory: the one place that says both are required."""
    if opts.recipe is None or opts.inventory is None:
        raise ConfigError("train: --recipe and --inventory are required (or --resume RUN_DIR)")
    return Path(opts.recipe), Path(opts.inventory)


def _leave_out_busy(run: _TrainRun, opts: TrainOptions) -> None:
    """Devices another run holds are left alone (outcome busy, naming that run)."""
    from ftte_cli.fleet.locks import busy_devices
    from ftte_cli.fleet.ssh import Outcome

    busy = {r.device.name: r.detail for r in busy_devices(run.devices, opts.ssh)
            if r.outcome == Outcome.busy}
    for name, detail in busy.items():
        run.rundir.event({"t": run.elapsed_offset, "kind": "device_busy", "device": name,
                          "detail": detail, "outcome": Outcome.busy.value})
        run.excluded[name] = f"busy: {detail}"
        run.coordinator.client_offline(name, run.elapsed_offset)  # no job will be sent to it
        log.warning("%s: %s", name, detail)
    run.devices = [d for d in run.devices if d.name not in busy]
    if not run.devices:
        raise RunError("every device is busy: "
                       + "; ".join(f"{n}: {d}" for n, d in busy.items()))


def _say(opts: TrainOptions, message: str) -> None:
    if opts.phases is not None:
        opts.phases.update(message)


def _run_training(opts: TrainOptions, lock: InventoryLock) -> TrainResult:
    if opts.resume is not None:
        _say(opts, "stopping the agents the crashed run left")
        _stop_previous_agents(opts)
    _say(opts, "resuming: checkpoint, plan and data" if opts.resume is not None else
         "profiles -> memory budget -> plan search (profiling devices without a cached profile)")
    run = _resumed(opts) if opts.resume is not None else _fresh(opts)
    lock.name(run.manifest["run_id"])
    _say(opts, f"checking that no other run holds the {len(run.devices)} devices")
    _leave_out_busy(run, opts)
    if opts.resume is not None:
        if opts.direct is None:  # a resumed run keeps how its devices reached the server
            opts = replace(opts, direct=run.manifest.get("direct"))
        run.manifest["direct"] = opts.direct
    remote, tokens = _deploy(run, opts)
    run.rundir.write_manifest(run.manifest)
    server = _server(run, tokens, opts)
    host, port = _bind_address(opts.direct)
    reason = StopReason.error
    agents = None
    with ServerThread(server, host, port) as st, _sigterm_interrupts():
        try:
            run.manifest["server_url"] = st.url  # this run's server (GET /v1/status, tokens)
            _say(opts, f"starting {len(remote)} agents")
            agents = _start_agents(run, remote, st.port, opts)
            watch = _AgentWatch(run, server, agents)
            if opts.phases is not None:
                opts.phases.close()
            with _dashboard(server, opts) as dashboard:
                try:
                    reason = _drive(run, server, watch, dashboard)
                except (KeyboardInterrupt, _Interrupted):
                    reason = StopReason.interrupted
                finally:
                    server.finish(reason)
            if agents is not None:
                _wait_agents_left(server, agents, agents.names)
                watch.check(server.snapshot(), restart=False)  # died near the end
        finally:
            if agents is not None:
                agents.stop_all()
            server.finish(reason)
            server.call(lambda c: run.rundir.save_checkpoint(c, server.now()))
    result = _result(run, server, reason)
    run.rundir.close()
    if reason == StopReason.interrupted:
        raise KeyboardInterrupt
    return result


def _dashboard(server: FtteServer, opts: TrainOptions) -> Dashboard:
    """The live view, or a silent one when the caller asked for quiet."""
    if opts.quiet:
        import io

        return Dashboard(server.snapshot, live=False, stream=io.StringIO())
    return Dashboard(server.snapshot, live=opts.dashboard)


def _bind_address(direct: Optional[str]) -> tuple[str, int]:
    if direct is None:
        return "127.0.0.1", 0
    host, _, port = direct.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--direct: expected HOST:PORT, got {direct!r}")
    return host, int(port)


def _start_agents(run: _TrainRun, remote: dict[str, str], port: int,
                  opts: TrainOptions) -> AgentFleet:
    from ftte_cli.fleet.launch import start_agents

    devices = [d for d in run.devices if d.name in remote]
    fleet = start_agents(devices, remote, port, opts.ssh, run.rundir.path, direct=opts.direct,
                         run_id=run.manifest["run_id"])
    for name, res in fleet.results.failed.items():
        run.rundir.event({"t": run.elapsed_offset, "kind": "launch_failed", "device": name,
                          "detail": res.detail, "outcome": res.outcome.value})
    run.manifest["agent_pids"] = {n: fleet.pid(n) for n in fleet.names}
    run.rundir.write_manifest(run.manifest)
    if not fleet.names:
        raise RunError("no agent could be started: "
                       + "; ".join(f"{n}: {r.detail}" for n, r in fleet.results.failed.items()))
    return fleet


def _result(run: _TrainRun, server: FtteServer, reason: StopReason) -> TrainResult:
    snap = server.snapshot()
    metrics = server.coordinator.metrics
    summary = summarize(metrics, strategy=run.recipe.strategy.name,
                        target=run.recipe.stop.target_accuracy, duration=snap.elapsed,
                        versions=snap.version,
                        memory_per_device=run.plan.estimated_bytes, bundle_bytes=None)
    summary_dict = {**_asdict(summary), "stop_reason": reason.value, "run_id": snap.run_id,
                    "devices": [_asdict(d) for d in snap.devices], "excluded": run.excluded}
    run.rundir.write_summary(summary_dict)
    return TrainResult(
        run_dir=run.rundir.path, stop_reason=reason,
        target_reached=summary.time_to_target is not None, version=snap.version,
        final_accuracy=summary.final_accuracy, best_accuracy=summary.best_accuracy,
        time_to_target=summary.time_to_target, elapsed=snap.elapsed,
        resumed_from=run.resumed_from, devices=summary_dict["devices"], excluded=run.excluded,
        summary=summary_dict,
    )


def _asdict(obj: Any) -> dict[str, Any]:
    from ftte_cli.rundir.jsonable import to_jsonable

    return to_jsonable(obj)


__all__ = ["TrainOptions", "TrainResult", "run_training", "stop_rule"]
