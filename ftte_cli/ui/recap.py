"""The recap every fleet command ends with: one row per device, like Ansible's PLAY RECAP.

Rows are built once (`recap_rows`) and rendered either as a Rich table with a one-line summary
or as JSON: {"devices": [{device, host, outcome, detail, elapsed}], "summary": {outcome: n},
"exit_code": n}. Commands then exit with `results.exit_code()` (`exit_with`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftte_cli.fleet.ssh.results import FleetResults, Outcome
from ftte_cli.output import Format, console, print_json, to_jsonable

STYLES = {
    Outcome.ok: "green",
    Outcome.changed: "yellow",
    Outcome.unreachable: "red",
    Outcome.auth_failed: "bold red",
    Outcome.hostkey_mismatch: "bold red",
    Outcome.timeout: "red",
    Outcome.failed: "red",
    Outcome.busy: "magenta",
    Outcome.interrupted: "bold yellow",
}
COLUMNS = ("device", "host", "outcome", "detail", "elapsed")


def _address(result: Any) -> str:
    d = result.device
    return "local" if d.connection == "local" else f"{d.host}:{d.port}"


def recap_rows(results: FleetResults, with_values: bool = False) -> list[dict[str, Any]]:
    """One dict per device in inventory order; `value` included only when asked."""
    rows = []
    for name, r in results.results.items():
        row: dict[str, Any] = {
            "device": name,
            "host": _address(r),
            "outcome": r.outcome.value,
            "detail": r.detail,
            "elapsed": round(r.elapsed, 3),
        }
        if with_values:
            row["value"] = to_jsonable(r.value)
        rows.append(row)
    return rows


def summary(results: FleetResults) -> dict[str, int]:
    """Count per outcome, in Outcome order, zeros left out."""
    counts = Counter(r.outcome for r in results)
    return {o.value: counts[o] for o in Outcome if counts[o]}


def recap_table(results: FleetResults, title: str = "Recap") -> Table:
    """The human view: outcome coloured, detail folded, elapsed in seconds."""
    t = Table(title=title, title_justify="left")
    for col in COLUMNS:
        t.add_column(col, overflow="fold", justify="right" if col == "elapsed" else "left")
    for row, r in zip(recap_rows(results), results):
        t.add_row(
            row["device"], row["host"], Text(row["outcome"], style=STYLES[r.outcome]),
            row["detail"], f"{row['elapsed']:.1f}s",
        )
    return t


def summary_line(results: FleetResults) -> str:
    """`5 devices: ok=3 timeout=1 failed=1 (exit 8)`."""
    counts = " ".join(f"{k}={v}" for k, v in summary(results).items()) or "nothing to do"
    return f"{len(results)} devices: {counts} (exit {int(results.exit_code())})"


def render_recap(
    results: FleetResults,
    fmt: Format = Format.table,
    title: str = "Recap",
    out: Optional[Console] = None,
    with_values: bool = False,
) -> None:
    """Print the recap as a table plus summary line, or as one JSON document."""
    if fmt == Format.json:
        print_json({
            "devices": recap_rows(results, with_values),
            "summary": summary(results),
            "exit_code": int(results.exit_code()),
        })
        return
    target = out or console
    target.print(recap_table(results, title))
    target.print(summary_line(results), highlight=False)


def exit_with(results: FleetResults) -> None:
    """Exit the command with the fleet's documented code (nothing happens when it is 0)."""
    code = results.exit_code()
    if code:
        raise typer.Exit(int(code))
