"""The grid of a sweep: strategies x seeds x every `--set KEY=V1,V2` value, in a stable order.

A run's recipe is the sweep's recipe with its strategy, its seed (`recipe.seed`: the data split,
the initial model and the coordinator's RNG) and its overrides applied as dotted recipe keys
(`strategy.buffer_size=5`), validated like the recipe file itself, so a bad key or value is a
ConfigError naming `--set` and the key.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from typing import Any, Union

from ftte_cli.config.recipe import STRATEGIES, Recipe, recipe_from_dict, recipe_to_dict
from ftte_cli.errors import ConfigError

Scalar = Union[int, float, bool, str]
_SAFE = re.compile(r"[^A-Za-z0-9_.]+")


@dataclass(frozen=True)
class Axis:
    """One `--set` option: a dotted recipe key and the values it takes."""

    key: str  # e.g. "strategy.buffer_size"
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class GridSpec:
    """What a sweep runs: every combination of strategies, seeds and axes."""

    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    axes: tuple[Axis, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid; `run_id` names its folder and is stable across resumes."""

    run_id: str
    strategy: str
    seed: int
    overrides: tuple[tuple[str, Scalar], ...] = ()

    @property
    def group(self) -> str:
        """The comparison row this run belongs to: strategy and overrides, seeds pooled."""
        return _label(self.strategy, self.overrides)


def parse_value(text: str) -> Scalar:
    """A `--set` value as YAML would read it: int, float, true/false, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)  # type: ignore[operator]
        except ValueError:
            pass
    return text.strip()


def parse_axis(text: str) -> Axis:
    """`strategy.buffer_size=5,10` -> Axis; ConfigError naming `--set` on a malformed option."""
    key, sep, values = text.partition("=")
    key = key.strip()
    items = [v for v in values.split(",") if v.strip()]
    if not sep or not key or not items or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", key):
        raise ConfigError(f"--set: expected SECTION.KEY=V1,V2 (e.g. strategy.buffer_size=5,10), "
                          f"got {text!r}")
    if key in ("strategy.name", "seed"):
        raise ConfigError(f"--set {key}: use --strategies / --seeds for that")
    return Axis(key, tuple(parse_value(v) for v in items))


def parse_list(text: str, what: str) -> tuple[str, ...]:
    """A comma-separated option; ConfigError naming it when empty."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise ConfigError(f"--{what}: give at least one value")
    return items


def make_spec(strategies: str, seeds: str, sets: list[str]) -> GridSpec:
    """The grid from the command's options (checked: known strategies, integer seeds)."""
    names = parse_list(strategies, "strategies")
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ConfigError(f"--strategies: unknown {unknown[0]!r} (known: {', '.join(STRATEGIES)})")
    try:
        seed_values = tuple(int(s) for s in parse_list(seeds, "seeds"))
    except ValueError:
        raise ConfigError(f"--seeds: expected integers like 1,2,3, got {seeds!r}") from None
    axes = tuple(parse_axis(s) for s in sets)
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--set: a key is given twice: {keys}")
    return GridSpec(tuple(dict.fromkeys(names)), tuple(dict.fromkeys(seed_values)), axes)


def expand(spec: GridSpec) -> list[RunSpec]:
    """Every run, strategies outermost, then the axes, then seeds (a row's seeds run together)."""
    runs = []
    combos = list(itertools.product(*(a.values for a in spec.axes)))
    for strategy in spec.strategies:
        for combo in combos:
            overrides = tuple(zip((a.key for a in spec.axes), combo))
            for seed in spec.seeds:
                run_id = f"{_label(strategy, overrides)}-seed{seed}"
                runs.append(RunSpec(run_id, strategy, seed, overrides))
    return runs


def _label(strategy: str, overrides: tuple[tuple[str, Scalar], ...]) -> str:
    parts = [strategy] + [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides]
    return "-".join(_SAFE.sub("_", p) for p in parts)


def apply(recipe: Recipe, run: RunSpec) -> Recipe:
    """The run's recipe: strategy, seed and overrides applied, validated as a recipe file is."""
    data: dict[str, Any] = recipe_to_dict(recipe.with_strategy(run.strategy))
    data["seed"] = run.seed
    for key, value in run.overrides:
        _set(data, key, value)
    try:
        built = recipe_from_dict(data, "--set")
    except ConfigError as err:
        raise ConfigError(f"{err} (run {run.run_id})") from None
    return replace(built, source=recipe.source)


def _set(data: dict[str, Any], key: str, value: Scalar) -> None:
    *path, leaf = key.split(".")
    node = data
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a recipe section")
        node = child
    if leaf not in node:
        raise ConfigError(f"--set {key}: unknown key {leaf!r} in {'.'.join(path)}")
    node[leaf] = value
