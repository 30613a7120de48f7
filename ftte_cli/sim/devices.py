"""Simulated devices (FTTE.md section 6): compute speed, bandwidth, latency, memory, stragglers.

A fleet comes from the recipe's `sim` section (`make_fleet`) or replays measured profiles
(`load_profiles`, the `--fleet profiles.json` of `ftte simulate`).

Default fleet: realistic device classes (`DEVICE_CLASSES`, mixed by `DEFAULT_MIX` or the recipe's
`sim.devices`). Each class states its RAM and what its usual OS leaves free (MemAvailable, idle,
headless unless said); a client's usable training memory is that minus the torch runtime, a
training step's runtime overhead and the recipe's safety margin (`engine/runtime_cost.py`), so
the tightest class (a Pi Zero 2 W) bounds the FTTE budget as it would on a real fleet. Classes are
apportioned by largest remainder (every class with share >= 1/N is present), then shuffled by the
seed; speed, bandwidth and latency are drawn per client from the class's ranges. A recipe that
gives `sim.memory_mb`, `device_gflops`, `bandwidth_mbps` or `latency_ms` draws that figure from
U(lo, hi) for every client instead (the older uniform fleet).

Accepted profiles file: a JSON list of objects, or an object with that list under "devices" (or
"profiles"); each object has

    name                  str, optional
    usable_memory_bytes   int  (or mem_available_bytes): memory a job may use
    sec_per_sample_fwd    float: forward pass of the full model, seconds per sample
    sec_per_sample_bwd    float: backward pass of the full model (all layers trained), s/sample
    bandwidth_bps         float: bits per second (both directions)
    rtt_s                 float: round-trip time, charged once per job as its latency

Profiles are cycled to reach the requested number of clients (client i gets profile i mod P).
Stragglers are applied on top in both cases: a fraction p of clients, fixed at start by the seed,
has its compute slowed by a factor drawn from U(lo, hi) (communication is not slowed).

Job time = latency + bytes_down / bandwidth + compute + bytes_up / bandwidth, where compute is
samples x epochs x (forward of every layer + backward of the layers from the earliest trained one,
with weight gradients only for the trained fraction), see `engine/flops.training_flops`. A plan
that runs each step in micro-batches (passes of fewer samples than the batch) is charged its
measured slowdown per sample (`pass_slowdown`, `PASS_SLOWDOWN`); a plan without is charged x1.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ftte_cli.client.power import DEFAULT_WATTS_PER_CPU, watts_per_cpu
from ftte_cli.config.recipe import SimConfig
from ftte_cli.engine.flops import forward_flops, training_flops
from ftte_cli.engine.plan import MaskKind, Plan, module_of
from ftte_cli.engine.runtime_cost import usable_training_memory
from ftte_cli.errors import ConfigError

MiB = 2**20


@dataclass(frozen=True)
class DeviceClass:
    """A kind of client device, with typical figures (replay `ftte profile` output for real ones).

    free_mb is MemAvailable under the class's usual OS at idle, before the client starts; torch,
    a step's overhead and the safety margin are subtracted from it (`usable_bytes`).
    """

    name: str
    ram_mb: int  # physical RAM
    free_mb: int  # what the OS leaves free (MemAvailable), swap not counted
    os_note: str  # where the rest goes
    gflops: Tuple[float, float]  # effective fp32 training speed (torch, CPU), U(lo, hi)
    bandwidth_mbps: Tuple[float, float]  # U(lo, hi) megabit/s
    latency_ms: Tuple[float, float]  # U(lo, hi)

    def usable_bytes(self, margin_bytes: int) -> int:
        """M_i: free memory less the torch runtime, a step's overhead and the margin."""
        return usable_training_memory(self.free_mb * MiB, margin_bytes)


