"""`ftte report RUN_DIR`: PNG plots into RUN_DIR/report/ and a summary table (or JSON);
`ftte report --compare RUN_A RUN_B`: per strategy, the ratio of simulated to measured time to
target of a fleet sweep (or run) and its `--simulate` twin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftte_cli import api
from ftte_cli.commands.options import FormatOpt
from ftte_cli.errors import ConfigError
from ftte_cli.output import Format, console, handle_errors, print_json

RunDirArg = Annotated[
    Optional[Path], typer.Argument(help="Run directory written by `ftte train` or `ftte simulate`.")
]
CompareOpt = Annotated[
    Optional[tuple[Path, Path]], typer.Option(
        "--compare", help="Two sweeps or runs (e.g. a fleet sweep and its --simulate twin): "
        "simulated / measured time to target per strategy.")
]


TensorboardOpt = Annotated[
    Optional[Path], typer.Option(
        "--tensorboard", help="Also write the run's scalars for `tensorboard --logdir DIR` "
        "(several runs in one DIR overlay; needs pip install 'ftte-cli\\[tensorboard]').")
]


def report(run_dir: RunDirArg = None, compare: CompareOpt = None,
           tensorboard: TensorboardOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Plot accuracy, staleness and per-device figures of a run and summarise it."""
    from ftte_cli.startmodel import describe_start
    from ftte_cli.ui.report import compare_table, device_tables, summary_table

    with handle_errors(fmt):
        if compare is not None:
            result = api.compare_runs(*compare)
            if fmt == Format.json:
                print_json(result)
            else:
                console.print(compare_table(result))
            return
        if run_dir is None:
            raise ConfigError("report: give RUN_DIR, or --compare RUN_A RUN_B")
        rep = api.report(run_dir)
        boards = [] if tensorboard is None else api.export_tensorboard(run_dir, tensorboard)
    if fmt == Format.json:
        print_json({"run_dir": str(rep.run.path), "kind": rep.run.kind,
                    "target": rep.run.target, "init": rep.run.init, "rows": rep.rows,
                    "plots": [str(p) for p in rep.plots],
                    "tensorboard": [str(b) for b in boards]})
        return
    console.print(summary_table(rep.run, rep.rows))
    if rep.run.init:
        console.print(describe_start(rep.run.init), highlight=False)
    for devices in device_tables(rep.run):
        console.print(devices)
    console.print("plots: " + ", ".join(str(p) for p in rep.plots), highlight=False,
                  soft_wrap=True)
    if boards:
        console.print(f"tensorboard: tensorboard --logdir {tensorboard}", highlight=False,
                      soft_wrap=True)
