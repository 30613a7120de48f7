"""The one output handler: human tables and JSON rendered from the same rows, errors mapped once."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftte_cli.errors import ExitCode, FtteError
from ftte_cli.rundir.jsonable import to_jsonable


class Format(str, Enum):
    """Output formats every table-printing command accepts."""

    table = "table"
    json = "json"


console = Console()
err_console = Console(stderr=True)
log = logging.getLogger(__name__)


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout (no Rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A Rich table with the given header and rows, every cell as text."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*("" if cell is None else str(cell) for cell in row))
    return t


@contextmanager
def handle_errors(fmt: Format = Format.table) -> Iterator[None]:
    """Map every FtteError to one line and its exit code; JSON mode reports errors as JSON too."""
    try:
        yield
    except FtteError as err:
        _fail(str(err), err.exit_code, fmt)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.INTERRUPTED, fmt)


def _fail(message: str, code: ExitCode, fmt: Format) -> None:
    if fmt == Format.json:
        print_json({"error": message, "exit_code": int(code)})
    else:
        # escape: a message may hold brackets ("pip install 'ftte-cli[ray]'"), not markup
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                          soft_wrap=True)
    raise typer.Exit(int(code))
