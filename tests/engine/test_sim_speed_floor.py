"""benchmarks/sim_speed.py's floor: the least wall time the loop's arithmetic allows on N cores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import sim_speed  # noqa: E402


def _side(wall: float, mib: float = 500.0) -> Dict[str, Any]:
    return {"wall_s": wall, "cpu_s": wall, "peak_mib": mib, "peak_pss_mib": mib,
            "final_accuracy": 0.5}


def _doc(loop_wall: float, rounds_cpu: float, flower_wall: float, best: float) -> Dict[str, Any]:
    loop = {**_side(loop_wall), "import_torch_s": 1.0, "setup_s": 1.5,
            "rounds_cpu_s": rounds_cpu}
    sides = {"loop": loop, "flower": _side(flower_wall, 4000.0),
             **{name: _side(best) for name in sim_speed.SIDES[1:]}}
    return {"cpus": 2, "sizes": [{"clients": 20, "rounds": 3, "sides": sides}]}


def test_floor_is_import_plus_round_cpu_over_the_cores() -> None:
    loop = _doc(12.0, 10.0, 22.0, 9.0)["sizes"][0]["sides"]["loop"]
    assert sim_speed.floor_s(loop, 2) == 1.0 + 10.0 / 2
    assert sim_speed.floor_s(loop, 4) == 1.0 + 10.0 / 4
    assert sim_speed.floor_s({"wall_s": 1.0}, 2) is None  # a loop child without the split


def test_goals_under_the_floor_are_named_out_of_reach() -> None:
    lines = sim_speed.goal_lines(_doc(12.0, 10.0, 22.0, 9.0))
    floor = lines[-1]
    assert "= 6.0 s = 0.50x the loop" in floor and "0.27x Flower" in floor
    assert "out of reach here: <= 0.25x Flower" in floor
    assert "<= 0.5x the loop" not in floor  # 0.50 is not under the 0.5 goal


def test_a_reachable_floor_names_nothing() -> None:
    floor = sim_speed.goal_lines(_doc(30.0, 10.0, 100.0, 9.0))[-1]
    assert floor.startswith("  floor on 2 cores") and "out of reach" not in floor
