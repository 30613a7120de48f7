"""A virtual clock: a heap of timed events popped in time order (ties in scheduling order)."""

from __future__ import annotations

import heapq
from typing import Generic, List, Optional, Tuple, TypeVar

E = TypeVar("E")


class VirtualClock(Generic[E]):
    """Holds future events; `pop` advances `now` to the next one. Time never goes backwards."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: List[Tuple[float, int, E]] = []
        self._seq = 0  # ties pop in the order they were scheduled: deterministic

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at: float, event: E) -> None:
        """Add `event` at virtual time `at` (clamped to now: nothing happens in the past)."""
        heapq.heappush(self._heap, (max(at, self.now), self._seq, event))
        self._seq += 1

    def peek_time(self) -> Optional[float]:
        """Time of the next event, None when there is none."""
        return self._heap[0][0] if self._heap else None

    def pop(self) -> Tuple[float, E]:
        """The next event; `now` becomes its time. IndexError when empty."""
        at, _, event = heapq.heappop(self._heap)
        self.now = at
        return at, event
