"""Run directory I/O: atomic JSON and safetensors files, JSON-lines appenders, checkpoints.

Every whole-file write goes to a temporary file, is fsynced and then renamed over the target
(`engine/serialize.atomic_write_bytes`), so a crash leaves the old file or the new one. Tensors
are stored with safetensors only. A checkpoint is `<name>.safetensors` (the tensors of
`Coordinator.state()`) plus `<name>.json` (its meta); the JSON is written last, so a checkpoint
whose JSON exists is complete.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from torch import Tensor

from ftte_cli.engine.serialize import (
    TensorPayloadError,
    atomic_write_bytes,
    load_tensors,
    save_tensors,
)
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.rundir.jsonable import to_jsonable

PathLike = Union[str, Path]
Tensors = Dict[str, Tensor]


def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write `obj` (dataclasses, enums and paths allowed) as indented JSON."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: PathLike) -> Any:
    """Read a JSON file; ConfigError naming the file when missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not JSON: {err}") from None


def write_tensors(path: PathLike, tensors: Tensors,
                  metadata: Optional[Dict[str, str]] = None) -> None:
    """Atomically write tensors as safetensors; entries sharing storage are stored separately."""
    save_tensors(path, _unshared(tensors), metadata)


def _unshared(tensors: Tensors) -> Tensors:
    # safetensors refuses tensors that share memory (snapshots share the current w*).
    seen: set = set()
    out: Tensors = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[name] = t.clone() if key in seen else t
        if key is not None:
            seen.add(key)
    return out


class JsonlWriter:
    """Appends one JSON object per line to a file and flushes each line (metrics, events)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: Any) -> None:
        """Append one record."""
        line = json.dumps(to_jsonable(record), separators=(",", ":"), allow_nan=False)
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (further writes fail)."""
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: PathLike) -> list:
    """Every record of a JSON-lines file; ConfigError naming the file and line when malformed."""
    path = Path(path)
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    for i, line in enumerate(lines, start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as err:
                raise ConfigError(f"{path}:{i}: not JSON: {err}") from None
    return out


def save_checkpoint(folder: PathLike, state: Tuple[Tensors, Dict[str, Any]],
                    name: str = "checkpoint") -> Path:
    """Write `Coordinator.state()` as <name>.safetensors + <name>.json; returns the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = state
    write_tensors(folder / f"{name}.safetensors", tensors)
    write_json(folder / f"{name}.json", meta)
    return folder / f"{name}.json"


def load_checkpoint(folder: PathLike, name: str = "checkpoint") -> Tuple[Tensors, Dict[str, Any]]:
    """(tensors, meta) saved by save_checkpoint; RunError naming the file when absent or broken."""
    folder = Path(folder)
    meta_path = folder / f"{name}.json"
    if not meta_path.exists():
        raise RunError(f"{meta_path}: no checkpoint")
    meta = read_json(meta_path)
    try:
        tensors = load_tensors(folder / f"{name}.safetensors")
    except TensorPayloadError as err:
        raise RunError(str(err)) from None
    return tensors, meta


def new_run_dir(base: PathLike, prefix: str, now: Optional[datetime] = None) -> Path:
    """A fresh folder `<base>/<prefix>-YYYYmmdd-HHMMSS[-n]` (created)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    base = Path(base)
    candidate = base / f"{prefix}-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = base / f"{prefix}-{stamp}-{n}"
    candidate.mkdir(parents=True)
    return candidate