DEVICE_CLASSES: Dict[str, DeviceClass] = {c.name: c for c in (
    DeviceClass("pi-zero-2w", 512, 330, "Raspberry Pi OS Lite 64-bit: kernel, 64 MB GPU/CMA "
                "reserve and services take ~180 MB", (0.5, 1.5), (5.0, 20.0), (5.0, 30.0)),
    DeviceClass("pi-3b", 1024, 780, "Pi OS Lite: kernel, 76 MB GPU reserve, services",
                (1.0, 2.5), (10.0, 30.0), (5.0, 30.0)),
    DeviceClass("pi-4-2gb", 2048, 1750, "Pi OS Lite 64-bit", (3.0, 6.0), (20.0, 90.0),
                (2.0, 20.0)),
    DeviceClass("pi-4-4gb", 4096, 3650, "Pi OS Lite 64-bit", (3.0, 6.0), (20.0, 90.0),
                (2.0, 20.0)),
    DeviceClass("jetson-nano-4gb", 4096, 2600, "L4T Ubuntu with desktop; CPU and GPU share the "
                "4 GB (a CUDA context would take ~400 MB more)", (2.0, 5.0), (50.0, 100.0),
                (2.0, 10.0)),
    DeviceClass("phone-2gb", 2048, 450, "low-end Android: system and background apps leave a "
                "foreground Termux process ~450 MB before the low-memory killer", (2.0, 6.0),
                (5.0, 50.0), (30.0, 100.0)),
    DeviceClass("phone-4gb", 4096, 1300, "mid-range Android, same reasoning", (4.0, 10.0),
                (5.0, 50.0), (30.0, 100.0)),
)}

# the default mix of `ftte simulate`: a hobby/lab fleet with some phones
DEFAULT_MIX: Dict[str, float] = {"pi-zero-2w": 0.2, "pi-3b": 0.15, "pi-4-2gb": 0.15,
                                 "pi-4-4gb": 0.1, "jetson-nano-4gb": 0.1, "phone-2gb": 0.15,
                                 "phone-4gb": 0.15}


@dataclass(frozen=True)
class DeviceModel:
    """One simulated client device."""

    name: str
    memory_bytes: int  # usable training memory M_i
    bandwidth_bps: float  # bits per second, both directions
    latency_s: float  # charged once per job
    flops_per_s: Optional[float] = None  # effective speed (distribution fleets)
    sec_per_sample_fwd: Optional[float] = None  # measured full forward (profile fleets)
    sec_per_sample_bwd: Optional[float] = None  # measured full backward (profile fleets)
    slowdown: float = 1.0  # straggler factor on compute; 1.0 for a normal client
    device_class: Optional[str] = None  # DEVICE_CLASSES name (class fleets)
    watts_per_cpu: float = DEFAULT_WATTS_PER_CPU  # energy charged per compute second

    @property
    def straggler(self) -> bool:
        """Whether this client was made a straggler."""
        return self.slowdown > 1.0


# Seconds per sample of a training step run in passes of n samples, relative to one pass of 32:
# benchmarks/microbatch_cost.py (har_cnn width 3, batch 32, 1 torch thread, whole model trained;
# two runs, 1.08/1.09, 1.35/1.40, 1.86/1.97, 3.13/3.15, 2.38/2.36). Small passes leave too
# little work per kernel call; a pass of 1 sample takes a cheaper path than 2 in torch's
# conv1d, so it is measured faster. Sizes of 32 and more count as 1.0 (no gain is charged).
PASS_SLOWDOWN: Dict[int, float] = {32: 1.0, 16: 1.08, 8: 1.38, 4: 1.9, 2: 3.1, 1: 2.4}


