"""`ftte simulate`: every strategy on the same simulated fleet and data, on a virtual clock.

Thin: parse flags, call `api.simulate` (which writes the run directory, `rundir/sim.py`), render
the side-by-side table or JSON from the same rows. Progress goes to stderr, only on a terminal
and never in JSON mode.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftte_cli import api
from ftte_cli.commands.options import RecipeOpt
from ftte_cli.commands.report import TensorboardOpt
from ftte_cli.config.recipe import load_recipe
from ftte_cli.errors import ConfigError
from ftte_cli.output import Format, console, err_console, handle_errors, print_json, table
from ftte_cli.rundir.sim import (
    COLUMNS,
    PLAN_COLUMNS,
    excluded_note,
    over_memory_note,
    plan_rows,
    summary_doc,
    table_rows,
)
from ftte_cli.rundir.store import new_run_dir


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise ConfigError("--strategies: give at least one strategy, e.g. ftte,fedbuff,fedavg")
    return names


def _progress(enabled: bool) -> Any:
    """A Rich progress bar on stderr (a no-op context when disabled)."""
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.fields[info]}"), console=err_console, transient=True)


def simulate(
    recipe: RecipeOpt,
    clients: Annotated[Optional[int], typer.Option(min=1, help="Simulated clients.")] = None,
    stragglers: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Fraction of clients slowed by U(5, 20).")] = None,
    strategies: Annotated[str, typer.Option(
        help="Comma-separated: ftte, fedbuff, fedasync, fedavg.")] = "ftte,fedbuff,fedavg",
    seed: Annotated[Optional[int], typer.Option(help="Seed (default: the recipe's).")] = None,
    fleet: Annotated[Optional[Path], typer.Option(
        help="Profiles JSON to replay (see sim/devices.py) instead of the recipe's sim section.")
    ] = None,
    budget_fraction: Annotated[Optional[float], typer.Option(
        min=0.0, help="FTTE memory budget as a fraction of full training memory "
                      "(default: recipe plan.memory_budget, else the smallest client).")] = None,
    until: Annotated[str, typer.Option(
        help="target: stop each strategy at the target accuracy; limit: run to "
             "stop.max_versions / stop.time_limit.")] = "target",
    eval_samples: Annotated[int, typer.Option(
        min=0, help="Global test samples per evaluation (0: all).")] = 1000,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/sim-<time>).")
                   ] = None,
    backend: Annotated[str, typer.Option(
        help="Where client jobs train: auto (threads when the model and this machine allow, "
             "else inprocess; the same results either way); inprocess; batched (jobs of one "
             "model version train as one batched computation in this process; results equal "
             "in-process ones up to float rounding); processes (jobs train in --workers forked "
             "processes on this machine; results equal in-process ones); threads (jobs "
             "train in --workers threads of this process: one process's memory; results "
             "equal in-process ones); or ray (needs pip install 'ftte-cli\\[ray]'; results "
             "equal in-process ones).")] = "auto",
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster: auto or HOST:PORT (default: start a local Ray).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Worker processes (--backend processes) or trainer threads (--backend "
                    "threads or auto); default: one per usable CPU."
    )] = None,
    threads: Annotated[int, typer.Option(
        min=1, help="torch threads for local training (1 is fastest for many tiny jobs).")] = 1,
    tensorboard: TensorboardOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Compare strategies on a simulated fleet: time to target, accuracy, memory, payload."""
    import torch

    # Jobs are tiny: extra intra-op threads only spin, and under load they multiply CPU time.
    torch.set_num_threads(threads)
    with handle_errors(fmt):
        if until not in ("target", "limit"):
            raise ConfigError(f"--until: expected target or limit, got {until!r}")
        rec = load_recipe(recipe)
        if tensorboard is not None:
            api.require_tensorboard()  # before the run, not after it
        jobs_on = api.sim_backend(backend, address, workers)
        folder = out if out is not None else new_run_dir(Path("runs"), "sim")
        folder.mkdir(parents=True, exist_ok=True)
        show = fmt == Format.table and sys.stderr.isatty()
        with _progress(show) as bar, jobs_on:
            tasks: dict[str, Any] = {}

            def progress(name: str, now: float, version: int, acc: Optional[float]) -> None:
                if bar is None:
                    return
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=rec.stop.max_versions, info="")
                info = f"v{version}  t={now:.0f}s  acc={acc:.3f}" if acc is not None else ""
                bar.update(tasks[name], completed=version, info=info)

            result = api.simulate(
                rec, strategies=_strategies(strategies), clients=clients, stragglers=stragglers,
                seed=seed, fleet=fleet, budget_fraction=budget_fraction,
                until_target=until == "target", eval_samples=eval_samples or None, out=folder,
                progress=progress)
        doc = {**summary_doc(result), "run_dir": str(folder)}
        if tensorboard is not None:
            doc["tensorboard"] = [str(b) for b in api.export_tensorboard(folder, tensorboard)]
        if fmt == Format.json:
            print_json(doc)
            return
        title = (f"{result.clients} clients, {result.stragglers:.0%} stragglers, seed "
                 f"{result.seed}: virtual time and bytes (down + up) to accuracy "
                 f"{result.target_accuracy:.2f}; memory = training memory per device")
        console.print(table(title, COLUMNS, table_rows(doc)))
        console.print(table("Plans (trained share, memory vs full training, clients left out) "
                            "and time, memory, payload to target / FedAvg's", PLAN_COLUMNS,
                            plan_rows(doc)))
        for s in doc["strategies"]:
            for line in (excluded_note(s), over_memory_note(s)):
                if line:
                    console.print(f"note: {line}", highlight=False)
        if doc["fleet"]:
            console.print("fleet: " + ", ".join(f"{n} {k}" for k, n in doc["fleet"].items()),
                          highlight=False)
        for note in result.notes:
            console.print(f"note: {note}", highlight=False)
        console.print(f"run directory: {folder}", highlight=False)
