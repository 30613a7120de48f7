"""Start, watch and stop the device agents of one run over SSH.

Lifecycle: `start_agents(...)` opens one SSH session per device and keeps it for the whole run;
by default it asks each device for a reverse port forward (device 127.0.0.1:<ephemeral> -> the
server's local port, `tunnel.ReverseTunnel`) and starts the agent detached in its own session
(process group), writing `agent.pid` and `agent.log` in the bundle folder. `--direct HOST:PORT`
skips the tunnels: agents dial HOST:PORT themselves. `connection: local` devices need no tunnel.

`AgentFleet.stop_all()` (idempotent; `ftte train` calls it from `finally`) kills every agent's
process group (TERM, then KILL after a grace period), fetches each agent log into
`<run_dir>/devices/<name>.log`, closes the tunnels and the sessions. When a session died during
the run, stop reconnects once, so a device never keeps a process of the run.

The device-side helpers are small Python 3.9 stdlib scripts run with the device's interpreter,
so no `setsid`, `nohup` or `pkill` is needed on the device.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import paramiko

from ftte_cli.config.inventory import Device
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.results import CommandFailed, DeviceResult, FleetResults, Outcome, classify
from ftte_cli.fleet.ssh.sessions import Session, connect
from ftte_cli.fleet.tunnel import ReverseTunnel
from ftte_cli.units import format_size

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # SIGTERM first: the agent may say goodbye to the server
KEEPALIVE_S = 15  # SSH keepalives keep NAT and idle timers from dropping the tunnel

# argv: bundle dir, server URL, log mode (wb|ab), run id, lock path. Takes the device lock
# (fleet/locks.py) and hands it to the agent, whose life it then lasts; the log and pid file
# are the run's own. Prints "<pid> <bundle dir>", or "busy <holder record>".
_LAUNCH = r"""
import fcntl, json, os, socket, subprocess, sys
b = os.path.realpath(os.path.expanduser(sys.argv[1]))
url, mode, run, lock = sys.argv[2], sys.argv[3], sys.argv[4], os.path.expanduser(sys.argv[5])
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("busy " + os.read(fd, 4096).decode("utf-8", "replace").strip()); sys.exit(0)
log = open(os.path.join(b, "agent-%s.log" % run), mode)
env = dict(os.environ, FTTE_AGENT_PID_FILE="agent-%s.pid" % run)
p = subprocess.Popen([sys.executable, os.path.join(b, "ftte-agent.pyz"), "--bundle", b,
                      "--server", url], cwd=b, stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                     pass_fds=(fd,), env=env)
try:
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
except OSError:
    boot = ""
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"run": run, "pid": p.pid, "host": socket.gethostname(),
                         "boot_id": boot}).encode())
