"""Plain JSON types from the project's values: what every file ftte writes, and --format json, use.

Stdlib only, so config/, the server and the run-directory writers can use it without reaching
up into the CLI's output module.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from pathlib import Path
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from dataclasses, enums, paths and tuples."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and (obj != obj or obj in (math.inf, -math.inf)):
        return None  # NaN and Infinity are not JSON: null, so every file we write parses
    return obj
