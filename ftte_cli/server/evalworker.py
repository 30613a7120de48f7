"""Evaluation of the real server's model versions in a worker process (docs/SCALING.md, sec. 2).

The coordinator thread shares the GIL and the CPU with the event loop; evaluating the model on
the test set every `eval_every` versions was ~40% of its work per update. `EvalWorker` forks one
process at start holding the evaluator (model, plan's frozen prefix cache, test set) and the
frozen parameters; the coordinator sends it a version's trainable subset w* as safetensors bytes
over a pipe (never pickle) and picks up (version, accuracy, loss) later
(`Coordinator.collect_evaluations`). One evaluation at a time: a version due while the worker is
busy is skipped (`Coordinator.evals_skipped`), so results come at most one evaluation late.
The same evaluator on the same parameters, on one torch thread (see `_serve`): the figures equal
an in-thread evaluation's on one thread bit for bit (tests/server/test_evalworker.py).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import struct
from multiprocessing.connection import Connection
from typing import Callable, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ftte_cli.engine import sparse
from ftte_cli.engine.plan import Plan

Tensors = Dict[str, Tensor]
Evaluate = Callable[[Tensors], Tuple[float, float]]
_HEAD = struct.Struct("<q")  # the version, before the safetensors bytes
_RESULT = struct.Struct("<qdd")  # version, accuracy, loss


class EvalWorkerError(RuntimeError):
    """The evaluation process died or answered something else than a result."""


class EvalWorker:
    """A forked evaluation process; `start`/`results` are `coordinator.BackgroundEvaluate`."""

    def __init__(self, evaluate: Evaluate, params: Tensors, plan: Plan) -> None:
        # fork: the child inherits the evaluator and the parameters without pickling them.
        # Build it before any server thread starts (a forked child gets only the forking thread).
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, name="ftte-eval", daemon=True,
                                 args=(child, evaluate, dict(params), plan))
        self._proc.start()
        child.close()
        self._busy: Optional[int] = None  # the version being evaluated

    @property
    def busy(self) -> bool:
        """True while an evaluation is running."""
        return self._busy is not None

    def ready(self, timeout: float = 0.0) -> bool:
        """True when an evaluation finished (waiting up to `timeout` seconds for it)."""
        return self._busy is not None and self._conn.poll(timeout)

    def start(self, version: int, subset: Tensors) -> bool:
        """Send `version`'s subset to the worker; False (nothing sent) while it is busy."""
        if self._busy is not None:
            return False
        self._conn.send_bytes(_HEAD.pack(version) + st_save(dict(subset)))
        self._busy = version
        return True

    def results(self, timeout: float = 0.0) -> List[Tuple[int, float, float]]:
        """The finished evaluation, if any (waiting up to `timeout` seconds for it)."""
        if self._busy is None or not self._conn.poll(timeout):
            return []
        try:
            raw = self._conn.recv_bytes()
        except EOFError as err:
            raise EvalWorkerError("the evaluation process exited") from err
        if len(raw) != _RESULT.size:
            raise EvalWorkerError(f"evaluation process: {raw.decode(errors='replace')}")
        version, acc, loss = _RESULT.unpack(raw)
        self._busy = None
        return [(version, acc, loss)]

    def close(self) -> None:
        """Stop the worker (an empty message), waiting briefly, then terminate it; idempotent."""
        if self._conn.closed:
            return
        try:
            self._conn.send_bytes(b"")
        except OSError:
            pass
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5.0)
        self._conn.close()


def _serve(conn: Connection, evaluate: Evaluate, params: Tensors, plan: Plan) -> None:
    """Worker process: evaluate each subset it is sent, answer (version, accuracy, loss)."""
    # One thread: OpenMP's thread pool does not survive fork, and a forked child that runs a
    # parallel region after its parent used the pool hangs (measured: torch 2 threads, conv1d).
    torch.set_num_threads(1)
    # Keep only the pipe: inherited descriptors (the parent's end of this pipe, SSH sockets, the
    # inventory lock) would keep them open past the parent's exit, and this process reading
    # the pipe would never see EOF when the parent dies.
    keep = conn.fileno()
    os.closerange(3, keep)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    os.closerange(keep + 1, 1 << 20 if limit == resource.RLIM_INFINITY else limit)
    while True:
        try:
            raw = conn.recv_bytes()
        except EOFError:
            return
        if not raw:
            return
        (version,) = _HEAD.unpack_from(raw)
        try:
            subset = st_load(raw[_HEAD.size:])
            subset = {name: subset[name] for name in plan.trainable_names()}
            acc, loss = evaluate(sparse.insert(params, plan, subset))
            conn.send_bytes(_RESULT.pack(version, float(acc), float(loss)))
        except Exception as err:  # the parent raises it: a broken evaluator must not hang
            conn.send_bytes(f"{type(err).__name__}: {err}".encode()[:4096] or b"error")
