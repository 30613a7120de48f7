"""The device agent: register, take a job, train under the plan, upload the sparse delta, repeat.

Lifecycle: `python3 ftte-agent.pyz --bundle DIR --server URL` (or `python -m ftte_cli.client.agent`)
reads its bundle (docs/ARCHITECTURE.md, "Bundles"), writes `DIR/agent.pid`, registers, then
long-polls `/v1/task`; each job is trained with `engine.train.train_job` and the delta uploaded
with its metadata. A heartbeat thread reports the process's peak resident memory (VmHWM). When
the server is unreachable the agent retries with capped exponential backoff and registers again
once it answers; when the server says 409 it registers again; on 410 (run over) it exits 0.

Device-side: Python 3.9, torch + safetensors + stdlib only; HTTP through urllib.request.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ftte_cli.client import power, wire
from ftte_cli.config.recipe import ModelConfig, TrainConfig
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import Plan, load_plan
from ftte_cli.engine.serialize import load_tensors
from ftte_cli.engine.train import DeviceUnavailable, peak_rss, resolve_device, train_job
from ftte_cli.errors import ConfigError

log = logging.getLogger("ftte.agent")

PID_FILE = "agent.pid"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_BUNDLE = 2
EXIT_AUTH = 5


class RunOver(Exception):
    """The server answered 410: the run has ended."""


class RegisterAgain(Exception):
    """The server answered 409: it does not know this device as online."""


class AuthRejected(Exception):
    """The server answered 401: wrong token or unknown device."""


class Unreachable(Exception):
    """No answer from the server (refused, reset, timed out, 5xx)."""


@dataclass(frozen=True)
class AgentOptions:
    """Knobs of the agent's loop (seconds)."""

    wait: float = 20.0  # long-poll length asked of the server
    heartbeat: float = 2.0
    backoff_start: float = 0.5
    backoff_max: float = 10.0
    give_up_after: Optional[float] = 300.0  # exit 1 after this long unreachable (no orphans)
    threads: Optional[int] = None  # torch threads; default from the CPU quota


@dataclass(frozen=True)
class Bundle:
    """Everything the agent loads from its bundle directory."""

    path: Path
    device: str
    token: str
    seed: int
    train_cfg: TrainConfig
    model: torch.nn.Module
    frozen: Dict[str, torch.Tensor]
    plan: Plan
    train_x: torch.Tensor
    train_y: torch.Tensor
    threads: Optional[int] = None  # torch threads from the inventory (ftte_train), if set
    require: Optional[Dict[str, Any]] = None  # recipe devices.require: when it may train
    recheck_s: float = 2.0  # recipe devices.recheck_s: how often a waiting agent looks again
    watts_per_cpu: float = power.DEFAULT_WATTS_PER_CPU  # the class's figure (server.json)

    @property
    def update_bound(self) -> int:
        """Bound on a job body: the plan's subset plus header slack."""
        n = sum(math.prod(s) for s in self.plan.subset_shapes().values())
        return 4 * n + wire.METADATA_SLACK


class BundleError(Exception):
    """The bundle directory is incomplete or malformed; the message names the file."""


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return data


