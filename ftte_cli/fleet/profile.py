"""`ftte profile`: measure each device over SSH and cache the results as JSON.

Lifecycle per device (one worker of `run_on_fleet`): with `--benchmark`, time a few `echo`s
(round-trip time) and one upload of random bytes to `cat > /dev/null` (upload bandwidth); then
send the probe (fleet/probe.py plus the engine modules that build the recipe's model) to the
device's python on stdin and parse its one `FTTE-PROBE {json}` line. The record adds the
inventory's cap and the usable memory M_i (fleet/budget.py). Cached records younger than
`--max-age` are reused without contacting the device.

The cache is `<inventory dir>/.ftte/profiles.json`: `{"devices": [record, ...]}`, one record per
device ever profiled (newest kept). Each record has `name`, `profiled_at` (ISO-8601 UTC) and the
keys `ftte simulate --fleet` replays: `usable_memory_bytes`, `sec_per_sample_fwd`,
`sec_per_sample_bwd`, `bandwidth_bps`, `rtt_s` (the last four null until `--benchmark`).
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import shlex
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import PlanConfig, Recipe
from ftte_cli.errors import ConfigError
from ftte_cli.fleet import budget as bud
from ftte_cli.fleet import probe
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.pool import run_on_fleet
from ftte_cli.fleet.ssh.results import CommandFailed, DeviceResult, FleetResults, Outcome
from ftte_cli.fleet.ssh.sessions import Session

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../ftte_cli
MODELS_MODULE = "ftte_cli.engine.models"
# the runtime step (probe.runtime_step) trains with the engine's own job and estimates it
MEMORY_MODULE = "ftte_cli.engine.memory"
TRAIN_MODULE = "ftte_cli.engine.train"
PLAN_MODULE = "ftte_cli.engine.plan"
AGENT_MODULE = "ftte_cli.client.agent"  # imported too: its modules are part of the runtime
# Two uploads; the difference of their times cancels the per-command overhead (channel, shell).
UPLOAD_SMALL, UPLOAD_LARGE = 256 * 1024, 4 * 1024 * 1024
RTT_SAMPLES = 5
# Known input shapes: no need to generate or load a dataset just to build the model.
DATA_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "synthetic_har": ((9, 128), 6),
    "uci_har": ((9, 128), 6),
    "digits": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10),
}


class ProbeFailed(Exception):
    """The probe ran but gave no usable answer (mapped to the `failed` outcome)."""


@dataclass(frozen=True)
class ProfileRequest:
    """What to measure on every device."""

    recipe: Optional[Recipe] = None  # its model is built for the baseline (and benchmark)
    benchmark: bool = False  # time training steps, RTT and upload bandwidth
    window_s: float = 0.5  # each timing window spans several 100 ms CFS periods
    repeats: int = 5  # the fastest of this many windows is kept
    probe_timeout: float = 300.0  # a 25%-CPU device needs a while to import torch


@dataclass(frozen=True)
class DeviceProfile:
    """What `ftte profile` knows about one device (one record of profiles.json)."""

    name: str
    host: str
    profiled_at: str  # ISO-8601 UTC
    device_class: Optional[str] = None
    arch: Optional[str] = None
    os: Optional[str] = None
    kernel: Optional[str] = None
    cpu_count: Optional[int] = None
    cpu_model: Optional[str] = None
    mem_total_bytes: Optional[int] = None
    mem_available_bytes: Optional[int] = None
    swap_total_bytes: Optional[int] = None  # reported, never counted
    swap_free_bytes: Optional[int] = None
    cgroup_version: Optional[int] = None
    cgroup_mem_limit_bytes: Optional[int] = None  # the tightest limit on the probe's own cgroup
    cpu_quota: Optional[float] = None  # CPUs (0.25: a quarter of one); None: no quota
    inventory_cap_bytes: Optional[int] = None  # ftte_mem_cap_mb
    disk_free_bytes: Optional[int] = None  # where the workdir is
    python_version: Optional[str] = None
    torch_version: Optional[str] = None  # None: torch absent
    board_model: Optional[str] = None  # /proc/device-tree/model (Jetson, Pi)
    jetson_release: Optional[str] = None  # first line of /etc/nv_tegra_release (L4T version)
    temperature_c: Optional[float] = None  # hottest thermal zone
    baseline_rss_bytes: Optional[int] = None  # resident after import torch (+ building the model)
    # what the memory cgroup is charged for at the same point (all its processes, its page
    # cache; shared library pages another cgroup loaded first are not): the baseline M_i uses
    # when the cgroup limit is the binding ceiling
    baseline_cgroup_bytes: Optional[int] = None
    baseline_note: str = ""  # what the baseline includes
    peak_rss_bytes: Optional[int] = None  # probe's peak (after the benchmark, if any)
    # one real training step (probe.runtime_step): its peak RSS, the engine's estimate of its
    # tensors, and the runtime's cost beyond them (peak - baseline - estimate), which M_i subtracts
    runtime_step_peak_bytes: Optional[int] = None
    runtime_step_estimate_bytes: Optional[int] = None
    runtime_overhead_bytes: Optional[int] = None
    runtime_note: str = ""
    safety_margin_bytes: int = 0
    usable_memory_bytes: Optional[int] = None  # M_i
    limited_by: Optional[str] = None  # mem_available | cgroup | inventory_cap
    bench_model: Optional[str] = None  # model timed by --benchmark
    bench_threads: Optional[int] = None
    bench_batch: Optional[int] = None
    sec_per_sample_fwd: Optional[float] = None
    sec_per_sample_bwd: Optional[float] = None
    rtt_s: Optional[float] = None
    bandwidth_bps: Optional[float] = None  # upload, bits per second
    probe_seconds: Optional[float] = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    accelerator: Optional[str] = None  # "cuda:<name>" / "mps" when torch can train there
    memory_counted: str = "cpu"  # MemoryCounted: which memory M_i stands for
    # Power (client/power.py): None means the device does not report it, never zero.
    battery: Optional[float] = None  # fraction of full
    charging: Optional[bool] = None  # on external power
    power_w: Optional[float] = None  # draw from a sensor (Jetson INA3221, battery power_now)
    throttled: Optional[bool] = None  # Pi firmware flags: throttled or soft temperature limit
    power_sources: list[str] = field(default_factory=list)  # where the readings came from
    power_error: Optional[str] = None  # reading power failed (the rest of the probe did not)

    @property
    def benchmarked(self) -> bool:
        """True when the record holds training-step timings."""
        return self.sec_per_sample_fwd is not None


# --- the payload sent to the device -------------------------------------------------------------


def _top_level_imports(path: Path) -> list[str]:
    """ftte_cli modules a file imports at run time (not under `if TYPE_CHECKING`)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            # `from pkg import mod`: mod may be a module (model_sources skips names that are not)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [m for m in found if m.split(".")[0] == "ftte_cli"]


