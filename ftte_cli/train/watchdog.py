"""The progress watchdog of `ftte train`: a run whose model stops advancing ends with a reason.

Feed it the model version and the run's clock on every look (`observe`); it answers why the run
is stalled, or None. The expected time between versions is the median of the last intervals it
saw, so a slow fleet is not mistaken for a stuck one; before the first version only `minimum`
applies (devices import torch and register first).
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Deque, Optional

WINDOW = 20  # intervals between versions the median is taken over


class Watchdog:
    """Stalled when no version appears for max(minimum, factor x median interval) seconds."""

    def __init__(self, factor: Optional[float], minimum: float, version: int, now: float) -> None:
        self.factor = factor  # None: never stalled
        self.minimum = minimum
        self._version = version
        self._since = now  # when the current version appeared (or the watch began)
        self._intervals: Deque[float] = deque(maxlen=WINDOW)

    def limit(self) -> float:
        """Seconds without a new version that count as a stall now."""
        if self.factor is None:
            return float("inf")
        if not self._intervals:
            return self.minimum
        return max(self.minimum, self.factor * statistics.median(self._intervals))

    def observe(self, version: int, now: float) -> Optional[str]:
        """Why the run is stalled at `now`, or None while it progresses."""
        if version != self._version:
            if version > self._version:
                self._intervals.append((now - self._since) / (version - self._version))
            self._version, self._since = version, now
            return None
        waited, limit = now - self._since, self.limit()
        if waited <= limit:
            return None
        expected = (f"{self.factor:g} x the median {statistics.median(self._intervals):.1f}s "
                    "between versions" if self._intervals else "no version yet")
        return (f"no new model version for {waited:.0f}s at v{version} "
                f"(limit {limit:.0f}s: {expected}, stop.stall_min {self.minimum:g}s)")
