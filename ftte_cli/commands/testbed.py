"""`ftte testbed ...`."""

from __future__ import annotations

import typer

app = typer.Typer(help="testbed commands.", no_args_is_help=True)
