"""Shared options: declared once (commands/options.py), so every command documents and defaults
them alike; help text survives Rich markup."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.commands.options import RECIPE_HELP
from ftte_cli.fleet.ssh import SLOW_DEVICE_SSH, SshOptions

COMMAND = typer.main.get_command(app)


def _commands(group: Any = COMMAND, prefix: str = "") -> dict[str, Any]:
    """Every leaf command by its full name ("testbed up"); typer's click objects, duck-typed
    (typer ships its own click classes)."""
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        out.update(_commands(cmd, f"{prefix}{name} ") if hasattr(cmd, "commands")
                   else {f"{prefix}{name}": cmd})
    return out


def _option(cmd: Any, flag: str) -> Any:
    return next((p for p in cmd.params if flag in getattr(p, "opts", ())), None)


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_recipe_option_is_the_shared_one() -> None:
    recipes = {name: _option(cmd, "--recipe") for name, cmd in _commands().items()}
    declared = {name: opt for name, opt in recipes.items() if opt is not None}
    assert {"plan", "deploy", "train", "simulate", "demo", "sweep", "profile"} <= set(declared)
    assert {name: opt.help for name, opt in declared.items()} == {
        name: RECIPE_HELP for name in declared}
    assert all(opt.opts == ["--recipe", "-r"] for opt in declared.values())


def test_one_connect_timeout_default_for_every_command() -> None:
    defaults = {name: opt.default for name, cmd in _commands().items()
                if (opt := _option(cmd, "--connect-timeout")) is not None}
    assert {"profile", "deploy", "train", "exec", "sweep"} <= set(defaults)
    assert set(defaults.values()) == {SshOptions().connect_timeout} == {20.0}
    assert SLOW_DEVICE_SSH == SshOptions(connect_timeout=20.0, command_timeout=300.0)


@pytest.mark.parametrize("command, text", [
    (("simulate",), "pip install 'ftte-cli[ray]'"),
    (("report",), "pip install 'ftte-cli[tensorboard]'"),
])
def test_square_brackets_survive_rich_markup(command: tuple[str, ...], text: str) -> None:
    assert text in " ".join(_help(*command).split())
