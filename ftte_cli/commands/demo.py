"""`ftte demo`: the README's main job, end to end on an emulated fleet on this machine.

Steps, each timed and shown: bring up an N-device testbed (real sshd per device, with memory
and CPU caps when root), profile it, plan under the tightest device's budget, deploy the
bundles, train recipes/har-demo.yaml to its target accuracy with the live dashboard, and write
the report; the closing summary states the plan against full training, the devices strict
FedAvg would have excluded and the accuracy reached. The testbed is always taken down at the
end (in `finally`, also on Ctrl-C or an error) unless `--keep` is given. Every step is the same
code the individual commands run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from ftte_cli import api
from ftte_cli.commands.options import FormatOpt, RecipeOpt
from ftte_cli.errors import ExitCode, FtteError, RunError
from ftte_cli.fleet.ssh import SLOW_DEVICE_SSH, SshOptions
from ftte_cli.output import Format, console, err_console, handle_errors, print_json, table
from ftte_cli.testbed.lifecycle import INVENTORY_FILE
from ftte_cli.ui.recap import render_recap, summary_line
from ftte_cli.units import format_size

log = logging.getLogger(__name__)

DEFAULT_RECIPE = Path("recipes/har-demo.yaml")  # docs/demo.md says why this recipe
DEFAULT_DIR = Path(".testbed/demo")
COLUMNS = ("step", "status", "seconds", "detail")


class StepStatus(str, Enum):
    """How one demo step ended."""

    ok = "ok"
    failed = "failed"
    skipped = "skipped"  # an earlier step failed


@dataclass(frozen=True)
class DemoStep:
    """One row of the demo's closing table."""

    step: str
    status: StepStatus
    seconds: float
    detail: str


@dataclass
class DemoState:
    """What the steps hand to each other."""

    recipe_path: Path
    directory: Path
    devices: int
    console: Console
    inventory: Optional[Path] = None
    recipe: Optional[api.Recipe] = None
    fleet: list[api.Device] = field(default_factory=list)
    # Profiling imports torch on a 25%-CPU device: give commands the time they need.
    opts: SshOptions = SLOW_DEVICE_SSH
    planned: Optional[api.FleetPlan] = None
    run_dir: Optional[Path] = None
    train: Optional[api.TrainResult] = None


class StepFailed(FtteError):
    """A demo step could not finish; the message says which and why."""


def demo(
    devices: Annotated[int, typer.Option("--devices", "-n", min=1,
                                         help="How many emulated devices.")] = 4,
    keep: Annotated[bool, typer.Option("--keep",
                                       help="Leave the testbed running at the end.")] = False,
    recipe: RecipeOpt = DEFAULT_RECIPE,
    directory: Annotated[Path, typer.Option("--dir", help="Testbed folder.")] = DEFAULT_DIR,
    fmt: FormatOpt = Format.table,
) -> None:
    """Testbed up, profile, plan, deploy, train to target with the dashboard, report, down."""
    out = err_console if fmt == Format.json else console
    with handle_errors(fmt):
        state = DemoState(recipe, directory, devices, out)
        steps = run_demo(state, keep=keep)
    rows = [[s.step, s.status.value, f"{s.seconds:.1f}", s.detail] for s in steps]
    failed = [s for s in steps if s.status == StepStatus.failed]
    summary = closing_summary(state)
    if fmt == Format.json:
        print_json({"steps": steps, "run_dir": state.run_dir, "ok": not failed,
                    "summary": summary})
    else:
        console.print(table("ftte demo", COLUMNS, rows))
        if summary:
            console.print(table("What FTTE did on this fleet", ("", ""), summary_rows(summary)))
        if state.run_dir is not None:
            console.print(f"run directory: {state.run_dir} (plots in {state.run_dir}/report/)",
                          highlight=False)
    if failed:
        raise typer.Exit(int(ExitCode.FAILURE))


