"""benchmarks/choose_defaults.py's validation on held-out training subjects (issue 10)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from ftte_cli.engine.data.dataset import ClientData, Dataset, FederatedData

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import choose_defaults  # noqa: E402


def _shard(subject: int, n: int, first: int) -> Dataset:
    x = torch.arange(first, first + n, dtype=torch.float32).view(n, 1, 1)
    return Dataset(x, torch.zeros(n, dtype=torch.int64), torch.full((n,), subject))


def _world() -> SimpleNamespace:
    # six clients: subjects 10, 11, 12, 13, 14 and a second shard of subject 10
    subjects = [10, 11, 12, 13, 14, 10]
    clients = [ClientData(i, _shard(s, 4, 100 * i), _shard(s, 2, 100 * i + 50))
               for i, s in enumerate(subjects)]
    data = FederatedData(clients, _shard(99, 2, 800), _shard(98, 3, 900), 2, (1, 1), ["a", "b"])
    return SimpleNamespace(data=data, fleet=[f"device-{i}" for i in range(6)])


def test_every_third_subject_in_sorted_order_is_held_out() -> None:
    assert choose_defaults.held_out_subjects([14, 10, 12, 11, 13, 15, 16]) == [10, 13, 16]


def test_held_out_subjects_leave_the_federation_with_their_devices() -> None:
    world = _world()
    choose_defaults.validate_on(world, "subjects")  # type: ignore[arg-type]
    # subjects 10 and 13 are held out: clients 0, 3 and 5 leave, fleet entries with them
    assert [c.client_id for c in world.data.clients] == [1, 2, 4]
    assert world.fleet == ["device-1", "device-2", "device-4"]
    # validation: all their windows (4 train + 2 own test each), none of the real test split
    assert len(world.data.test) == 3 * 6
    starts = {int(v) // 100 for v in world.data.test.x.flatten().tolist()}
    assert starts == {0, 3, 5}


def test_windows_validation_keeps_every_client() -> None:
    world = _world()
    choose_defaults.validate_on(world, "windows")  # type: ignore[arg-type]
    assert len(world.data.clients) == 6 and len(world.data.test) == 6 * 2
