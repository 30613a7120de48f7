"""Serve an FtteServer on a background thread with its own event loop (for the CLI and tests).

    with ServerThread(server, host="127.0.0.1", port=0) as st:
        print(st.url)   # http://127.0.0.1:<ephemeral port>
        ...             # drive the run; st.server.finish(...) ends it
    # leaving the block stops the HTTP side and the coordinator worker
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import sys
import threading
from typing import Optional

from aiohttp import web

from ftte_cli.errors import RunError
from ftte_cli.server.app import FtteServer

log = logging.getLogger(__name__)
BACKLOG = 1024  # pending connections: a fleet registering at once must not overflow the queue
# The event loop shares the GIL with the coordinator thread; at Python's default 5 ms switch
# interval every request waiting on a busy coordinator thread pays up to 5 ms per wake-up.
GIL_SWITCH_S = 0.001
FD_WANTED = 65536  # every connected device holds a socket (two while it uploads and long-polls)


def raise_fd_limit(wanted: int = FD_WANTED) -> int:
    """Lift the soft open-files limit towards `wanted` (capped by the hard limit); the new soft.

    Many systems start processes at 1024 files, fewer than a thousand devices need.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (the `fast` extra): the same asyncio API with less
    CPU per request in socket and HTTP handling; the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# Collect the young generation every GC_YOUNG allocations, not Python's default 700: a
# thousand devices keep ~100,000 request objects (tasks, futures, parsers) alive at any time,
# which at 700 were swept again and again and promoted before they died by reference count.
GC_YOUNG = 20_000


class _GcTuning:
    """gc.freeze and the young threshold for as long as any server in this process serves.

    Keep the objects that exist once a server is up out of every later collection, and collect
    the young ones less often. torch, the model, the coordinator and the app are ~180,000
    tracked objects that live as long as the run; without this each full collection walks them
    all (~200 ms on a busy core, measured by benchmarks/loadtest.py), stalling the event loop
    and the coordinator thread alike: at 1,000 devices collections were most of the server's
    CPU and of its p99 latency. Cyclic garbage is still collected, in larger batches. Counted,
    because servers nest (a tier's aggregators beside its coordinator): the first one in tunes,
    the last one out restores Python's thresholds and unfreezes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: Optional[tuple[int, int, int]] = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users > 1:
                gc.freeze()  # what the newer server built is long-lived too
                return
            self._saved = gc.get_threshold()
            gc.collect()  # garbage from setup is freed now, not frozen
            gc.freeze()
            gc.set_threshold(max(self._saved[0], GC_YOUNG), self._saved[1], self._saved[2])

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._saved is not None:
                gc.unfreeze()
                gc.set_threshold(*self._saved)


_GC = _GcTuning()


class ServerThread:
    """Runs `server.make_app()` on host:port (0 = ephemeral) in a daemon thread."""

    def __init__(self, server: FtteServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._loop = _new_event_loop()
        self._runner: Optional[web.AppRunner] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="ftte-server",
                                        daemon=True)
        self._stopped = False
        self._gc_tuned = False

    @property
    def url(self) -> str:
        """Base URL agents use."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Bind and start serving; RunError if the address cannot be bound."""
        raise_fd_limit()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            self.port = fut.result(timeout=30)
        except OSError as err:
            self._stop_loop()
            self._restore_gc()
            raise RunError(f"server: cannot listen on {self.host}:{self.port}: "
                           f"{err.strerror}") from None
        log.info("server listening on %s", self.url)
        return self

    async def _start(self) -> int:
        self._runner = web.AppRunner(self.server.make_app(), access_log=None,
                                     handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True,
                           backlog=BACKLOG)
        # Before the first request: the full collection this starts with takes ~100 ms.
        _GC.acquire()
        self._gc_tuned = True
        await site.start()
        sockets = self._runner.addresses
        return int(sockets[0][1]) if sockets else self.port

    def stop(self) -> None:
        """Stop serving and the coordinator worker; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception as err:  # shutting down anyway; keep going and say why
                log.warning("server cleanup: %s", err)
        self._stop_loop()
        self.server.close()
        self._restore_gc()

    def _restore_gc(self) -> None:
        if self._gc_tuned:  # what the run held may be collected again
            self._gc_tuned = False
            _GC.release()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
