"""Process-tree figures shared by the benchmarks that run work in child processes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple


def tree_pids(pid: int) -> List[int]:
    """`pid` and all its descendants (from /proc); empty once `pid` has exited."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
        found.append(p)
    return found


def _field(path: str, name: str) -> int:
    """A `Name:  N kB` field of a /proc file, in bytes (0 when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, summed: pages that forked children
    share with their parent count once per process."""
    return sum(_field(f"/proc/{p}/status", "VmRSS:") for p in tree_pids(pid))


def tree_memory(pid: int) -> Tuple[int, int]:
    """(RSS sum, PSS sum) of `pid`'s tree. PSS splits each shared page among the processes
    mapping it, so its sum is the tree's real footprint; it equals the RSS sum when nothing
    is shared (one process, or children that share no pages)."""
    pids = tree_pids(pid)
    return (sum(_field(f"/proc/{p}/status", "VmRSS:") for p in pids),
            sum(_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
