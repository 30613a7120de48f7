"""Recipes and the example inventory that ship inside the package, found by name.

`ftte plan --recipe har.yaml` must work from any directory, also for someone who installed the
wheel and has no checkout. So `--recipe` and `--inventory` take either a path or a built-in name,
resolved in this order, here and nowhere else:

1. the value as a path, when that file exists: a local file always wins, also over a built-in
   of the same name (the CLI then says which file it used);
2. when the value is a bare name (no folder part): `<name>`, then `<name>.yaml`, among the
   built-ins (`recipes/` and `inventory/` beside this file; in a checkout they are links to the
   repository's own `recipes/` and `inventory/` folders, so there is one copy of each file);
3. otherwise the value as given, so the loader's "file not found" names what the user typed.

    resolved = resolve(RECIPES, "har")     # Resolved(path=.../builtin/recipes/har.yaml, ...)
    names(RECIPES)                         # ["cifar10", "digits", "har", "har-uci"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

RECIPES = "recipes"
INVENTORIES = "inventory"
KINDS = (RECIPES, INVENTORIES)


@dataclass(frozen=True)
class Resolved:
    """Where a `--recipe` / `--inventory` value led."""

    path: Path
    """The file to load (may not exist: the loader then reports it)."""
    builtin: bool
    """True when `path` is a file shipped inside the package."""
    shadowed: Optional[Path] = None
    """The built-in file of the same name that a local file took precedence over."""


def folder(kind: str) -> Path:
    """The folder holding the built-in files of `kind` (RECIPES or INVENTORIES)."""
    if kind not in KINDS:
        raise ValueError(f"unknown built-in kind {kind!r}")
    return Path(__file__).resolve().parent / kind


def names(kind: str) -> list[str]:
    """The built-in names of `kind`, sorted, without the .yaml suffix."""
    base = folder(kind)
    return sorted(p.stem for p in base.glob("*.yaml")) if base.is_dir() else []


def builtin_path(kind: str, name: str) -> Optional[Path]:
    """The built-in file called `name` or `name.yaml`, or None; bare names only."""
    if not name or Path(name).name != name or name in (".", ".."):
        return None
    base = folder(kind)
    for candidate in (base / name, base / f"{name}.yaml"):
        if candidate.suffix == ".yaml" and candidate.is_file():
            return candidate
    return None


def resolve(kind: str, value: Path | str) -> Resolved:
    """Apply the lookup order of the module docstring to one `--recipe` / `--inventory` value."""
    given = Path(value).expanduser()
    shipped = builtin_path(kind, str(value))
    if given.is_file():
        return Resolved(given, builtin=False, shadowed=shipped)
    if shipped is not None:
        return Resolved(shipped, builtin=True)
    return Resolved(given, builtin=False)


def describe(kind: str, value: Path | str, resolved: Resolved) -> Optional[str]:
    """The one line telling the user which file a bare name led to (None: nothing to say)."""
    what = "recipe" if kind == RECIPES else "inventory"
    if resolved.builtin:
        return f"{value}: using the built-in {what} {resolved.path}"
    if resolved.shadowed is not None:
        return (f"{value}: using the local file {resolved.path.resolve()} "
                f"(not the built-in {what} of that name)")
    return None