print("%d %s" % (p.pid, b))
"""

# argv: pgid, grace seconds (or "check"). Prints "alive" or "gone". Zombies count as gone:
# the process that reaps orphans is not always a real init (containers).
_GROUP = r"""
import os, signal, sys, time
pgid = int(sys.argv[1])
def members():
    out = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = None
    if pids is None:
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
        except PermissionError:
            return [pgid]
    for p in pids:
        try:
            with open("/proc/%s/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(p))
    return out
if sys.argv[2] != "check" and members():
    deadline = time.time() + float(sys.argv[2])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        while members() and time.time() < deadline:
            time.sleep(0.1)
        deadline = time.time() + 5
print("alive" if members() else "gone")
"""


# Prints one JSON line about the memory cgroup of this process (the agent's, when it was
# started from the same SSH login): OOM kills counted so far, the limit and the peak usage in
# bytes (cgroup v2 or v1; without a memory cgroup, the kernel's system-wide OOM kill count).
_MEMORY = r"""
import json, os
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
def number(text):
    text = (text or "").strip()
    return int(text) if text.isdigit() and int(text) < 1 << 60 else None
def counter(text, key):
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return None
out = {"oom_kills": None, "limit": None, "peak": None}
for line in (read("/proc/self/cgroup") or "").splitlines():
    _, ctrls, path = line.split(":", 2)
    if ctrls == "" and os.path.exists("/sys/fs/cgroup" + path + "/memory.events"):
        d = "/sys/fs/cgroup" + path
        out = {"oom_kills": counter(read(d + "/memory.events"), "oom_kill"),
               "limit": number(read(d + "/memory.max")), "peak": number(read(d + "/memory.peak"))}
    elif "memory" in ctrls.split(",") and os.path.isdir("/sys/fs/cgroup/memory" + path):
        d = "/sys/fs/cgroup/memory" + path
        out = {"oom_kills": counter(read(d + "/memory.oom_control"), "oom_kill"),
               "limit": number(read(d + "/memory.limit_in_bytes")),
               "peak": number(read(d + "/memory.max_usage_in_bytes"))}
        break
if out["oom_kills"] is None:
    out["oom_kills"] = counter(read("/proc/vmstat"), "oom_kill")
print(json.dumps(out))
"""


@dataclass(frozen=True)
class MemoryKill:
    """An agent the kernel killed for memory: its cgroup's peak usage and limit, in bytes."""

    peak: Optional[int]  # the memory cgroup's peak usage (None without one)
    limit: Optional[int]  # the memory cgroup's limit (None: no limit, the system ran out)

    def describe(self) -> str:
        """One line for the dashboard, the events and the report."""
        peak = "?" if self.peak is None else format_size(self.peak)
        cap = "no cgroup limit" if self.limit is None else format_size(self.limit)
        return f"killed for memory: peak {peak}, cap {cap}"


class DeviceBusy(Exception):
    """Another run's agent holds the device's lock (fleet/locks.py)."""


class TunnelRefused(Exception):
    """The device's sshd would not forward a port back to us (AllowTcpForwarding no)."""


class AgentState(str, Enum):
    """Where one device's agent stands, as the launcher knows it."""

    running = "running"
    stopped = "stopped"
    failed = "failed"  # could not be started (see the start results)


@dataclass
class _Agent:
    device: Device
    session: Session
    bundle: str  # remote bundle path as deployed (may be a symlink)
    url: str  # what the agent dials
    tunnel: Optional[ReverseTunnel] = None
    pid: Optional[int] = None
    real_bundle: str = ""  # the resolved folder holding agent.log and agent.pid
    state: AgentState = AgentState.stopped
    oom_kills: Optional[int] = None  # the memory cgroup's OOM kill count when it was started


T = TypeVar("T")


class AgentFleet:
    """The agents of one run: `alive`, `restart`, `stop_all`; results of the start per device."""

    def __init__(self, agents: dict[str, _Agent], results: FleetResults, opts: SshOptions,
                 run_dir: Path, run_id: str = "run") -> None:
        self._agents = agents
        self.results = results  # how each device's start ended (failed ones have no agent)
        self.opts = opts
        self.run_dir = run_dir
        self.run_id = run_id
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def names(self) -> list[str]:
        """Devices with a started agent."""
        return list(self._agents)

    def server_url(self, name: str) -> str:
        """The URL `name`'s agent dials (through its tunnel when there is one)."""
        return self._agents[name].url

    def pid(self, name: str) -> Optional[int]:
        """The agent's pid on the device (also its process group id)."""
        return self._agents[name].pid

    def alive(self, name: str) -> bool:
        """Whether `name`'s agent process group still has a live process.

        Raises the SSH layer's exception when the device cannot be asked (see `connected`);
        `restart` then reconnects.
        """
        agent = self._agents[name]
        if agent.pid is None:
            return False
        return _group(agent.session, agent.pid, "check") == "alive"

    def memory_kill(self, name: str) -> Optional[MemoryKill]:
        """How `name`'s agent died, when the kernel killed it for memory (its memory cgroup, or
        the system, counted an OOM kill since it started); None otherwise or when unknown."""
        agent = self._agents[name]
        now = _memory(agent.session)
        before, after = agent.oom_kills, now.get("oom_kills")
        if before is None or after is None or after <= before:
            return None
        return MemoryKill(peak=now.get("peak"), limit=now.get("limit"))

    def connected(self, name: str) -> bool:
        """Whether `name`'s SSH session (and so its tunnel) is still up."""
        agent = self._agents[name]
        return agent.session.transport is None or agent.session.transport.is_active()

    def restart(self, name: str) -> int:
        """Stop `name`'s agent if it runs and start it again (log appended); returns the pid.

        When the SSH session dropped (device rebooted, network gone) the tunnel went with it and
        the old agent dials a dead port: a fresh session and tunnel are opened first, then the
        agent is replaced by one that dials the new tunnel.
        """
        agent = self._agents[name]
        if not self.connected(name):
            self._reconnect(agent)
        if agent.pid is not None:
            _group(agent.session, agent.pid, str(STOP_GRACE_S))
        return _launch(agent, log_mode="ab", run_id=self.run_id)

    def _reconnect(self, agent: _Agent) -> None:
        log.info("%s: SSH session lost; reconnecting", agent.device.name)
        if agent.tunnel is not None:
            agent.tunnel.close()
        agent.session.close()
        session = connect(agent.device, self.opts)
        direct = None if agent.tunnel is not None or session.transport is None else \
            agent.url.removeprefix("http://")
        fresh = _open(agent.device, session, agent.bundle, self._server_port(agent), direct)
        agent.session, agent.tunnel, agent.url = fresh.session, fresh.tunnel, fresh.url

    @staticmethod
    def _server_port(agent: _Agent) -> int:
        return agent.tunnel.local_port if agent.tunnel is not None else \
            int(agent.url.rsplit(":", 1)[1])

    def stop(self, name: str) -> None:
        """Kill one agent's process group (the tunnel and session stay for a restart)."""
        agent = self._agents[name]
        if agent.pid is not None:
            _group(agent.session, agent.pid, str(STOP_GRACE_S))
            agent.state = AgentState.stopped

    def stop_all(self) -> FleetResults:
        """Stop every agent, fetch logs, close tunnels and sessions; safe to call again."""
        with self._lock:
            if self._stopped:
                return FleetResults({})
            self._stopped = True
        (self.run_dir / "devices").mkdir(parents=True, exist_ok=True)
        done = _parallel(list(self._agents.values()), self._stop_one, self.opts.forks)
        return FleetResults({r.device.name: r for r in done})

    def _stop_one(self, agent: _Agent) -> DeviceResult:
        device = agent.device
        try:
            session = agent.session
            try:
                left = _group(session, agent.pid, str(STOP_GRACE_S)) if agent.pid else "gone"
            except Exception as err:  # noqa: BLE001 - the session died: one fresh try
                log.info("%s: session lost (%s); reconnecting to stop the agent", device.name, err)
                session.close()
                session = agent.session = connect(device, self.opts)
                left = _group(session, agent.pid, str(STOP_GRACE_S)) if agent.pid else "gone"
            agent.state = AgentState.stopped
            self._fetch_log(agent, session)
            if left != "gone":
                return DeviceResult(device, Outcome.failed, f"agent pid {agent.pid} survived KILL")
            return DeviceResult(device, Outcome.ok, f"agent pid {agent.pid} stopped")
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome
            outcome, detail = classify(exc, device)
            return DeviceResult(device, outcome, detail)
        finally:
            if agent.tunnel is not None:
                agent.tunnel.close()
            agent.session.close()

    def _fetch_log(self, agent: _Agent, session: Session) -> None:
        if not agent.real_bundle:
            return
        target = self.run_dir / "devices" / f"{agent.device.name}.log"
        try:
            session.get(f"{agent.real_bundle}/agent-{self.run_id}.log", target)
        except (OSError, FileNotFoundError) as err:
            log.info("%s: no agent log fetched: %s", agent.device.name, err)


def start_agents(
    devices: Sequence[Device],
    remote_bundles: dict[str, str],
    server_port: int,
    opts: SshOptions,
    run_dir: Path,
    direct: Optional[str] = None,
    run_id: str = "run",
) -> AgentFleet:
    """Open sessions (and tunnels unless `direct`), start one agent per device; never raises.

    `remote_bundles`: device name -> bundle path on the device (DeployInfo.remote_bundle).
    `direct`: "HOST:PORT" agents dial instead of a tunnel. Devices that could not be started
    appear in `AgentFleet.results` with their outcome and no agent.
    """
    agents: dict[str, _Agent] = {}
    lock = threading.Lock()

    def start(device: Device) -> DeviceResult:
        session: Optional[Session] = None
        agent: Optional[_Agent] = None
        try:
            session = connect(device, opts)
            agent = _open(device, session, remote_bundles[device.name], server_port, direct)
            pid = _launch(agent, log_mode="wb", run_id=run_id)
            with lock:
                agents[device.name] = agent
            return DeviceResult(device, Outcome.changed, f"agent pid {pid} -> {agent.url}",
                                value=pid)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome
            outcome, detail = (Outcome.busy, str(exc)) if isinstance(exc, DeviceBusy) else \
                classify(exc, device)
            if agent is not None and agent.tunnel is not None:
                agent.tunnel.close()
            if session is not None:
                session.close()
            return DeviceResult(device, outcome, detail)

    done = _parallel(list(devices), start, opts.forks)
    results = FleetResults({r.device.name: r for r in done})
    ordered = {d.name: agents[d.name] for d in devices if d.name in agents}
    return AgentFleet(ordered, results, opts, run_dir, run_id)


def _open(device: Device, session: Session, bundle: str, server_port: int,
          direct: Optional[str]) -> _Agent:
    """The agent record with its URL: direct address, reverse tunnel, or plain loopback."""
    if direct is not None:
        return _Agent(device, session, bundle, f"http://{direct}")
    if session.transport is None:  # connection: local, the server is right here
        return _Agent(device, session, bundle, f"http://127.0.0.1:{server_port}")
    session.transport.set_keepalive(KEEPALIVE_S)
    tunnel = ReverseTunnel(session.transport, server_port)
    try:
        remote_port = tunnel.open()
    except paramiko.SSHException as err:
        raise TunnelRefused(f"{device.host}: sshd refused the reverse tunnel ({err}); allow "
                            "it (AllowTcpForwarding yes) or use --direct HOST:PORT") from None
    return _Agent(device, session, bundle, f"http://127.0.0.1:{remote_port}", tunnel)


def _launch(agent: _Agent, log_mode: str, run_id: str) -> int:
    """Start the agent detached in its own session, holding the device lock; returns its pid
    (= process group id). DeviceBusy when another run's agent holds the lock."""
    from ftte_cli.fleet.locks import DEVICE_LOCK, holder_text

    python = agent.device.python
    lock = f"{agent.device.workdir.rstrip('/')}/{DEVICE_LOCK}"
    args = " ".join(shlex.quote(a) for a in (agent.bundle, agent.url, log_mode, run_id, lock))
    agent.oom_kills = _memory(agent.session).get("oom_kills")
    result = agent.session.run(f"{python} -c {shlex.quote(_LAUNCH)} {args}")
    last = result.stdout.strip().splitlines()[-1]
    if last.startswith("busy"):
        raise DeviceBusy(f"in use by {holder_text(last[5:])}")
    pid_text, _, real = last.partition(" ")
    agent.pid, agent.real_bundle, agent.state = int(pid_text), real, AgentState.running
    log.info("%s: agent pid %s dials %s", agent.device.name, agent.pid, agent.url)
    return agent.pid


def _memory(session: Session) -> dict[str, Optional[int]]:
    """The device's memory cgroup figures (_MEMORY); empty when they cannot be read."""
    cmd = f"{session.device.python} -c {shlex.quote(_MEMORY)}"
    try:
        raw = json.loads(session.run(cmd, timeout=30).stdout.strip().splitlines()[-1])
    except (CommandFailed, ValueError, IndexError) as err:
        log.info("%s: memory cgroup not readable: %s", session.device.name, err)
        return {}
    return {k: v if isinstance(v, int) else None for k, v in raw.items()}


def _group(session: Session, pgid: Optional[int], grace: str) -> str:
    """Check ("check") or kill (grace seconds) a process group on the device; "alive"/"gone"."""
    if pgid is None:
        return "gone"
    python = session.device.python
    cmd = f"{python} -c {shlex.quote(_GROUP)} {int(pgid)} {shlex.quote(grace)}"
    return session.run(cmd, timeout=float(STOP_GRACE_S) + 30).stdout.strip().splitlines()[-1]


def _parallel(items: list[T], fn: Callable[[T], DeviceResult], forks: int) -> list[DeviceResult]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, forks), thread_name_prefix="ftte-agents") as pool:
        return list(pool.map(fn, items))