def closing_summary(state: DemoState) -> dict[str, Any]:
    """The demo's point in figures: the plan against full training, the devices strict FedAvg
    would have left out (usable memory below full training), the accuracy reached.
    Empty when planning did not happen."""
    if state.planned is None:
        return {}
    plan, budget = state.planned.choice.plan, state.planned.choice.budget
    full = plan.full_training_bytes or 0
    usable = {d.name: d.usable_bytes for d in budget.devices} if budget is not None else {}
    out: dict[str, Any] = {
        "trainable_share": plan.trainable_params / max(1, plan.total_params),
        "plan_bytes": plan.estimated_bytes, "full_training_bytes": full,
        "micro_batch": plan.micro_batch, "bound_by": budget.bound_by if budget else None,
        "fedavg_excluded": {n: u for n, u in usable.items() if u < full},
    }
    if state.train is not None and state.recipe is not None:
        out.update(best_accuracy=state.train.best_accuracy,
                   target_accuracy=state.recipe.stop.target_accuracy,
                   target_reached=state.train.target_reached,
                   time_to_target=state.train.time_to_target)
    return out


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The closing summary as table rows."""
    full = summary["full_training_bytes"]
    micro = summary["micro_batch"]
    rows = [["plan", f"{summary['trainable_share']:.0%} of parameters trained, "
                     f"{format_size(summary['plan_bytes'] or 0)} per device = "
                     f"{(summary['plan_bytes'] or 0) / max(1, full):.0%} of full training "
                     f"({format_size(full)})"
                     + (f", passes of {micro} sample{'s' if micro > 1 else ''}" if micro
                        else "")],
            ["budget set by", str(summary["bound_by"] or "the recipe")]]
    excluded = summary["fedavg_excluded"]
    rows.append(["strict FedAvg", "would exclude " + ", ".join(
        f"{n} (usable {format_size(max(0, u))} < full training {format_size(full)})"
        for n, u in excluded.items()) if excluded else "would keep every device"])
    if "best_accuracy" in summary:
        best = summary["best_accuracy"]
        reached = "reached" if summary["target_reached"] else "not reached"
        rows.append(["accuracy", f"{'-' if best is None else f'{best:.1%}'} best; target "
                                 f"{summary['target_accuracy']:.0%} {reached}"
                     + (f" in {summary['time_to_target']:.0f}s"
                        if summary["time_to_target"] is not None else "")])
    return rows


def run_demo(state: DemoState, keep: bool = False,
             clock: Callable[[], float] = time.monotonic) -> list[DemoStep]:
    """Run every step in order; stop at the first failure; always take the testbed down."""
    steps: list[tuple[str, Callable[[DemoState], str]]] = [
        ("testbed up", _testbed_up), ("profile", _profile), ("plan", _plan),
        ("deploy", _deploy), ("train", _train), ("report", _report),
    ]
    results: list[DemoStep] = []
    try:
        for name, fn in steps:
            if results and results[-1].status != StepStatus.ok:
                results.append(DemoStep(name, StepStatus.skipped, 0.0, "earlier step failed"))
                continue
            results.append(_run_step(state, name, fn, clock))
    finally:
        if state.inventory is not None and not keep:
            results.append(_run_step(state, "testbed down", _testbed_down, clock))
        elif state.inventory is not None:
            state.console.print(f"testbed kept in {state.directory} "
                                f"(`ftte testbed down --dir {state.directory}`)", highlight=False)
    return results


def _run_step(state: DemoState, name: str, fn: Callable[[DemoState], str],
              clock: Callable[[], float]) -> DemoStep:
    state.console.rule(f"[bold]{name}")
    start = clock()
    try:
        detail = fn(state)
        status = StepStatus.ok
    except FtteError as err:
        detail, status = str(err), StepStatus.failed
    except ImportError as err:  # a layer this step needs is not installed / not written
        detail, status = f"not available: {err}", StepStatus.failed
    elapsed = clock() - start
    colour = "green" if status == StepStatus.ok else "red"
    state.console.print(f"[{colour}]{name}: {status.value}[/] ({elapsed:.1f}s) {detail}",
                        highlight=False, soft_wrap=True)
    return DemoStep(name, status, elapsed, detail)


# --- steps -----------------------------------------------------------------------------------


def _testbed_up(state: DemoState) -> str:
    state.recipe = api.load_recipe(state.recipe_path)  # a bad recipe fails before any device starts
    bed = api.testbed_up(state.directory, state.devices)
    state.inventory = Path(bed.dir) / INVENTORY_FILE
    state.fleet = api.select_devices(state.inventory)[1]
    for note in bed.notes:
        state.console.print(f"[yellow]note:[/] {note}", highlight=False)
    caps = "memory/CPU caps, own network namespaces" if bed.isolated else "loopback, no caps"
    names = ", ".join(f"{d.name} ({d.device_class})" for d in state.fleet)
    return f"{len(state.fleet)} devices with {caps}: {names}"


def _profile(state: DemoState) -> str:
    assert state.inventory is not None
    results = api.profile(state.inventory, recipe=state.recipe, ssh=state.opts)
    render_recap(results, Format.table, title="Profile", out=state.console)
    if not results.succeeded:
        raise StepFailed(f"no device could be profiled: {summary_line(results)}")
    return summary_line(results)


def _plan(state: DemoState) -> str:
    assert state.inventory is not None and state.recipe is not None
    state.planned = api.fleet_plan(state.recipe, state.inventory, state.fleet, state.fleet,
                                   state.opts)
    plan, budget = state.planned.choice.plan, state.planned.choice.budget
    rows = [
        ["budget (M_min)", format_size(budget.m_min) if budget else "-",
         f"from {budget.bound_by}" if budget and budget.bound_by else "recipe override"],
        ["training memory", format_size(plan.estimated_bytes or 0),
         f"full training {format_size(plan.full_training_bytes or 0)}"],
        ["trainable params", f"{plan.trainable_params:,}", f"of {plan.total_params:,}"],
        ["payload per job", format_size(plan.payload_bytes),
         f"full model {format_size(plan.full_payload_bytes)}"],
        ["method", plan.method, ", ".join(plan.units[:6]) + (" ..." if len(plan.units) > 6
                                                             else "")],
    ]
    state.console.print(table("Plan", ("", "value", "versus"), rows))
    share = plan.trainable_params / max(1, plan.total_params)
    return (f"{plan.method}: {share:.0%} of parameters trainable, "
            f"{format_size(plan.estimated_bytes or 0)} per device")


def _deploy(state: DemoState) -> str:
    assert state.inventory is not None and state.recipe is not None
    results = api.plan_and_deploy(state.recipe, state.inventory, state.fleet, state.fleet,
                                  state.opts, planned=state.planned)
    render_recap(results, Format.table, title="Deploy", out=state.console)
    if not results.succeeded:
        raise StepFailed(f"no device took its bundle: {summary_line(results)}")
    return summary_line(results)


def _train(state: DemoState) -> str:
    assert state.recipe is not None
    result = api.train(state.recipe_path, state.inventory, ssh=state.opts, quiet=False,
                       dashboard=None)
    state.train, state.run_dir = result, Path(result.run_dir)
    best = "-" if result.best_accuracy is None else f"{100 * result.best_accuracy:.1f}%"
    if not result.target_reached:
        raise RunError(f"target not reached ({result.stop_reason.value}): best {best} "
                       f"after {result.elapsed:.0f}s, run in {result.run_dir}")
    return (f"target {100 * state.recipe.stop.target_accuracy:.0f}% reached in "
            f"{result.time_to_target:.0f}s at version {result.version} (best {best})")


def _report(state: DemoState) -> str:
    from ftte_cli.ui.report import device_tables, summary_table

    assert state.run_dir is not None
    report = api.report(state.run_dir)
    state.console.print(summary_table(report.run, report.rows))
    for devices in device_tables(report.run):
        state.console.print(devices)
    return f"{len(report.plots)} plots in {state.run_dir / 'report'}"


def _testbed_down(state: DemoState) -> str:
    report = api.testbed_down(state.directory)
    if report.leftovers:
        raise StepFailed(f"left behind: {', '.join(report.leftovers)}")
    return (f"{len(report.killed)} processes, {len(report.cgroups)} cgroups, "
            f"{len(report.namespaces)} namespaces removed")