def _config(cls: type, raw: Any, where: str) -> Any:
    """A frozen config dataclass from a JSON dict (unknown keys refused, tuples restored)."""
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected a mapping")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise BundleError(f"{where}: unknown keys {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return cls(**values)


def _load_data(path: Path, settings: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """train_x, train_y from data.safetensors (or the device-local file named by data_path)."""
    source = Path(os.path.expanduser(settings["data_path"])) if settings.get("data_path") \
        else path / "data.safetensors"
    try:
        data = load_tensors(source)
    except ValueError as err:
        raise BundleError(str(err)) from None
    if "train_x" not in data or "train_y" not in data:
        raise BundleError(f"{source}: needs train_x and train_y")
    return data["train_x"].float(), data["train_y"].long()


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle directory; BundleError names the bad file."""
    recipe = _read_json(path / "recipe.json")
    settings = _read_json(path / "server.json")
    try:
        token = (path / "token").read_text().strip()
        plan = load_plan(path)
        frozen = load_tensors(path / "model.safetensors")
    except (OSError, ValueError, ConfigError) as err:
        raise BundleError(f"{path}: {err}") from None
    train_x, train_y = _load_data(path, settings)
    model_cfg = _config(ModelConfig, recipe.get("model", {}), f"{path}/recipe.json: model")
    num_classes = list(plan.shapes.values())[-1][0]  # the head is the last module with params
    model = build_model(model_cfg, tuple(train_x.shape[1:]), num_classes)
    missing = sorted(set(plan.shapes) ^ set(frozen))
    if missing:
        raise BundleError(f"{path}/model.safetensors: parameters differ from the plan: "
                          f"{missing[:3]}")
    devices = recipe.get("devices") or {}
    return Bundle(
        path=path, device=str(settings.get("device", "")), token=token,
        require=dict(devices.get("require") or {}),
        recheck_s=float(devices.get("recheck_s", 2.0)),
        watts_per_cpu=float(settings.get("watts_per_cpu", power.DEFAULT_WATTS_PER_CPU)),
        seed=int(recipe.get("seed", 1)),
        train_cfg=_config(TrainConfig, recipe.get("train", {}), f"{path}/recipe.json: train"),
        model=model, frozen=frozen, plan=plan, train_x=train_x, train_y=train_y,
        threads=int(settings["threads"]) if settings.get("threads") else None,
    )


def cpu_quota() -> Optional[float]:
    """CPUs this process may use by its cgroup quota (v2 cpu.max or v1 cfs), None if unlimited."""
    for group in _own_cgroups():
        for quota_file, period_file in (("cpu.max", None),
                                        ("cpu.cfs_quota_us", "cpu.cfs_period_us")):
            try:
                text = (group / quota_file).read_text().split()
                if period_file is None:
                    quota, period = text[0], text[1]
                else:
                    quota, period = text[0], (group / period_file).read_text().strip()
            except (OSError, IndexError):
                continue
            if quota in ("max", "-1"):
                return None
            return int(quota) / int(period)
    return None


def _own_cgroups() -> List[Path]:
    """Folders of this process's cpu cgroup (v1 cpu controller, then v2 unified)."""
    out: List[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1].split(","), parts[2].lstrip("/")
        if "cpu" in controllers:
            for mount in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                out.append(Path(mount) / rel)
        elif parts[1] == "":
            out.append(Path("/sys/fs/cgroup") / rel)
    return out


def default_threads() -> int:
    """Torch threads: $FTTE_AGENT_THREADS, else the CPU quota rounded up, at most the CPUs we
    may run on, at least 1."""
    forced = os.environ.get("FTTE_AGENT_THREADS", "")
    if forced.isdigit() and int(forced) > 0:
        return int(forced)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


class Client:
    """HTTP to the server with the device's credentials; maps answers to exceptions."""

    def __init__(self, server: str, device: str, token: str) -> None:
        self.base = server.rstrip("/") + wire.API
        self.headers = wire.auth_headers(device, token)

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                content_type: str = "application/json",
                timeout: float = 30.0) -> Tuple[int, bytes]:
        """(status, body) for 2xx and 422; RunOver, RegisterAgain, AuthRejected, Unreachable."""
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return self._http_error(err)
        except (urllib.error.URLError, OSError, socket.timeout) as err:
            raise Unreachable(str(getattr(err, "reason", err))) from None

    @staticmethod
    def _http_error(err: urllib.error.HTTPError) -> Tuple[int, bytes]:
        body = err.read() if err.fp is not None else b""
        err.close()
        if err.code == wire.RUN_OVER:
            raise RunOver()
        if err.code == wire.REGISTER_AGAIN:
            raise RegisterAgain()
        if err.code == wire.UNAUTHORIZED:
            raise AuthRejected(body.decode("utf-8", "replace"))
        if err.code in (400, 413, 422):
            return err.code, body
        raise Unreachable(f"HTTP {err.code}")


class Agent:
    """One device's loop; `run()` returns the process exit code."""

    def __init__(self, bundle: Bundle, server: str, opts: AgentOptions) -> None:
        self.bundle = bundle
        self.opts = opts
        self.client = Client(server, bundle.device, bundle.token)
        self.state = "idle"
        self.waiting: Optional[str] = None  # why the recipe's device rules hold us back
        self.power: Dict[str, Any] = {}  # the last power reading, sent with heartbeats
        self.stop = threading.Event()
        self.jobs_done = 0

    def run(self) -> int:
        """Work until the run is over (0), the token is refused (5) or we give up (1)."""
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beat.start()
        try:
            self._loop()
            return EXIT_OK
        except RunOver:
            log.info("run over after %d jobs", self.jobs_done)
            return EXIT_OK
        except AuthRejected as err:
            log.error("server refused our token: %s", err)
            return EXIT_AUTH
        except Unreachable as err:
            log.error("giving up, server unreachable: %s", err)
            return EXIT_FAILURE
        finally:
            self.stop.set()
            beat.join(timeout=15.0)  # no thread may be mid-request while the interpreter exits

    def _loop(self) -> None:
        self._retry(self._register)
        while not self.stop.is_set():
            try:
                self._step()
            except RegisterAgain:
                log.info("server asks us to register again")
                self._retry(self._register)
            except Unreachable as err:
                log.warning("server unreachable (%s); will register again", err)
                self._retry(self._register)

    def _retry(self, fn: Any) -> Any:
        """Call fn until it gets an answer, sleeping with capped exponential backoff."""
        delay, started = self.opts.backoff_start, time.monotonic()
        while True:
            try:
                return fn()
            except Unreachable as err:
                waited = time.monotonic() - started
                if self.opts.give_up_after is not None and waited > self.opts.give_up_after:
                    raise
                log.info("server unreachable (%s); retrying in %.1fs", err, delay)
                if self.stop.wait(delay):
                    raise RunOver() from None
                delay = min(delay * 2, self.opts.backoff_max)

    def _register(self) -> Dict[str, Any]:
        status, body = self.client.request("POST", "/register", wire.dumps({"pid": os.getpid()}))
        reply = json.loads(body.decode("utf-8"))
        log.info("registered as %s in run %s", reply.get("client_id"), reply.get("run_id"))
        return reply

    def _step(self) -> None:
        self._wait_until_eligible()
        if self.stop.is_set():
            return
        wait = self.opts.wait
        status, body = self.client.request("GET", f"/task?wait={wait:g}", timeout=wait + 30.0)
        if status == wire.NO_JOB or not body:
            return
        job = wire.decode_job(body, self.bundle.update_bound)
        self.state = "training"
        try:
            update = self._train(job)
        finally:
            self.state = "idle"
        # A short outage should not waste the job: retry the upload; a restarted server
        # answers 409 instead and the loop registers again (the stale job is dropped).
        self._retry(lambda: self._upload(update))

    def _train(self, job: wire.JobMessage) -> wire.UpdateMessage:
        b = self.bundle
        watts_before = self.power.get("power_w")  # read just before this job was fetched
        started, cpu = time.monotonic(), time.process_time()
        result = train_job(b.model, b.frozen, b.plan, job.subset, Dataset(b.train_x, b.train_y),
                           b.train_cfg, job.seed)
        cpu_s, wall_s = time.process_time() - cpu, time.monotonic() - started
        # A second reading only where there is a sensor (Termux's reader takes a while).
        watts_after = None if watts_before is None else power.read_power().get("power_w")
        energy, source = power.job_energy(cpu_s, wall_s, watts_before, watts_after,
                                          b.watts_per_cpu)
        self.jobs_done += 1
        log.info("job %s v%d: %d steps, loss %.4f, %.1fs, peak %s", job.job_id, job.version,
                 result.steps, result.loss, time.monotonic() - started, result.peak_memory)
        return wire.UpdateMessage(job.job_id, job.version, result.num_samples,
                                  result.grad_variance, result.peak_memory or peak_rss(),
                                  result.delta, cpu_seconds=cpu_s, energy_j=energy,
                                  energy_source=source)

    def _upload(self, update: wire.UpdateMessage) -> None:
        body = wire.encode_update(update)
        status, reply = self.client.request("POST", "/update", body, wire.TENSOR_TYPE)
        text = reply.decode("utf-8", "replace")[:200]
        if status != 200:
            log.warning("update for job %s refused (%d): %s", update.job_id, status, text)
        elif '"late"' in text:  # the server had released the job: say what it decided
            log.info("late update for job %s accepted by the staleness rule: %s",
                     update.job_id, text)

    def _wait_until_eligible(self) -> None:
        """Before each job: read the power state and wait while the recipe's rules say no
        (devices.require), telling the server why at once and with every heartbeat."""
        while not self.stop.is_set():
            self.power = power.read_power()
            reason = power.check(self.bundle.require, self.power)
            if reason is None:
                if self.waiting is not None:
                    log.info("conditions met again: taking jobs")
                    self.waiting, self.state = None, "idle"
                    self._beat()  # the server counts us in again before we ask for work
                return
            if reason != self.waiting:
                log.info("waiting: %s", reason)
                self.waiting, self.state = reason, "waiting"
                self._beat()
            self.stop.wait(self.bundle.recheck_s)

    def _beat(self) -> None:
        """One heartbeat: peak memory, state (and why we wait), the last power reading."""
        body: Dict[str, Any] = {"peak_memory": peak_rss(), "state": self.state}
        if self.waiting is not None:
            body["reason"] = self.waiting
        if self.power:
            body["power"] = {k: self.power.get(k) for k in power.FIELDS}
        self.client.request("POST", "/heartbeat", wire.dumps(body), timeout=5.0)

    def _heartbeats(self) -> None:
        while not self.stop.wait(self.opts.heartbeat):
            try:
                self._beat()
            except RunOver:
                return
            except (RegisterAgain, Unreachable, AuthRejected):
                continue  # the main loop notices and re-registers; heartbeats only report


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ftte-agent", description="ftte device agent")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    p.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8765")
    p.add_argument("--wait", type=float, default=20.0, help="long-poll seconds")
    p.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats")
    p.add_argument("--backoff-max", type=float, default=10.0, help="cap on retry delay")
    p.add_argument("--give-up-after", type=float, default=300.0,
                   help="exit 1 after this many seconds without reaching the server (0: never)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: CPU quota)")
    return p.parse_args(argv)


