"""The run directory of `ftte train` (layout below; file I/O through ftte_cli/store.py).

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
import platform
import re
import threading
from pathlib import Path
from typing import Any, Optional

from ftte_cli.engine.coordinator import Coordinator
from ftte_cli.errors import RunError
from ftte_cli.store import JsonlWriter, load_checkpoint, read_json, save_checkpoint, write_json

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 3
_CKPT = re.compile(r"^v(\d{6,})\.json$")


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
        """(tensors, meta) of the newest checkpoint, or None when there is none yet."""
        ckpts = self.checkpoints()
        if not ckpts:
            return None
        return load_checkpoint(self.path / CHECKPOINTS, ckpts[-1].stem)

    def write_summary(self, summary: Any) -> None:
        """summary.json."""
        write_json(self.path / "summary.json", summary)
