"""Helpers for the `ftte train` tests: a small recipe, a local-device inventory, process checks.

The devices are `connection: local` (the SSH-free path of the same deploy and launch code): the
bundles are really shipped into per-device workdirs and the agents really run as processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
FTTE = [sys.executable, "-m", "ftte_cli"]


def write_recipe(folder: Path, *, strategy: str = "ftte", target: float = 0.75,
                 max_versions: int = 200, time_limit: float = 150.0,
                 extra: str = "") -> Path:
    """A synthetic-HAR recipe small enough for a few devices on 2 busy cores."""
    path = folder / "recipe.yaml"
    path.write_text(f"""
name: e2e
seed: 1
data: {{dataset: synthetic_har, windows: 1200, subjects: 6, partition: iid}}
model: {{name: har_cnn, width: 0.5}}
train: {{epochs: 1, batch_size: 32, lr: 0.05}}
strategy: {{name: {strategy}, buffer_size: 2, max_concurrency: 3}}
plan: {{memory_budget: 40MB, method: gradnorm}}
stop: {{target_accuracy: {target}, max_versions: {max_versions}, time_limit: {time_limit},
       eval_every: 1}}
{extra}
""")
    return path


def write_inventory(folder: Path, names: list[str]) -> Path:
    """Local devices running this interpreter, each with its own workdir."""
    hosts = "\n".join(f"    {n}: {{ftte_workdir: {folder / 'work' / n}}}" for n in names)
    path = folder / "inventory.yaml"
    path.write_text(f"""all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {sys.executable}
  hosts:
{hosts}
""")
    return path


def write_class_inventory(folder: Path, train_vars: str) -> Path:
    """Two local groups: `zeros` (pi-zero-2, its `ftte_train` set to `train_vars`) and `pis`."""
    path = folder / "inventory.yaml"
    path.write_text(f"""all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {sys.executable}
  children:
    zeros:
      vars:
        ftte_device_class: pi-zero-2
        ftte_train: {train_vars}
      hosts:
        zero-1: {{ftte_workdir: {folder / 'w' / 'zero-1'}}}
    pis:
      hosts:
        pi4-1: {{ftte_workdir: {folder / 'w' / 'pi4-1'}}}
""")
    return path


def env() -> dict[str, str]:
    """Environment for `ftte train` subprocesses: one torch thread per agent."""
    return {**os.environ, "FTTE_AGENT_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_train(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """`ftte train ... --format json` as a subprocess in `folder` (bundles under folder/.ftte)."""
    out = open(folder / "train.out", "ab")  # noqa: SIM115 - closed with the process
    err = open(folder / "train.err", "ab")  # noqa: SIM115
    return subprocess.Popen([*FTTE, "train", *args, "--format", "json"], cwd=folder, env=env(),
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def last_json(folder: Path) -> dict[str, Any]:
    """The JSON document `ftte train --format json` printed last."""
    text = (folder / "train.out").read_text()
    start = text.rfind("\n{\n") + 1 if "\n{\n" in text else text.find("{")
    return json.loads(text[start:])


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll until `cond()` is truthy; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def group_members(pgids: set[int]) -> list[int]:
    """Live (non-zombie) processes whose process group is one of `pgids`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(int(entry))
    return found


def agent_pids(run_dir: Path) -> set[int]:
    """Agent pids (= their process groups) the run recorded in its manifest."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {int(p) for p in manifest.get("agent_pids", {}).values() if p}


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal a subprocess started with start_new_session (and everything in its group)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def events(run_dir: Path, kind: Optional[str] = None) -> list[dict[str, Any]]:
    """events.jsonl records (of one kind)."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in out if kind is None or e["kind"] == kind]


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
