"""`ftte simulate`."""

from __future__ import annotations

from ftte_cli.errors import FtteError
from ftte_cli.output import handle_errors


def simulate() -> None:
    """Not implemented yet."""
    with handle_errors():
        raise FtteError("ftte simulate: not implemented yet")
