"""Built-in recipes and inventory by name: lookup order, the CLI's message and `ftte recipes`, in
process (the installed wheel used from an empty directory: test_builtin_wheel.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftte_cli import builtin
from ftte_cli.cli import app
from ftte_cli.config.inventory import load_inventory
from ftte_cli.config.recipe import load_recipe
from ftte_cli.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[2]
SMALL = "name: mine\nseed: 2\ndata: {dataset: synthetic_har, windows: 600, subjects: 6}\n"


def test_every_repository_recipe_and_inventory_is_built_in() -> None:
    assert builtin.names(builtin.RECIPES) == sorted(p.stem for p in REPO.glob("recipes/*.yaml"))
    assert builtin.names(builtin.INVENTORIES) == ["lab"]
    assert (builtin.folder(builtin.RECIPES) / "har.yaml").read_bytes() == (
        REPO / "recipes/har.yaml").read_bytes()


def test_a_bare_name_with_or_without_suffix_finds_the_built_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for value in ("har", "har.yaml"):
        found = builtin.resolve(builtin.RECIPES, value)
        assert found.builtin and found.path == builtin.folder(builtin.RECIPES) / "har.yaml"
    assert load_recipe("har").name == "har"
    assert "pi4-a" in load_inventory(Path("lab")).devices


def test_a_local_file_of_the_same_name_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("har.yaml").write_text(SMALL)
    found = builtin.resolve(builtin.RECIPES, "har.yaml")
    assert not found.builtin and found.path == Path("har.yaml")
    assert found.shadowed == builtin.folder(builtin.RECIPES) / "har.yaml"
    assert load_recipe("har.yaml").name == "mine"
    assert load_recipe("har").name == "har"  # no local file called "har": the built-in


def test_paths_and_unknown_names_are_not_looked_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert builtin.resolve(builtin.RECIPES, "sub/har.yaml") == builtin.Resolved(
        Path("sub/har.yaml"), builtin=False)
    assert builtin.builtin_path(builtin.RECIPES, "../recipes/har.yaml") is None
    with pytest.raises(ConfigError, match=r"^nope\.yaml: file not found$"):
        load_recipe("nope.yaml")


def test_cli_says_which_file_a_name_led_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inventory", "list", "-i", "lab", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "pi4-a" in json.loads(result.stdout)["_meta"]["hostvars"]
    assert "lab: using the built-in inventory" in result.stderr
    Path("lab").write_text(
        "all:\n  hosts:\n    solo:\n      ansible_host: 10.0.0.9\n      ansible_user: me\n")
    result = CliRunner().invoke(app, ["inventory", "list", "-i", "lab", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["_meta"]["hostvars"]) == ["solo"]
    assert "using the local file" in result.stderr and "not the built-in" in result.stderr


def test_recipes_list_and_show() -> None:
    result = CliRunner().invoke(app, ["recipes", "list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["recipes"]}
    assert set(rows) == set(builtin.names(builtin.RECIPES))
    assert rows["har"]["model"] == "har_cnn" and rows["har"]["data_path"] is None
    assert rows["har-uci"]["data_path"] == "../data/UCI HAR Dataset"
    shown = CliRunner().invoke(app, ["recipes", "show", "har"])
    assert shown.exit_code == 0 and shown.stdout == (REPO / "recipes/har.yaml").read_text()
    missing = CliRunner().invoke(app, ["recipes", "show", "nope"])
    assert missing.exit_code == ExitCode.USAGE
    assert "nope: no built-in recipe of that name (known: cifar10" in missing.output