def model_sources(entry: str = MODELS_MODULE) -> tuple[dict[str, str], list[str]]:
    """(module -> source, package names) for `entry` and the ftte_cli modules it imports."""
    sources: dict[str, str] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        path = PACKAGE_ROOT.parent / (name.replace(".", "/") + ".py")
        if not path.exists():  # a package, or a name imported from one: stub packages below
            continue
        sources[name] = path.read_text()
        todo += _top_level_imports(path)
    packages = sorted({".".join(m.split(".")[:i]) for m in sources
                       for i in range(1, m.count(".") + 1)})
    return sources, packages


def data_shape(recipe: Recipe) -> tuple[tuple[int, ...], int]:
    """(input shape without batch, number of classes) of the recipe's dataset."""
    known = DATA_SHAPES.get(recipe.data.dataset)
    if known is not None:
        return known
    from ftte_cli.engine.data import load_federated

    data = load_federated(recipe.data, 1, recipe.seed)
    return tuple(data.input_shape), int(data.num_classes)


def shared_config(request: ProfileRequest) -> dict[str, Any]:
    """The part of the probe config every device gets (built once, in the calling thread).

    Built before the workers start: parsing sources with `ast` from several threads at once
    trips a CPython 3.11 bug ("AST constructor recursion depth mismatch").
    """
    cfg: dict[str, Any] = {"benchmark": request.benchmark, "window_s": request.window_s,
                           "repeats": request.repeats, "power_source": power_source()}
    if request.recipe is not None:
        shape, classes = data_shape(request.recipe)
        sources, packages = model_sources(MEMORY_MODULE)  # its closure holds models and train
        agent_sources, agent_packages = model_sources(AGENT_MODULE)
        sources.update(agent_sources)
        packages = sorted(set(packages) | set(agent_packages))
        cfg.update(model={"name": request.recipe.model.name, "width": request.recipe.model.width},
                   input_shape=list(shape), num_classes=classes,
                   batch_size=request.recipe.train.batch_size,
                   momentum=request.recipe.train.momentum, modules=sources,
                   packages=packages, models_module=MODELS_MODULE, memory_module=MEMORY_MODULE,
                   train_module=TRAIN_MODULE, plan_module=PLAN_MODULE,
                   agent_module=AGENT_MODULE)
    return cfg


