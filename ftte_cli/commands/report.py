"""`ftte report RUN_DIR`: PNG plots into RUN_DIR/report/ and a summary table (or JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftte_cli.commands.options import FormatOpt
from ftte_cli.output import Format, console, handle_errors, print_json

RunDirArg = Annotated[
    Path, typer.Argument(help="Run directory written by `ftte train` or `ftte simulate`.")
]


def report(run_dir: RunDirArg, fmt: FormatOpt = Format.table) -> None:
    """Plot accuracy, staleness and per-device figures of a run and summarise it."""
    from ftte_cli.ui.report import (
        device_tables,
        load_run,
        render_plots,
        report_rows,
        summary_table,
    )

    with handle_errors(fmt):
        run = load_run(run_dir)
        plots = render_plots(run)
        rows = report_rows(run)
    if fmt == Format.json:
        print_json({"run_dir": str(run.path), "kind": run.kind, "target": run.target,
                    "rows": rows, "plots": [str(p) for p in plots]})
        return
    console.print(summary_table(run, rows))
    for devices in device_tables(run):
        console.print(devices)
    console.print("plots: " + ", ".join(str(p) for p in plots), highlight=False, soft_wrap=True)
