"""Device classes of the emulated testbed: what each mimics and the caps that stand in for it.

The caps are scaled for a one-machine testbed, not copied from datasheets: every device must still
hold one Python process with torch imported (about 230 MiB resident on x86-64 with torch 2.x) plus
a small model, so the smallest cap is well above that and the differences between classes keep
the real ordering (Pi Zero 2 < phone < Jetson Nano < Pi 4 in usable memory; Pi Zero 2 the slowest).

| class       | mimics                          | memory cap | CPU quota  | link       |
|-------------|---------------------------------|------------|------------|------------|
| pi-zero-2   | Raspberry Pi Zero 2 W (512 MB)  | 448 MiB    | 25% of 1   | 20 Mbit/s  |
| phone       | an Android phone under Termux   | 768 MiB    | 50% of 1   | 30 Mbit/s  |
| jetson-nano | NVIDIA Jetson Nano (4 GB shared)| 1024 MiB   | 100% of 1  | 100 Mbit/s |
| pi4         | Raspberry Pi 4 Model B (2 GB)   | 1536 MiB   | 100% of 1  | 100 Mbit/s |
| laptop      | an uncapped x86 host            | none       | none       | none       |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ftte_cli.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class DeviceClass:
    """One kind of emulated device and the caps applied to its sshd (and all it starts)."""

    name: str  # the class label written as ftte_device_class
    mimics: str  # the real device it stands for
    mem_cap_mb: Optional[int]  # cgroup memory limit in MiB; None: uncapped
    cpu_percent: Optional[int]  # CFS quota as a percentage of one CPU; None: uncapped
    bandwidth_mbit: Optional[float]  # tc tbf rate each way; None: uncapped

    @property
    def mem_cap_bytes(self) -> Optional[int]:
        """The memory cap in bytes, or None."""
        return None if self.mem_cap_mb is None else self.mem_cap_mb * MIB


DEVICE_CLASSES: dict[str, DeviceClass] = {
    c.name: c
    for c in (
        DeviceClass("pi-zero-2", "Raspberry Pi Zero 2 W (512 MB)", 448, 25, 20.0),
        DeviceClass("phone", "Android phone under Termux", 768, 50, 30.0),
        DeviceClass("jetson-nano", "NVIDIA Jetson Nano (4 GB shared with the GPU)", 1024, 100,
                    100.0),
        DeviceClass("pi4", "Raspberry Pi 4 Model B (2 GB)", 1536, 100, 100.0),
        DeviceClass("laptop", "an uncapped x86-64 host", None, None, None),
    )
}

DEFAULT_MIX = ("pi-zero-2", "pi4", "jetson-nano", "phone")


def parse_mix(mix: str, devices: int) -> list[DeviceClass]:
    """The class of each of `devices` devices: the comma-separated `mix`, repeated round-robin."""
    if devices < 1:
        raise ConfigError(f"--devices: must be >= 1, got {devices}")
    names = [n.strip() for n in mix.split(",") if n.strip()]
    if not names:
        raise ConfigError("--mix: empty (try pi-zero-2,pi4,jetson-nano,phone)")
    for name in names:
        if name not in DEVICE_CLASSES:
            raise ConfigError(
                f"--mix: unknown device class {name!r} (known: {', '.join(DEVICE_CLASSES)})")
    return [DEVICE_CLASSES[names[i % len(names)]] for i in range(devices)]
