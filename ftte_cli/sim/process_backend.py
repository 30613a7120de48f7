"""`ftte simulate --backend processes`: client jobs train in forked worker processes on this
machine; the virtual clock and the coordinator stay in this process.

Lifecycle: `start(world)` forks `workers` processes (default: the CPUs this process may use).
Fork, not spawn: each worker inherits the world (model, plans, frozen parameters, every
client's shard) copy-on-write, so start-up costs milliseconds and nothing is copied or sent.
`submit` queues a job and hands it to a worker with a free slot (each worker holds at most
`DEPTH` jobs: one training, one waiting, so a worker never idles while this process evaluates
or aggregates); `result`, called when the job's arrival is the next event on the virtual clock,
waits for that job (moving it to the front of the queue if no worker holds it yet) and returns
it. Results are applied in virtual-time order, exactly as in-process. `close()` stops the
workers and removes the w* files.

Transport, no pickle: a task is one JSON line (job id, plan key, client, seed, train config,
the w* file); the delta comes back as safetensors bytes after a JSON header. w*_t (the plan's
trainable subset at version t) is written once per version, as safetensors, to a file in a
private folder on /dev/shm (memory, not disk) that every worker reads; jobs of that version
share it, and each worker keeps the last few versions it decoded.

Equality with in-process: every worker runs `engine.train.train_job` on the same inputs (the
bits of w*_t, the shard, the seed) with this process's torch thread count (`--threads`,
default 1), so deltas, and hence every metric, virtual time, staleness and the event order, are
bit for bit those of `--backend inprocess`. What differs: `peak_memory` (the worker's own RSS;
the simulator does not use it), `train_cpu_s` (the workers' CPU) and wall time.

Failure: a worker that dies (killed, out of memory) or a job that raises ends the run with a
one-line RunError naming the worker and the job; the wait watches every worker's exit, so a lost
worker never leaves the run hanging.

Jobs queued when a strategy stops early are still trained (their results are dropped); at most
`max_concurrency` jobs per strategy.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Deque, Dict, List, NoReturn, Optional, Tuple

import torch
from torch import Tensor

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.engine.coordinator import Job
from ftte_cli.engine.serialize import tensors_from_own_bytes, tensors_to_bytes
from ftte_cli.engine.train import JobResult
from ftte_cli.errors import ConfigError, RunError
from ftte_cli.sim.backend_common import error_line, on_accelerator, worker_count

log = logging.getLogger(__name__)
DEPTH = 2  # jobs a worker holds at once: one training, one ready to start
KEPT = 4  # decoded w* versions a worker keeps


# ---------------------------------------------------------------------------------------------
# the worker (runs in a forked child)


class _Worker:
    """A forked child's loop: read a task, train it on the inherited world, send the result."""

    def __init__(self, conn: Connection, world: Any) -> None:
        self.conn = conn
        self.world = world
        self.subsets: OrderedDict[str, Dict[str, Tensor]] = OrderedDict()

    def subset(self, path: str) -> Dict[str, Tensor]:
        """w* of a version, decoded once from its file and kept for the version's other jobs."""
        hit = self.subsets.get(path)
        if hit is None:
            with open(path, "rb") as f:
                hit = tensors_from_own_bytes(f.read())
            self.subsets[path] = hit
            while len(self.subsets) > KEPT:
                self.subsets.popitem(last=False)
        return hit

    def train(self, task: Dict[str, Any]) -> Tuple[Dict[str, Any], bytes]:
        from ftte_cli.engine.train import train_job  # noqa: PLC0415

        world = self.world
        plan = world.dense if task["plan"] == "dense" else world.ftte
        start = time.process_time()
        res = train_job(world.model, world.params, plan, self.subset(task["w"]),
                        world.data.clients[task["client"]].train, TrainConfig(**task["cfg"]),
                        task["seed"])
        head = {"id": task["id"], "num_samples": res.num_samples,
                "grad_variance": res.grad_variance, "steps": res.steps, "loss": res.loss,
                "peak_memory": res.peak_memory, "cpu_s": time.process_time() - start}
        return head, tensors_to_bytes(res.delta)

    def loop(self) -> None:
        while True:
            try:
                task = json.loads(self.conn.recv_bytes())
            except EOFError:  # the driver went away
                return
            if task.get("stop"):
                return
            try:
                head, delta = self.train(task)
            except Exception as err:  # noqa: BLE001  (reported to the driver, which raises)
                self.conn.send_bytes(json.dumps({"id": task["id"],
                                                 "error": error_line(err)}).encode())
                continue
            self.conn.send_bytes(json.dumps(head).encode())
            self.conn.send_bytes(delta)


