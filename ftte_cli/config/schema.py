"""Strict dict -> frozen dataclass conversion: unknown keys and wrong types name file and key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from ftte_cli.errors import ConfigError
from ftte_cli.units import parse_size

T = TypeVar("T")


class _SizeMarker:
    """Marks an int field that a file may write as a human size ("2MB", "512KiB")."""


# A size in bytes: parsed when the file is read, so no caller ever parses it again.
Size = Annotated[int, _SizeMarker]


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing file or bad syntax is a one-line ConfigError naming it."""
    import yaml  # not on devices: the agent rebuilds recipes from JSON

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


class DuplicateKey(Exception):
    """One YAML mapping names a key twice (YAML would silently keep the last)."""


def _strict_loader() -> Any:
    """yaml.SafeLoader that refuses a key written twice in one mapping, naming both lines."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` may repeat keys on purpose: explicit ones win
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise DuplicateKey(f"duplicate key {key!r} at lines {seen[key]} and {line} "
                                       "of one mapping (YAML would keep only the last)")
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def build(cls: type[T], data: Any, where: str) -> T:
    """Instantiate dataclass `cls` from `data`; `where` is "file: dotted.key" for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_join(where, str(key))}: unknown key (known: {known})")
        kwargs[key] = _coerce(hints[key], value, _join(where, key))
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if not where.endswith(":") else f"{where} {key}"


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        if _SizeMarker in args[1:]:
            return parse_size(value, where)
        return _coerce(args[0], value, where)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (float, int, bool, str, Path):
        name = "path" if hint is Path else hint.__name__
        raise ConfigError(f"{where}: expected {name}, got {value!r}")
    return value
