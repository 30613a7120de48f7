"""`ftte recipes list` and `ftte recipes show NAME`: the recipes that ship inside the package.

Any `--recipe` option takes these names (`har` or `har.yaml`) from any directory; a local file of
the same name wins. `show` prints the file verbatim, so `ftte recipes show har > mine.yaml` is the
way to start a recipe of one's own.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ftte_cli import builtin
from ftte_cli.commands.options import FormatOpt
from ftte_cli.config.recipe import load_recipe
from ftte_cli.config.schema import load_yaml
from ftte_cli.errors import ConfigError
from ftte_cli.output import Format, console, handle_errors, print_json, table

app = typer.Typer(help="The built-in recipes (usable by name in every --recipe).",
                  no_args_is_help=True)

COLUMNS = ("name", "model", "dataset", "strategy", "data path", "about")


def _about(text: str) -> str:
    """The first comment line of a recipe file: what it trains."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def recipe_rows() -> list[dict[str, Any]]:
    """One record per built-in recipe, loaded and validated like any recipe."""
    rows = []
    for name in builtin.names(builtin.RECIPES):
        path = builtin.folder(builtin.RECIPES) / f"{name}.yaml"
        rec = load_recipe(path)
        raw = load_yaml(path).get("data") or {}  # the path as written: relative to a copy too
        needs = raw.get("path")
        rows.append({"name": name, "model": rec.model.name, "dataset": rec.data.dataset,
                     "strategy": rec.strategy.name, "data_path": needs,
                     "about": _about(path.read_text()), "path": str(path)})
    return rows


@app.command("list")
def list_recipes(fmt: FormatOpt = Format.table) -> None:
    """List the built-in recipes: `--recipe NAME` uses one, `ftte recipes show NAME` prints it."""
    with handle_errors(fmt):
        rows = recipe_rows()
        if fmt == Format.json:
            print_json({"recipes": rows, "folder": str(builtin.folder(builtin.RECIPES))})
            return
        console.print(table("Built-in recipes", COLUMNS, [
            [r["name"], r["model"], r["dataset"], r["strategy"], r["data_path"] or "-",
             r["about"]] for r in rows]))


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A built-in recipe name (`har` or `har.yaml`).")],
) -> None:
    """Print a built-in recipe verbatim (redirect it to a file to start your own)."""
    with handle_errors(Format.table):
        path = builtin.builtin_path(builtin.RECIPES, name)
        if path is None:
            known = ", ".join(builtin.names(builtin.RECIPES))
            raise ConfigError(f"{name}: no built-in recipe of that name (known: {known})")
        sys.stdout.write(path.read_text())
