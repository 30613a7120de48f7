from __future__ import annotations

from pathlib import Path

import pytest

from ftte_cli.config.recipe import load_recipe
from ftte_cli.errors import ConfigError, ExitCode
from ftte_cli.units import parse_size

ROOT = Path(__file__).resolve().parents[2]


def test_har_recipe_loads() -> None:
    recipe = load_recipe(ROOT / "recipes" / "har.yaml")
    assert recipe.model.name == "har_cnn"
    assert recipe.strategy.buffer_size <= recipe.strategy.max_concurrency


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train: {batch_sise: 3}\n", "train.batch_sise: unknown key"),
        ("train: {batch_size: x}\n", "train.batch_size: expected int"),
        ("strategy: {buffer_size: 30, max_concurrency: 5}\n", "strategy.buffer_size"),
        ("data: {dataset: mnist}\n", "data.dataset: must be one of"),
        ("train: [1, 2\n", "invalid YAML (line"),
    ],
)
def test_recipe_errors_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_missing_recipe_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, expected", [("2MB", 2_000_000), ("1KiB", 1024), ("300", 300), ("1.5k", 1536)]
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="budget: not a size"):
        parse_size("two megs", "budget")