def power_source() -> str:
    """client/power.py's source: the probe runs its read_power() on the device."""
    return (PACKAGE_ROOT / "client" / "power.py").read_text()


def probe_config(device: Device, shared: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON config the probe's main() receives on this device."""
    return {**shared, "workdir": device.workdir}


def probe_program(cfg: Mapping[str, Any]) -> bytes:
    """The probe's source plus one call of main() with the config, for `python -` on stdin."""
    blob = base64.b64encode(json.dumps(cfg).encode()).decode()
    source = Path(probe.__file__).read_text()
    return (source + f"\n\nmain(decode_config({blob!r}))\n").encode()


# --- one device ---------------------------------------------------------------------------------


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_link(session: Session) -> tuple[float, float]:
    """(round-trip seconds, upload bits per second) over the open session."""
    rtt = statistics.median(_timed(lambda: session.run("echo ok")) for _ in range(RTT_SAMPLES))
    small, large = os.urandom(UPLOAD_SMALL), os.urandom(UPLOAD_LARGE)  # random: incompressible
    t_small = _timed(lambda: session.run("cat > /dev/null", stdin=small))
    t_large = _timed(lambda: session.run("cat > /dev/null", stdin=large))
    if t_large > t_small:
        return rtt, (UPLOAD_LARGE - UPLOAD_SMALL) * 8 / (t_large - t_small)
    return rtt, UPLOAD_LARGE * 8 / t_large  # noise swamped the difference: a lower bound


def parse_probe(stdout: str) -> dict[str, Any]:
    """The probe's record from its stdout; ProbeFailed if the line is missing or broken."""
    for line in stdout.splitlines():
        if line.startswith(probe.MARKER):
            try:
                data = json.loads(line[len(probe.MARKER):])
            except ValueError as err:
                raise ProbeFailed(f"probe output is not JSON: {err}") from err
            if "error" in data:
                raise ProbeFailed(f"probe failed on the device: {data['error']}")
            return dict(data)
    tail = stdout.strip().splitlines()[-1:] or ["(no output)"]
    raise ProbeFailed(f"probe printed no result: {tail[0][:200]}")


def build_profile(device: Device, raw: Mapping[str, Any], margin: int,
                  link: Optional[tuple[float, float]]) -> DeviceProfile:
    """A DeviceProfile from the probe's record, the inventory and the link timings."""
    known = {f for f in DeviceProfile.__dataclass_fields__}
    values = {k: v for k, v in raw.items() if k in known}
    cap = None if device.mem_cap_mb is None else int(device.mem_cap_mb) * 1024 * 1024
    prof = DeviceProfile(name=device.name, host=device.host, device_class=device.device_class,
                         profiled_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         inventory_cap_bytes=cap, safety_margin_bytes=margin, **values)
    if link is not None:
        prof = replace(prof, rtt_s=link[0], bandwidth_bps=link[1])
    prof = replace(prof, memory_counted=memory_counted(prof).value)
    if prof.mem_available_bytes is not None:
        b = bud.device_budget(device.name, prof.mem_available_bytes,
                              prof.cgroup_mem_limit_bytes, cap,
                              prof.baseline_rss_bytes or 0, margin,
                              prof.runtime_overhead_bytes or 0,
                              cgroup_baseline=prof.baseline_cgroup_bytes)
        prof = replace(prof, usable_memory_bytes=b.usable_bytes, limited_by=b.limited_by.value)
    return prof


class MemoryCounted(str, Enum):
    """Which memory a device's budget M_i counts (the profile says so)."""

    cpu = "cpu"  # no accelerator: process memory
    shared = "shared_cpu_gpu"  # Jetson: CPU and GPU allocate from one DRAM, both counted
    cpu_only = "cpu_only"  # a discrete GPU: its own memory is not part of M_i


def memory_counted(prof: DeviceProfile) -> MemoryCounted:
    """Jetsons (L4T release or a Jetson board) share memory between CPU and GPU."""
    jetson = prof.jetson_release is not None or "jetson" in (prof.board_model or "").lower()
    if jetson:
        return MemoryCounted.shared
    if prof.accelerator and prof.accelerator.startswith("cuda"):
        return MemoryCounted.cpu_only
    if prof.accelerator == "mps":  # Apple silicon: unified memory
        return MemoryCounted.shared
    return MemoryCounted.cpu


def profile_device(session: Session, request: ProfileRequest, shared: Mapping[str, Any],
                   margin: int) -> DeviceResult:
    """Measure one device (the `fn` given to run_on_fleet)."""
    device = session.device
    link = measure_link(session) if request.benchmark else None
    program = probe_program(probe_config(device, shared))
    try:
        res = session.run(f"{shlex.quote(device.python)} -", stdin=program,
                          timeout=request.probe_timeout)
    except CommandFailed as err:
        if err.result.rc == 137:  # 128 + SIGKILL: most often the OOM killer under a memory cap
            raise ProbeFailed(f"probe killed (SIGKILL): out of memory? baseline or benchmark "
                              f"does not fit on {device.name}") from err
        raise ProbeFailed(f"{device.python} on the device: {err}") from err
    prof = build_profile(device, parse_probe(res.stdout), margin, link)
    return DeviceResult(device, Outcome.ok, detail=_detail(prof), value=prof)


def _detail(prof: DeviceProfile) -> str:
    if prof.torch_version is None:
        return "no torch on the device: baseline and benchmark skipped"
    return prof.baseline_note


# --- the fleet, with the cache ------------------------------------------------------------------


def profile_fleet(devices: list[Device], opts: SshOptions, request: ProfileRequest,
                  cache: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  max_age: Optional[float] = None,
                  on_done: Optional[Callable[[DeviceResult], None]] = None) -> FleetResults:
    """Profile every device (reusing fresh cached records); outcome per device, never raises."""
    margin = (request.recipe.plan if request.recipe else PlanConfig()).safety_margin
    fresh: dict[str, DeviceResult] = {}
    for dev in devices:
        rec = (cache or {}).get(dev.name)
        if rec is not None and max_age is not None and _reusable(rec, request, max_age):
            fresh[dev.name] = DeviceResult(dev, Outcome.ok, f"cached ({_age(rec):.0f}s old)",
                                           value=record_to_profile(rec))
            if on_done is not None:
                on_done(fresh[dev.name])
    todo = [d for d in devices if d.name not in fresh]
    shared = shared_config(request) if todo else {}
    ran = run_on_fleet(todo, lambda s: profile_device(s, request, shared, margin), opts, on_done)
    merged = {**fresh, **ran.results}
    return FleetResults({d.name: merged[d.name] for d in devices})


def _age(record: Mapping[str, Any]) -> float:
    try:
        stamp = datetime.fromisoformat(str(record.get("profiled_at")))
    except ValueError:
        return float("inf")
    return (datetime.now(timezone.utc) - stamp).total_seconds()


def _reusable(record: Mapping[str, Any], request: ProfileRequest, max_age: float) -> bool:
    """Young enough, with the baseline (and benchmark, if asked) of the same model."""
    if _age(record) > max_age:
        return False
    model = request.recipe.model.name if request.recipe else None
    baseline_ok = model is None or record.get("torch_version") is None or (
        record.get("baseline_note") == f"import torch + {model}"
        and "runtime_overhead_bytes" in record)  # profiles from before the runtime step
    if request.benchmark:
        return baseline_ok and record.get("sec_per_sample_fwd") is not None and (
            record.get("bench_model") == model)
    return baseline_ok


def record_to_profile(record: Mapping[str, Any]) -> DeviceProfile:
    """A DeviceProfile from a cached JSON record (unknown keys ignored)."""
    known = set(DeviceProfile.__dataclass_fields__)
    try:
        return DeviceProfile(**{k: v for k, v in record.items() if k in known})
    except TypeError as err:
        raise ConfigError(f"profiles: record {record.get('name')!r} is incomplete ({err})") from err


def profile_record(prof: DeviceProfile) -> dict[str, Any]:
    """The JSON record written for one device."""
    return asdict(prof)


def save_profiles(path: Path, results: FleetResults) -> dict[str, dict[str, Any]]:
    """Merge the successful profiles into the cache file at `path`; returns all its records."""
    records = bud.load_profiles(path)
    for res in results.succeeded.values():
        if isinstance(res.value, DeviceProfile):
            records[res.value.name] = profile_record(res.value)
    write_records(path, records)
    return records


def write_records(path: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the records as a profiles file, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(bud.dump_profiles(records))
    os.replace(tmp, path)
