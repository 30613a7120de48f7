"""The device agent's set-up in process: loading its bundle and choosing its thread count from
the cgroup's CPU quota. The agent as a real process is in test_agent.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.loopback import tiny_run

from ftte_cli.client.agent import Bundle, default_threads, load_bundle


def test_load_bundle_and_threads(tmp_path: Path) -> None:
    _, plan, fed, bundles, _ = tiny_run(tmp_path, ["a", "b"])
    b: Bundle = load_bundle(bundles["b"])
    assert b.device == "b" and b.plan.masks == plan.masks
    assert b.train_x.shape == fed.clients[1].train.x.shape
    assert 1 <= default_threads() <= (len(__import__("os").sched_getaffinity(0)))


@pytest.mark.parametrize("quota", ["50000 100000", "max 100000"])
def test_cpu_quota_parsing(tmp_path: Path, quota: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftte_cli.client import agent

    (tmp_path / "cpu.max").write_text(quota + "\n")
    monkeypatch.setattr(agent, "_own_cgroups", lambda: [tmp_path])
    assert agent.cpu_quota() == (0.5 if quota.startswith("5") else None)
    assert agent.default_threads() >= 1
