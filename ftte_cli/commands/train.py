"""`ftte train`."""

from __future__ import annotations

from ftte_cli.errors import FtteError
from ftte_cli.output import handle_errors


def train() -> None:
    """Not implemented yet."""
    with handle_errors():
        raise FtteError("ftte train: not implemented yet")
