"""The `ftte` command line: registration only; each command lives in ftte_cli/commands/<name>.py."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Optional

import typer

from ftte_cli import __version__
from ftte_cli.commands import (
    demo,
    deploy,
    execute,
    inventory,
    plan,
    profile,
    recipes,
    report,
    simulate,
    sweep,
    testbed,
    train,
)

app = typer.Typer(
    name="ftte",
    help="Federated Tiny Training Engine: profile, plan, deploy and train on small devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("profile")(profile.profile)
app.command("plan")(plan.plan)
app.command("deploy")(deploy.deploy)
app.command("train")(train.train)
app.command("simulate")(simulate.simulate)
app.command("report")(report.report)
app.command("demo")(demo.demo)
app.command("sweep")(sweep.sweep)
app.command("exec")(execute.exec_command)
app.add_typer(inventory.app, name="inventory")
app.add_typer(recipes.app, name="recipes")
app.add_typer(testbed.app, name="testbed")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftte {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Federated Tiny Training Engine."""
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("FTTE_LOG", "WARNING"))
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _quiet_paramiko()


def _quiet_paramiko() -> None:
    """paramiko logs every expected failure (refused key, silent port) as ERROR with a
    traceback, which would land in the user's terminal; the recap's detail says it in one line
    instead. Set here, at the entry point, so importing ftte_cli changes no one's logging.
    FTTE_PARAMIKO_LOG=DEBUG brings paramiko's own log back."""
    level = os.environ.get("FTTE_PARAMIKO_LOG", "CRITICAL").upper()
    logging.getLogger("paramiko").setLevel(getattr(logging, level, logging.CRITICAL))


def main() -> None:
    """Console-script entry point."""
    app()
