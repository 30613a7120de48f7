"""Multiple-choice 0/1 knapsack over units (one option per group at most): exact by dynamic
programming over cost, a greedy baseline, and the value of a choice. Pure: no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Item:
    """A knapsack option: a unit's cost in bytes and its value; one per group at most."""

    key: str
    group: str
    cost: int
    value: float


def knapsack_exact(items: Sequence[Item], capacity: int, max_states: int = 20000) -> List[str]:
    """Multiple-choice 0/1 knapsack by dynamic programming over cost.

    Costs are counted in quanta of ceil(capacity / max_states) bytes, rounded up, so the answer
    never exceeds `capacity`; it is exact whenever every cost is a multiple of the quantum.
    """
    if capacity <= 0:
        return []
    quantum = max(1, math.ceil(capacity / max_states))
    states = capacity // quantum
    groups: Dict[str, List[Item]] = {}
    for it in items:
        if it.value > 0 and it.cost <= capacity:
            groups.setdefault(it.group, []).append(it)
    best = np.zeros(states + 1)  # best[c]: best value with total cost <= c quanta
    choice: List[Tuple[List[Item], np.ndarray]] = []
    for options in groups.values():
        new, pick = best.copy(), np.full(states + 1, -1, dtype=np.int16)
        for j, it in enumerate(options):
            q = math.ceil(it.cost / quantum)
            if q > states:
                continue
            cand = np.full(states + 1, -np.inf)
            cand[q:] = best[: states + 1 - q] + it.value
            better = cand > new
            new[better], pick[better] = cand[better], j
        choice.append((options, pick))
        best = new
    chosen: List[str] = []
    c = states
    for options, pick in reversed(choice):
        j = int(pick[c])
        if j >= 0:
            chosen.append(options[j].key)
            c -= math.ceil(options[j].cost / quantum)
    return chosen[::-1]


def knapsack_greedy(items: Sequence[Item], capacity: int) -> List[str]:
    """Value-per-byte greedy; a later option of a taken group replaces it when that pays."""
    taken: Dict[str, Item] = {}
    used = 0
    for it in sorted(items, key=lambda i: i.value / max(1, i.cost), reverse=True):
        if it.value <= 0:
            continue
        old = taken.get(it.group)
        extra = it.cost - (old.cost if old else 0)
        if used + extra <= capacity and (old is None or it.value > old.value):
            taken[it.group], used = it, used + extra
    return [it.key for it in taken.values()]


def knapsack_value(items: Sequence[Item], keys: Sequence[str]) -> float:
    """Total value of the chosen keys."""
    by_key = {it.key: it for it in items}
    return sum(by_key[k].value for k in keys)
