"""`ftte train` over the emulated testbed: real sshd per device, reverse tunnels, cgroup caps."""

from __future__ import annotations

import json
from pathlib import Path

from testbed_fixture import Testbed, testbed  # noqa: F401 - the session fixture
from trainkit import agent_pids, group_members, last_json, start_train, write_recipe


def test_train_over_testbed_reaches_target_under_every_cap(tmp_path: Path,
                                                           testbed: Testbed) -> None:  # noqa: F811
    recipe = write_recipe(tmp_path, target=0.75, time_limit=200.0)
    run_dir = tmp_path / "run"
    proc = start_train(tmp_path, "--recipe", str(recipe), "--inventory", str(testbed.inventory),
                       "--run-dir", str(run_dir), "--offline-after", "20")
    assert proc.wait(timeout=400) == 0, (tmp_path / "train.err").read_text()[-3000:]
    result = last_json(tmp_path)
    assert result["target_reached"], result
    rows = {d["name"]: d for d in result["devices"]}
    assert set(rows) == {d.name for d in testbed.state.devices}
    for dev in testbed.state.devices:
        row = rows[dev.name]
        assert row["accepted"] > 0, dev.name
        assert row["peak_memory"] is not None
        if dev.mem_cap_bytes is not None:  # measured on the device, under its cgroup cap
            assert row["peak_memory"] < dev.mem_cap_bytes, (dev.name, row["peak_memory"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["direct"] is None  # agents came through SSH reverse tunnels
    assert group_members(agent_pids(run_dir)) == []  # nothing of the run is left
