"""The stop rules of `ftte train` (train/run.py's stop_rule) on hand-made snapshots: target
accuracy, max versions, time limit, no devices left, and a reason already set wins.
"""

from __future__ import annotations


def test_stop_rules() -> None:
    from ftte_cli.config.recipe import Recipe, StopConfig
    from ftte_cli.server.snapshot import (
        AccuracyPoint,
        DeviceRow,
        DeviceStatus,
        RunSnapshot,
        RunState,
        StopReason,
    )
    from ftte_cli.train.run import stop_rule

    recipe = Recipe(stop=StopConfig(target_accuracy=0.8, max_versions=10, time_limit=60))

    def snap(**kw: object) -> RunSnapshot:
        base: dict = dict(run_id="r", strategy="ftte", state=RunState.running, elapsed=1.0,
                          version=1, buffer_fill=0, buffer_size=2, updates_per_min=0.0,
                          staleness_mean=None, staleness_max=None, accepted=0,
                          devices=(DeviceRow("a", DeviceStatus.idle),))
        return RunSnapshot(**{**base, **kw})

    assert stop_rule(snap(), recipe) is None
    assert stop_rule(snap(accuracy=(AccuracyPoint(1, 1, 0.81),)), recipe) == StopReason.target
    assert stop_rule(snap(version=10), recipe) == StopReason.max_versions
    assert stop_rule(snap(elapsed=61.0), recipe) == StopReason.time_limit
    failed = (DeviceRow("a", DeviceStatus.failed),)
    assert stop_rule(snap(devices=failed), recipe) == StopReason.no_devices
    assert stop_rule(snap(stop_reason=StopReason.target), recipe) == StopReason.target
