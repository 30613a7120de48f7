"""What the simulator's job backends share: how many CPUs they may use, their `--workers`
check, the CPU-only check and the one-line form of a failed job's error."""

from __future__ import annotations

import os
from typing import Optional

from ftte_cli.engine.train import resolve_device
from ftte_cli.errors import ConfigError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a taskset or a container's)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def worker_count(workers: Optional[int]) -> int:
    """`--workers` as given (ConfigError below 1), else one per usable CPU."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    return workers or usable_cpus()


def on_accelerator(device: str) -> bool:
    """True when `train.device` means an accelerator (cuda, or auto on a machine with one)."""
    return device == "cuda" or (device == "auto" and resolve_device(device).type != "cpu")


def error_line(err: Exception) -> str:
    """A failed job's error as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