def _worker_main(conn: Connection, others: List[Connection], world: Any, threads: int) -> None:
    """Entry point of a forked worker."""
    for c in others:  # the driver's ends of every pipe: closed, so EOF means the driver is gone
        c.close()
    # Ctrl-C reaches the whole process group: the driver handles it and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)  # the driver's count: same reduction order, same bits
    _Worker(conn, world).loop()


# ---------------------------------------------------------------------------------------------
# the driver side


@dataclass
class _Handle:
    """One submitted job."""

    id: int
    task: bytes  # the JSON line sent to a worker
    subset_key: int  # id() of the version's w* dict
    worker: Optional[int] = None  # index of the worker holding it
    head: Optional[Dict[str, Any]] = None  # filled when its result arrives
    delta: bytes = b""


@dataclass
class _Version:
    """A version's w* file and the jobs in flight that use it."""

    subset: Dict[str, Tensor]  # held so its id() stays unique while the file exists
    path: str
    seq: int  # order of writing: the largest is the newest version
    jobs: int = 0


@dataclass
class _Slot:
    """One worker process as the driver sees it."""

    index: int
    proc: Any  # multiprocessing.Process
    conn: Connection
    held: List[int] = field(default_factory=list)  # job ids sent to it, oldest first


class ProcessBackend:
    """Client jobs trained by forked worker processes; see the module docstring."""

    def __init__(self, workers: Optional[int] = None) -> None:
        self.workers = worker_count(workers)
        self.slots: List[_Slot] = []
        self.queue: Deque[_Handle] = deque()
        self.jobs: Dict[int, _Handle] = {}  # submitted and not yet delivered
        self.versions: Dict[int, _Version] = {}
        self.folder: Optional[str] = None
        self.files_written = 0  # tests check "once per version"
        self._next = 0

    # lifecycle -------------------------------------------------------------------------------

    def start(self, world: Any) -> None:
        """Fork the workers; each inherits `world` (see the module docstring)."""
        device = world.recipe.train.device
        if on_accelerator(device):
            raise ConfigError(f"--backend processes: train.device {device} means an "
                              "accelerator; forked workers train on the CPU (use train.device: "
                              "cpu, or --backend inprocess)")
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.folder = tempfile.mkdtemp(prefix="ftte-sim-", dir=shm)
        ctx = multiprocessing.get_context("fork")
        threads = torch.get_num_threads()
        mine: List[Connection] = []
        for i in range(self.workers):
            here, there = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_worker_main, args=(there, [*mine, here], world, threads),
                               name=f"ftte-sim-worker-{i}", daemon=True)
            proc.start()
            there.close()
            mine.append(here)
            self.slots.append(_Slot(i, proc, here))
        log.info("processes backend: %d workers, %d torch thread(s) each", self.workers, threads)

    def close(self) -> None:
        """Stop the workers (killing any still busy after a short wait) and remove the files."""
        for s in self.slots:
            try:
                s.conn.send_bytes(b'{"stop": true}')
            except OSError:
                pass  # already gone
        for s in self.slots:
            s.proc.join(timeout=5)
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join()
            s.conn.close()
        self.slots = []
        self.queue.clear()
        self.jobs.clear()
        self.versions.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # jobs ------------------------------------------------------------------------------------

    def submit(self, plan_key: str, job: Job, device: int, cfg: TrainConfig) -> Any:
        assert self.slots, "start(world) first"
        self._next += 1
        path = self._subset_file(job.subset)
        task = {"id": self._next, "plan": plan_key, "w": path, "client": device,
                "cfg": asdict(cfg), "seed": job.seed}
        handle = _Handle(self._next, json.dumps(task).encode(), id(job.subset))
        self.jobs[handle.id] = handle
        self.queue.append(handle)
        self._collect(block=False)
        self._feed()
        return handle

    def result(self, handle: Any) -> Tuple[JobResult, float]:
        assert isinstance(handle, _Handle)
        if handle.head is None and handle.worker is None:  # needed now: next to go out
            self.queue.remove(handle)
            self.queue.appendleft(handle)
        while handle.head is None:
            self._feed()
            self._collect(block=True)
        head = handle.head
        del self.jobs[handle.id]
        if "error" in head:
            raise RunError(f"processes backend: a client job failed in worker "
                           f"{handle.worker}: {head['error']}")
        res = JobResult(delta=tensors_from_own_bytes(handle.delta),
                        num_samples=int(head["num_samples"]),
                        grad_variance=float(head["grad_variance"]), steps=int(head["steps"]),
                        loss=float(head["loss"]), peak_memory=head["peak_memory"])
        handle.delta = b""
        return res, float(head["cpu_s"])

    def _subset_file(self, subset: Dict[str, Tensor]) -> str:
        """The file holding this version's w*, written on the version's first job."""
        key = id(subset)
        ver = self.versions.get(key)
        if ver is None or ver.subset is not subset:
            assert self.folder is not None
            self.files_written += 1
            path = os.path.join(self.folder, f"w{self.files_written}.safetensors")
            with open(path, "wb") as f:
                f.write(tensors_to_bytes(subset))
            ver = self.versions[key] = _Version(subset, path, self.files_written)
        ver.jobs += 1
        return ver.path

    def _done_with(self, key: int) -> None:
        """One job of a version came back; its file goes once none is in flight and a newer
        version exists (the newest stays: the coordinator may dispatch more jobs of it)."""
        ver = self.versions[key]
        ver.jobs -= 1
        newest = max(v.seq for v in self.versions.values())
        if ver.jobs == 0 and ver.seq != newest:
            os.remove(ver.path)
            del self.versions[key]

    def _feed(self) -> None:
        """Hand queued jobs to workers with a free slot, least loaded first."""
        while self.queue:
            slot = min(self.slots, key=lambda s: len(s.held))
            if len(slot.held) >= DEPTH:
                return
            handle = self.queue.popleft()
            try:
                slot.conn.send_bytes(handle.task)
            except OSError:
                self._lost(slot)
            handle.worker = slot.index
            slot.held.append(handle.id)

    def _collect(self, block: bool) -> None:
        """Read every result that is ready (with `block`, wait until at least one is)."""
        owner: Dict[Any, _Slot] = {s.conn: s for s in self.slots}
        owner.update({s.proc.sentinel: s for s in self.slots})
        for r in wait(list(owner), timeout=None if block else 0):
            slot = owner[r]
            if r is slot.conn:
                self._read(slot)
            elif not slot.conn.poll():  # exited with nothing left to read: lost
                self._lost(slot)

    def _read(self, slot: _Slot) -> None:
        try:
            head = json.loads(slot.conn.recv_bytes())
            delta = b"" if "error" in head else slot.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(slot)
        slot.held.remove(head["id"])
        handle = self.jobs.get(head["id"])
        if handle is not None:
            handle.head, handle.delta = head, delta
            self._done_with(handle.subset_key)

    def _lost(self, slot: _Slot) -> NoReturn:
        slot.proc.join(timeout=1)
        code = slot.proc.exitcode
        job = f"job {slot.held[0]}" if slot.held else "no job"
        raise RunError(f"processes backend: worker {slot.index} (pid {slot.proc.pid}) exited "
                       f"with code {code} while holding {job}; the run cannot continue "
                       "(out of memory? try fewer --workers)")