def _relative_sample_time(n: int) -> float:
    """PASS_SLOWDOWN at n samples per pass, linear in log2(n) between the measured sizes."""
    sizes = sorted(PASS_SLOWDOWN)
    if n >= sizes[-1]:
        return PASS_SLOWDOWN[sizes[-1]]
    if n in PASS_SLOWDOWN:
        return PASS_SLOWDOWN[n]
    hi = next(s for s in sizes if s > n)
    lo = max(s for s in sizes if s < n)
    t = (math.log2(n) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    return PASS_SLOWDOWN[lo] + t * (PASS_SLOWDOWN[hi] - PASS_SLOWDOWN[lo])


def pass_slowdown(pass_size: int, batch_size: int) -> float:
    """Factor on a step's compute time when a batch of `batch_size` runs in passes of
    `pass_size` samples, against one pass over the whole batch (1.0 when that is what runs)."""
    if pass_size >= batch_size:
        return 1.0
    return _relative_sample_time(max(1, pass_size)) / _relative_sample_time(batch_size)


@dataclass(frozen=True)
class ComputeCost:
    """Per-sample cost of a job under one plan, from the model's layer FLOPs."""

    forward_flops: int  # one sample's forward
    train_flops: int  # forward + partial backward under the plan
    full_train_flops: int  # forward + full backward (dense plan)
    pass_slowdown: float = 1.0  # the plan's micro-batching: time per sample against whole batches

    @property
    def backward_share(self) -> float:
        """This plan's backward FLOPs as a fraction of the dense backward."""
        full_bwd = self.full_train_flops - self.forward_flops
        return (self.train_flops - self.forward_flops) / full_bwd if full_bwd > 0 else 0.0


def trained_fractions(plan: Plan) -> Dict[str, float]:
    """layer -> fraction of its weight trained (a bias-only layer counts as barely trained)."""
    out: Dict[str, float] = {}
    for name, mask in plan.masks.items():
        if not mask.trainable:
            continue
        layer = module_of(name)
        frac = 1.0
        if mask.kind == MaskKind.channels:
            frac = len(mask.channels) / plan.shapes[name][1]
        elif not name.endswith("weight") or len(plan.shapes[name]) < 2:
            frac = 1e-6  # bias / norm affine: negligible FLOPs, but backward must reach it
        out[layer] = max(out.get(layer, 0.0), frac)
    return out


def compute_cost(layer_flops: Dict[str, int], plan: Plan,
                 batch_size: Optional[int] = None) -> ComputeCost:
    """Per-sample FLOPs of a job under `plan` (layer_flops from engine/flops.layer_flops); with
    `batch_size`, the plan's micro-batch is charged its `pass_slowdown`."""
    dense = {name: 1.0 for name in layer_flops}
    slow = 1.0 if batch_size is None else pass_slowdown(plan.pass_size(batch_size), batch_size)
    return ComputeCost(forward_flops(layer_flops),
                       training_flops(layer_flops, trained_fractions(plan)),
                       training_flops(layer_flops, dense), slow)


def compute_seconds(device: DeviceModel, cost: ComputeCost, samples: int) -> float:
    """Seconds of local training over `samples` sample passes (epochs x n_i), with slowdown."""
    if device.flops_per_s is not None:
        per_sample = cost.train_flops / device.flops_per_s
    else:
        fwd = device.sec_per_sample_fwd or 0.0
        per_sample = fwd + (device.sec_per_sample_bwd or 0.0) * cost.backward_share
    # x 1.0 is exact: a plan without micro-batching keeps bit-identical times
    return per_sample * cost.pass_slowdown * samples * device.slowdown


def job_seconds(device: DeviceModel, cost: ComputeCost, samples: int, bytes_down: int,
                bytes_up: int) -> float:
    """latency + bytes_down / bandwidth + compute + bytes_up / bandwidth."""
    transfer = 8.0 * (bytes_down + bytes_up) / device.bandwidth_bps
    return device.latency_s + transfer + compute_seconds(device, cost, samples)


def _uniform(rng: random.Random, pair: Sequence[float]) -> float:
    return rng.uniform(float(pair[0]), float(pair[1]))


def apportion(mix: Mapping[str, float], clients: int) -> List[str]:
    """Class names for `clients` devices in `mix` proportions (largest remainder, mix order on
    ties), unshuffled: every class whose share is at least 1/clients gets a device."""
    total = sum(mix.values())
    quotas = [(name, share / total * clients) for name, share in mix.items()]
    counts = {name: int(q) for name, q in quotas}
    rest = sorted(quotas, key=lambda nq: -(nq[1] - int(nq[1])))  # stable: mix order on ties
    for name, _ in rest[:clients - sum(counts.values())]:
        counts[name] += 1
    return [name for name, _ in quotas for _ in range(counts[name])]


def _class_mix(cfg: SimConfig) -> Dict[str, float]:
    mix = dict(cfg.devices) if cfg.devices is not None else dict(DEFAULT_MIX)
    for name in mix:
        if name not in DEVICE_CLASSES:
            raise ConfigError(f"sim.devices: unknown device class {name!r} "
                              f"(known: {', '.join(DEVICE_CLASSES)})")
    return mix


def make_fleet(cfg: SimConfig, clients: int, seed: int, margin_bytes: int = 0
               ) -> List[DeviceModel]:
    """`clients` devices from the recipe's device classes (before stragglers); a range the
    recipe gives (memory_mb, device_gflops, bandwidth_mbps, latency_ms) replaces the classes'
    figure by U(lo, hi). `margin_bytes` is the recipe's safety margin."""
    rng = random.Random(f"fleet:{seed}")
    names = apportion(_class_mix(cfg), clients)
    rng.shuffle(names)
    fleet = []
    for i, name in enumerate(names):
        cls = DEVICE_CLASSES[name]
        memory = (cls.usable_bytes(margin_bytes) if cfg.memory_mb is None
                  else int(_uniform(rng, cfg.memory_mb) * MiB))
        fleet.append(DeviceModel(
            name=f"sim-{i:04d}",
            memory_bytes=memory,
            bandwidth_bps=_uniform(rng, cfg.bandwidth_mbps or cls.bandwidth_mbps) * 1e6,
            latency_s=_uniform(rng, cfg.latency_ms or cls.latency_ms) / 1000.0,
            flops_per_s=_uniform(rng, cfg.device_gflops or cls.gflops) * 1e9,
            device_class=name, watts_per_cpu=watts_per_cpu(name),
        ))
    return fleet


def with_stragglers(fleet: List[DeviceModel], fraction: float, slowdown: Sequence[float],
                    seed: int) -> List[DeviceModel]:
    """The same fleet with round(fraction x N) clients, chosen by the seed, slowed U(lo, hi)."""
    rng = random.Random(f"stragglers:{seed}")
    count = int(round(fraction * len(fleet)))
    chosen = set(rng.sample(range(len(fleet)), count))
    return [replace(d, slowdown=_uniform(rng, slowdown)) if i in chosen else d
            for i, d in enumerate(fleet)]


def load_profiles(path: Path, clients: int) -> List[DeviceModel]:
    """Devices replayed from a profiles file (format in the module docstring), cycled to N."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not JSON: {err}") from None
    if isinstance(raw, dict):
        raw = raw.get("devices", raw.get("profiles"))
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: expected a non-empty list of device profiles")
    profiles = [_profile(path, i, entry) for i, entry in enumerate(raw)]
    return [replace(profiles[i % len(profiles)], name=f"{profiles[i % len(profiles)].name}#{i}")
            for i in range(clients)]


def _profile(path: Path, i: int, entry: Any) -> DeviceModel:
    where = f"{path}: [{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    raw = {"usable_memory_bytes": entry.get("usable_memory_bytes",
                                            entry.get("mem_available_bytes")),
           **{k: entry.get(k) for k in ("sec_per_sample_fwd", "sec_per_sample_bwd",
                                        "bandwidth_bps", "rtt_s")}}
    fields: Dict[str, float] = {}
    for key, value in raw.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        fields[key] = float(value)
    if fields["bandwidth_bps"] <= 0:
        raise ConfigError(f"{where}.bandwidth_bps: must be > 0")
    return DeviceModel(
        name=str(entry.get("name", f"profile{i}")),
        memory_bytes=int(fields["usable_memory_bytes"]),
        bandwidth_bps=fields["bandwidth_bps"], latency_s=fields["rtt_s"],
        sec_per_sample_fwd=fields["sec_per_sample_fwd"],
        sec_per_sample_bwd=fields["sec_per_sample_bwd"],
        watts_per_cpu=watts_per_cpu(entry.get("device_class")),
    )