def _write_pid(folder: Path) -> Path:
    name = os.environ.get("FTTE_AGENT_PID_FILE", PID_FILE)  # per run when `ftte train` starts us
    path = folder / os.path.basename(name)
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the device runtime; returns the exit code."""
    args = _parse(argv)
    logging.basicConfig(level=os.environ.get("FTTE_AGENT_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    pid_path = _write_pid(args.bundle)
    # SIGTERM from `ftte train` (or a user) ends the loop like Ctrl-C, removing the pid file.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        opts = AgentOptions(wait=args.wait, heartbeat=args.heartbeat, backoff_max=args.backoff_max,
                            give_up_after=args.give_up_after or None, threads=args.threads)
        torch.set_num_threads(opts.threads or default_threads())
        try:
            bundle = load_bundle(args.bundle)
        except BundleError as err:
            log.error("bad bundle: %s", err)
            return EXIT_BAD_BUNDLE
        if bundle.threads and not opts.threads and not os.environ.get("FTTE_AGENT_THREADS"):
            torch.set_num_threads(bundle.threads)  # the inventory's ftte_train threads
        try:
            where = resolve_device(bundle.train_cfg.device)
        except DeviceUnavailable as err:
            log.error("bad bundle: %s", err)
            return EXIT_BAD_BUNDLE
        log.info("device %s, %d samples, %d torch threads, trains on %s, plan %s "
                 "(%d trainable params)", bundle.device, int(bundle.train_y.shape[0]),
                 torch.get_num_threads(), where, bundle.plan.method,
                 bundle.plan.trainable_params)
        return Agent(bundle, args.server, opts).run()
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
