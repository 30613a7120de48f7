"""The stop rules of a fleet run, in one place: the server checks them as each version lands,
the driver (`train/run.py`) as it watches the run, both through `rule_met`.

Order: target accuracy, then max versions, then the time limit. Rules beyond these (every
device gone, the stall watchdog, Ctrl-C) are the driver's, since only it sees devices and time
from outside the coordinator.
"""

from __future__ import annotations

from typing import Optional

from ftte_cli.server.snapshot import StopReason


def rule_met(*, version: int, accuracy: Optional[float], elapsed: Optional[float] = None,
             target: Optional[float] = None, max_versions: Optional[int] = None,
             time_limit: Optional[float] = None) -> Optional[StopReason]:
    """The first rule the run meets now, or None. `accuracy`: the figure compared with the
    target (the server: the evaluation of the current version; the driver: the best so far);
    a rule whose threshold (or figure) is None never fires."""
    if target is not None and accuracy is not None and accuracy >= target:
        return StopReason.target
    if max_versions is not None and version >= max_versions:
        return StopReason.max_versions
    if time_limit is not None and elapsed is not None and elapsed >= time_limit:
        return StopReason.time_limit
    return None
