"""The live dashboard as a pure renderable: fixed-width colourless rendering, plain lines."""

from __future__ import annotations

import io

from rich.console import Console

from ftte_cli.server.snapshot import (
    AccuracyPoint,
    DeviceRow,
    DeviceStatus,
    EventLine,
    RunSnapshot,
    RunState,
    StopReason,
)
from ftte_cli.ui.dashboard import Dashboard, progress_line, render, sparkline

MIB = 2**20


def _snapshot(**over: object) -> RunSnapshot:
    base = dict(
        run_id="har-1", strategy="ftte", state=RunState.running, elapsed=42.0, version=7,
        buffer_fill=3, buffer_size=10, updates_per_min=12.5, staleness_mean=1.25,
        staleness_max=4, accepted=25, dropped={"non_finite": 1, "too_stale": 2},
        accuracy=(AccuracyPoint(10.0, 2, 0.5), AccuracyPoint(30.0, 6, 0.75)),
        target_accuracy=0.9,
        devices=(
            DeviceRow("pi0", DeviceStatus.training, version=6, staleness=1, last_seen=0.4,
                      peak_memory=300 * MIB, memory_budget=448 * MIB, bytes_up=2048,
                      bytes_down=4096, accepted=10, rejected=1),
            DeviceRow("jetson", DeviceStatus.offline, last_seen=31.0),
        ),
        events=(EventLine(40.5, "device_offline", "jetson", "not seen for 10s"),),
    )
    base.update(over)
    return RunSnapshot(**base)  # type: ignore[arg-type]


def _text(snapshot: RunSnapshot) -> str:
    console = Console(width=100, color_system=None, force_terminal=False, record=True,
                      file=io.StringIO())
    console.print(render(snapshot))
    return console.export_text()


def test_render_shows_every_panel() -> None:
    text = _text(_snapshot())
    assert ("│ pi0    │ training │ 6   │ 1     │ 0s   │ 300/448 MiB 67% │ 2.00 KiB │ 4.00 KiB │ 10 "
            "│ 1   │") in text
    assert "│ jetson │ offline  │ -   │ -     │ 31s  │ -               │ 0 B      │ 0 B      │ 0 " \
        in text
    assert "version 7   buffer 3/10   accepted 25   updates/min 12.5" in text
    assert "staleness mean 1.25 max 4   dropped non_finite 1, too_stale 2" in text
    # issue 13: loss beside the accuracy, and the target as given (was "target 0.900")
    assert "acc 0.750  loss -  (v6)   best 0.750   target 0.9" in text
    assert "40.5s device_offline   jetson       not seen for 10s" in text


def test_render_before_anything_happened() -> None:
    text = _text(_snapshot(accuracy=(), events=(), dropped={}, staleness_mean=None,
                           staleness_max=None, stop_reason=StopReason.target))
    assert "no evaluation yet" in text and "no events yet" in text
    assert "dropped none" in text and "stopped: target_accuracy" in text


def test_sparkline_scales_and_clips() -> None:
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([2.0, -1.0]) == "█▁"
    assert len(sparkline([0.1] * 100, width=40)) == 40


def test_plain_mode_prints_a_line_per_change() -> None:
    out = io.StringIO()
    snaps = [_snapshot(), _snapshot(accepted=26), _snapshot(version=8)]
    clock = iter([0.0, 1.0, 2.0, 3.0])
    with Dashboard(lambda: snaps[0], live=False, stream=out, line_every=60,
                   get_time=lambda: next(clock)) as dash:
        dash.tick()
        snaps.pop(0)
        dash.tick()  # one more accepted update, same version: no line
        snaps.pop(0)
        dash.tick()  # new version: a line
    lines = out.getvalue().splitlines()
    assert lines[0] == progress_line(_snapshot())
    assert lines[0] == ("[  42.0s] running v7 acc 0.750 accepted 25 dropped 3 devices 1/2 online")
    assert lines[1].startswith("[  42.0s] running v8") and len(lines) == 3  # + the final line


# ---- issue 13, fault 8: a dashboard that never goes blank ---------------------------------------

def _screen(snapshot: RunSnapshot, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, color_system=None, force_terminal=False,
                      record=True, file=io.StringIO())
    console.print(render(snapshot, width, height))
    return console.export_text().splitlines()


def test_at_80x24_every_cell_and_panel_is_readable() -> None:
    from ftte_cli.server.snapshot import EventLine as E

    events = tuple(E(float(i), "update_accepted", "pi0", f"job j{i}") for i in range(30))
    snap = _snapshot(devices=_snapshot().devices * 2, events=events, target_accuracy=0.9999)
    lines = _screen(snap, 80, 24)
    text = "\n".join(lines)
    assert len(lines) <= 24 and max(len(x) for x in lines) <= 80
    assert "training" in text and "offline" in text and "trai…" not in text
    header = next(x for x in lines if "device" in x and "status" in x)
    assert "ok" in header and "rej" in header  # the counts keep their columns
    assert "│pi0    │ training │ 6   │ 1     │ 300/448 MiB 67% │ 10 │ 1  │" in text
    assert "target 0.9999" in text and "loss" in text
    assert "Events" in text and "update_accepted" in text


def test_notable_events_stay_in_view_among_routine_ones() -> None:
    from ftte_cli.server.snapshot import EventLine as E

    events = (E(1.0, "device_offline", "jetson", "not seen for 10s"),
              E(2.0, "update_rejected", "pi0", "norm_bound job j3"),
              *(E(3.0 + i, "update_accepted", "pi0", f"job j{i}") for i in range(50)))
    text = "\n".join(_screen(_snapshot(events=events), 100, 50))
    assert "device_offline" in text and "norm_bound job j3" in text
    assert "job j49" in text and "job j10 " not in text  # the newest routine ones fill the rest


def test_accuracy_shows_an_axis_the_loss_and_the_version_range() -> None:
    acc = (AccuracyPoint(1.0, 2, 0.5, 1.25), AccuracyPoint(2.0, 4, 0.8, 0.5))
    text = "\n".join(_screen(_snapshot(accuracy=acc, target_accuracy=0.9999), 100, 50))
    assert "0 ▅▇ 1   v2..v4" in text
    assert "acc 0.800  loss 0.5  (v4)   best 0.800   target 0.9999" in text


def test_phases_show_each_step_before_training_with_its_time() -> None:
    from ftte_cli.ui.dashboard import Phases

    out = io.StringIO()
    clock = iter([0.0, 1.5, 26.0])
    phases = Phases(Console(file=out, width=100, color_system=None), live=False,
                    get_time=lambda: next(clock))
    phases.update("profiles -> memory budget -> plan search")
    phases.update("deploy pi4: changed bundle abc installed")
    phases.close()
    assert out.getvalue().splitlines() == [
        "[  1.5s] profiles -> memory budget -> plan search",
        "[ 26.0s] deploy pi4: changed bundle abc installed"]
