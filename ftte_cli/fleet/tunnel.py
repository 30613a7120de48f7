"""SSH reverse port forwarding: a port on the device's loopback that leads to a port here.

Like `ssh -R 0:127.0.0.1:PORT`: `ReverseTunnel(transport, PORT).open()` asks the device's sshd
to listen on 127.0.0.1:<ephemeral> (the port it returns); each connection a device process makes
to it arrives here as a paramiko channel, which a daemon thread pipes to a fresh TCP connection
to 127.0.0.1:PORT. So agents reach a server that listens only on this machine's loopback, and
nothing listens on the network. `close()` cancels the forward and closes every open pipe.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any, Callable, Optional

import paramiko

log = logging.getLogger(__name__)

_CHUNK = 65536
_POLL_S = 0.5  # pipes re-check whether the tunnel was closed this often


class ReverseTunnel:
    """One reverse forward over an open transport; thread-safe; `close` is idempotent."""

    def __init__(self, transport: paramiko.Transport, local_port: int,
                 local_host: str = "127.0.0.1", bind_host: str = "127.0.0.1") -> None:
        self.transport = transport
        self.local_host = local_host
        self.local_port = local_port
        self.bind_host = bind_host  # the device-side address; loopback keeps it private
        self.remote_port: Optional[int] = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pipes: set[tuple[paramiko.Channel, socket.socket]] = set()

    def open(self) -> int:
        """Ask the device to listen; returns the device-side port."""
        port = self.transport.request_port_forward(self.bind_host, 0, handler=self._on_channel)
        self.remote_port = int(port)
        log.debug("reverse tunnel %s:%d -> %s:%d", self.bind_host, port, self.local_host,
                  self.local_port)
        return self.remote_port

    @property
    def connections(self) -> int:
        """Connections being piped right now."""
        with self._lock:
            return len(self._pipes)

    def close(self) -> None:
        """Cancel the forward on the device and close every open connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.remote_port is not None and self.transport.is_active():
            try:
                self.transport.cancel_port_forward(self.bind_host, self.remote_port)
            except (paramiko.SSHException, EOFError, OSError) as err:
                log.debug("cancel_port_forward: %s", err)
        with self._lock:
            pipes, self._pipes = list(self._pipes), set()
        for chan, sock in pipes:
            _close_pair(chan, sock)

    def _on_channel(self, chan: paramiko.Channel, origin: tuple[str, int],
                    server: tuple[str, int]) -> None:
        # Runs on paramiko's transport thread: hand off at once, never block here.
        threading.Thread(target=self._pipe, args=(chan,), name="ftte-tunnel", daemon=True).start()

    def _pipe(self, chan: paramiko.Channel) -> None:
        if self._closed.is_set():
            chan.close()
            return
        try:
            sock = socket.create_connection((self.local_host, self.local_port), timeout=10)
        except OSError as err:
            log.info("tunnel: local %s:%d refused: %s", self.local_host, self.local_port, err)
            chan.close()
            return
        with self._lock:
            self._pipes.add((chan, sock))
        try:
            _shovel(chan, sock, self._closed)
        finally:
            with self._lock:
                self._pipes.discard((chan, sock))
            _close_pair(chan, sock)


def _shovel(chan: paramiko.Channel, sock: socket.socket, closed: threading.Event) -> None:
    """Copy bytes both ways until both sides are done (half-closes passed on) or tunnel closed."""
    sock.settimeout(None)
    open_ends: list[Any] = [chan, sock]
    while open_ends and not closed.is_set():
        ready, _, _ = select.select(open_ends, [], [], _POLL_S)
        if chan in ready:
            data = chan.recv(_CHUNK)
            if data:
                sock.sendall(data)
            else:  # the device side finished sending: pass the EOF on
                open_ends.remove(chan)
                _quietly(lambda: sock.shutdown(socket.SHUT_WR))
        if sock in ready:
            data = sock.recv(_CHUNK)
            if data:
                chan.sendall(data)
            else:
                open_ends.remove(sock)
                _quietly(chan.shutdown_write)


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError:
        pass


def _close_pair(chan: paramiko.Channel, sock: socket.socket) -> None:
    for closer in (chan.close, sock.close):
        try:
            closer()
        except OSError:
            pass
