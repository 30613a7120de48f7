"""The testbed's device mix as data: round-robin parsing and its errors, and every class
leaving room for torch (no sshd, no namespaces)."""

from __future__ import annotations

import pytest

from ftte_cli.errors import ConfigError
from ftte_cli.testbed.devices import DEVICE_CLASSES, parse_mix


def test_parse_mix_round_robin_and_errors() -> None:
    classes = parse_mix("pi4,phone", 5)
    assert [c.name for c in classes] == ["pi4", "phone", "pi4", "phone", "pi4"]
    with pytest.raises(ConfigError, match="--mix: unknown device class 'pi5'"):
        parse_mix("pi4,pi5", 2)
    with pytest.raises(ConfigError, match="--devices"):
        parse_mix("pi4", 0)


def test_every_class_leaves_room_for_torch() -> None:
    """import torch alone is ~230 MiB resident on x86: every board's free memory holds it with
    ~100 MiB to spare; the Pi Zero 2 W (352 MiB free of 512 MB) is the tightest, as for real."""
    caps = {name: cls.mem_cap_mb for name, cls in DEVICE_CLASSES.items()}
    assert all(cap is None or cap >= 330 for cap in caps.values()), caps
    assert min((c, n) for n, c in caps.items() if c is not None) == (352, "pi-zero-2")
