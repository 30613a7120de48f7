"""The run directory of `ftte train` (layout below; file I/O through rundir/store.py).

    runs/train-<timestamp>/
      manifest.json      recipe, inventory hash, profiles, plan, bundle hashes, seed, versions
      plan.json, plan.safetensors
      metrics.jsonl      one record per model version (and its evaluation when there was one)
      events.jsonl       registrations, accepted and rejected updates (with reasons), offline...
      checkpoints/       v<version>.safetensors + v<version>.json, the last few kept, atomic
      devices/<name>.log each agent's log, fetched when the run stops
      summary.json       the run's figures (engine/metrics.py), written at the end
"""

from __future__ import annotations

import hashlib
import logging
import platform
import re
import threading
from pathlib import Path
from typing import Any, Optional

from ftte_cli.engine.coordinator import Coordinator
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.rundir.store import (
    JsonlWriter,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
)

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 3
_CKPT = re.compile(r"^v(\d{6,})\.json$")
_TENSORS = re.compile(r"^v(\d{6,})\.safetensors$")
_TMP = re.compile(r"^\..+\.tmp\d+$")  # engine/serialize.atomic_write_bytes's temporary files
_META_KEYS = ("version", "counter", "snapshots", "jobs", "clients", "accepted", "rng",
              "metrics", "strategy", "bound")
log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of what the run depended on, for the manifest."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("ftte-cli", "torch", "safetensors", "aiohttp", "paramiko", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


class RunDir:
    """One run's folder; the writers are safe to call from the server's threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        (path / "devices").mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._events = JsonlWriter(path / "events.jsonl")
        self._metrics = JsonlWriter(path / "metrics.jsonl")

    # -- manifest ------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write manifest.json atomically."""
        write_json(self.manifest_path, manifest)

    def read_manifest(self) -> dict[str, Any]:
        """manifest.json (RunError when the folder is not a train run)."""
        if not self.manifest_path.exists():
            raise RunError(f"{self.path}: not a train run directory (no manifest.json)")
        data = read_json(self.manifest_path)
        if not isinstance(data, dict) or data.get("kind") != "train":
            raise RunError(f"{self.manifest_path}: kind: expected 'train'")
        return data

    # -- logs ----------------------------------------------------------------------------------
    def event(self, record: dict[str, Any]) -> None:
        """Append one event (server threads call this)."""
        with self._lock:
            self._events.write(record)

    def metric(self, record: dict[str, Any]) -> None:
        """Append one metrics record."""
        with self._lock:
            self._metrics.write(record)

    def close(self) -> None:
        """Close the JSON-lines files."""
        with self._lock:
            self._events.close()
            self._metrics.close()

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, coordinator: Coordinator, elapsed: float) -> Path:
        """Checkpoint the coordinator (call on its thread) and keep only the last few."""
        tensors, meta = coordinator.state()
        meta = {**meta, "elapsed": elapsed}
        path = save_checkpoint(self.path / CHECKPOINTS, (tensors, meta),
                               name=f"v{coordinator.version:06d}")
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (their JSON exists), oldest first."""
        found = [p for p in (self.path / CHECKPOINTS).iterdir() if _CKPT.match(p.name)]
        return sorted(found, key=lambda p: int(_CKPT.match(p.name).group(1)))  # type: ignore[union-attr]

    def latest_checkpoint(self) -> Optional[tuple[dict, dict]]:
        """(tensors, meta) of the newest complete checkpoint, or None when there is none yet.

        A checkpoint is complete when its JSON parses, names everything a coordinator needs and
        its tensors load. Newer broken ones (a crash mid-write, a truncated file) are skipped
        and removed with the other strays; RunError naming each one when none is complete.
        """
        self.remove_strays()
        broken: list[str] = []
        for meta_path in reversed(self.checkpoints()):
            try:
                state = load_checkpoint(self.path / CHECKPOINTS, meta_path.stem)
                _validate_checkpoint(state, meta_path)
            except (RunError, ConfigError) as err:
                log.warning("skipping checkpoint: %s", err)
                broken.append(str(err))
                continue
            for path in self.checkpoints():
                if int(_CKPT.match(path.name).group(1)) > int(state[1]["version"]):  # type: ignore[union-attr]
                    path.unlink(missing_ok=True)
                    path.with_suffix(".safetensors").unlink(missing_ok=True)
            return state
        if broken:
            raise RunError("no complete checkpoint to resume from: " + "; ".join(broken))
        return None

    def remove_strays(self) -> list[Path]:
        """Delete what a killed run left half-written: temporary files of atomic writes and
        checkpoint tensors whose JSON never followed; returns what was removed."""
        folder = self.path / CHECKPOINTS
        complete = {p.stem for p in self.checkpoints()}
        strays = [p for p in (*self.path.iterdir(), *folder.iterdir()) if p.is_file() and (
            _TMP.match(p.name) or (p.parent == folder and _TENSORS.match(p.name)
                                   and p.stem not in complete))]
        for path in strays:
            log.info("removing stray %s", path)
            path.unlink(missing_ok=True)
        return strays

    def write_summary(self, summary: Any) -> None:
        """summary.json."""
        write_json(self.path / "summary.json", summary)


def _validate_checkpoint(state: tuple[dict, dict], meta_path: Path) -> None:
    """RunError naming the file when a loaded checkpoint cannot rebuild a coordinator."""
    tensors, meta = state
    if not isinstance(meta, dict):
        raise RunError(f"{meta_path}: expected a JSON object")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise RunError(f"{meta_path}: incomplete, missing {', '.join(missing)}")
    number = int(_CKPT.match(meta_path.name).group(1))  # type: ignore[union-attr]
    if meta["version"] != number:
        raise RunError(f"{meta_path}: version {meta['version']!r} does not match its name")
    prefixes = ["param/", "subset/", *(f"snap/{v}/" for v in meta["snapshots"])]
    absent = [p for p in prefixes if not any(k.startswith(p) for k in tensors)]
    if absent:
        raise RunError(f"{meta_path.with_suffix('.safetensors')}: no {', '.join(absent)} tensors")
