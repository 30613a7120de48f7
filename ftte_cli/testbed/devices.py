"""Device classes of the emulated testbed: what each mimics and the caps that stand in for it.

Memory is each board's RAM less what its OS keeps, i.e. what a training process could have
(`MemAvailable` after boot, headless, ssh running):

| class       | mimics (RAM)                               | OS leaves | CPU quota | link       |
|-------------|--------------------------------------------|-----------|-----------|------------|
| pi-zero-2   | Raspberry Pi Zero 2 W (512 MB)             | 352 MiB   | 25% of 1  | 20 Mbit/s  |
| phone       | Android phone under Termux (3 GB)          | 768 MiB   | 50% of 1  | 30 Mbit/s  |
| jetson-nano | NVIDIA Jetson Nano (4 GB shared with GPU)  | 2560 MiB  | 100% of 1 | 100 Mbit/s |
| pi4         | Raspberry Pi 4 Model B (2 GB; 1-8 GB sold) | 1792 MiB  | 100% of 1 | 100 Mbit/s |
| laptop      | an uncapped x86 host                       | none      | none      | none       |

- Pi Zero 2 W: 512 MB, of which the GPU keeps 64 MB by default (gpu_mem) and the kernel's CMA and
  reserved memory more: MemTotal is ~420 MiB under Raspberry Pi OS Lite (64-bit), and ~70 MiB of
  that is in use after boot (systemd, journald, sshd, the network), so ~350 MiB is available.
- Raspberry Pi 4 (2 GB model): MemTotal ~1.85 GiB (gpu_mem 76 MB), ~1.75 GiB available under
  Pi OS Lite. The 1 GB model leaves ~0.8 GiB, the 4 and 8 GB models ~3.6 and ~7.5 GiB.
- Jetson Nano (4 GB): CPU and GPU share one LPDDR4; MemTotal ~3.9 GiB, the L4T desktop and
  services hold ~1 GiB and a CUDA context ~0.3-0.4 GiB, so ~2.5 GiB is left to train.
- Android phone (3 GB): the low-memory killer ends a background Termux process well before the
  RAM is full; ~768 MiB is what such a process can count on.

The x86 `import torch` alone is ~220-260 MiB resident (torch 2.x CPU), much more than on the
boards' aarch64 builds, so the emulated Pi Zero 2 is the tighter of the two.

How a cap is enforced: each device's processes run in a memory cgroup, and the kernel kills one
when the cgroup's charge exceeds the limit. The charge leaves out page-cache pages another cgroup
loaded first, and torch's shared libraries (~75 MiB resident, `RssFile`) are already in memory
for the host's own torch. A real board pays for those pages, so the cgroup limit is the board's
free memory less their size (`TORCH_SHARED_BYTES`): an agent is then killed where it would run
out on the board. The inventory's `ftte_mem_cap_mb` is the free memory. The size is a constant,
not measured at `up`: a live `RssFile` reading of `import torch` was 74-76 MiB in a long-lived
venv but 131 MiB in one just installed from the same wheel (same files, even after dropping the
page cache), and the demo's Pi Zero budget swung from 32 MiB to below zero with it. The
probe's runtime overhead stays measured: code pages a device faults in first are charged to it.
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
    mem_cap_mb: Optional[int]  # the board's free memory in MiB (see above); None: uncapped
    cpu_percent: Optional[int]  # CFS quota as a percentage of one CPU; None: uncapped
    bandwidth_mbit: Optional[float]  # tc tbf rate each way; None: uncapped

    @property
    def mem_cap_bytes(self) -> Optional[int]:
        """The memory cap in bytes, or None."""
        return None if self.mem_cap_mb is None else self.mem_cap_mb * MIB


DEVICE_CLASSES: dict[str, DeviceClass] = {
    c.name: c
    for c in (
        DeviceClass("pi-zero-2", "Raspberry Pi Zero 2 W (512 MB)", 352, 25, 20.0),
        DeviceClass("phone", "Android phone under Termux (3 GB)", 768, 50, 30.0),
        DeviceClass("jetson-nano", "NVIDIA Jetson Nano (4 GB shared with the GPU)", 2560, 100,
                    100.0),
        DeviceClass("pi4", "Raspberry Pi 4 Model B (2 GB)", 1792, 100, 100.0),
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


# torch 2.13's shared library pages resident after `import torch` on x86-64 (RssFile, measured
# in a long-lived venv); see the module docstring for why this is not measured at `up`
TORCH_SHARED_BYTES = 76 * 2**20
