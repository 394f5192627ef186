"""Accepting clients: the whole accept queue each loop turn, within a cap on open connections.

When thousands of clients reconnect at once the kernel's accept queue must not overflow (each
dropped SYN costs its client a one-second retransmission), so every turn of the event loop
accepts all that wait. Each connection is a plain non-blocking socket, served by a greenlet of
the pool; an event stream keeps it after its greenlet is gone, and closing it is what gives its
place under the cap back.

Past the cap (`--max-connections`, below the file-descriptor limit) a client is still accepted
and answered at once, with the refusal the server makes from its request head (a retry hint for
an event stream, 503 for the rest), never left without an answer. Should the descriptors run
out all the same, a spare one is given up to accept and refuse each waiting client, and the
condition is logged once every few seconds, not once per client.
"""

import errno
import logging
import os
import resource
import socket
from time import monotonic
from typing import Callable, Optional

from gevent import get_hub
from gevent.monkey import get_original

from .connection import Server, send_now

log = logging.getLogger("gateway.http")

# The socket class of the standard library, also after gevent's monkey-patching: the server
# waits on its sockets with its own watchers, and a patched socket makes two per connection.
PlainSocket = get_original("socket", "socket")
REFUSING_MAX = 64  # refused clients whose request head is awaited at once
DESCRIPTORS_RESERVED = 128  # for Redis, logs, the listener and the refusals above
WARN_EVERY = 10.0
PAUSE = 0.1  # seconds without accepting when no descriptor can be had at all
_OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_CLIENT_GONE = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR))


def default_max_connections() -> int:
    """The process's descriptor limit, less what the rest of the gateway may need."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    reserved = max(DESCRIPTORS_RESERVED, limit // 16)
    return max(1, limit - reserved)


class ClientSocket(PlainSocket):
    """An accepted client's socket: closing it gives its place under the cap back."""

    __slots__ = ("acceptor",)

    def close(self) -> None:
        if self.fileno() >= 0:
            self.acceptor.open -= 1
        super().close()


class Acceptor:
    """Accepts on a listening socket and hands each client to `server`, through `spawn`."""

    def __init__(self, listener: socket.socket, server: Server,
                 spawn: Callable[..., None], max_connections: int, backlog: int) -> None:
        # A plain socket on the listener's descriptor, for the same reason as the clients'.
        self._listener = PlainSocket(listener.family, listener.type, listener.proto,
                                     listener.detach())
        self._listener.setblocking(False)
        self._kind = (self._listener.family, self._listener.type, self._listener.proto)
        self._server = server
        self._spawn = spawn
        self._backlog = backlog
        self.max_connections = max_connections
        self.open = 0  # accepted client sockets not closed yet, event streams included
        self.refusing = 0
        self._watcher = None
        self._pause = None
        self._spare: Optional[int] = _reserve()
        self._warned = 0.0
        self._unwarned = 0

    @property
    def address(self) -> tuple:
        return self._listener.getsockname()

    def start(self) -> None:
        self._watcher = get_hub().loop.io(self._listener.fileno(), 1)
        self._watcher.start(self._accept)

    def close(self) -> None:
        """Accept no more clients: the listening socket closes; open connections stay."""
        for watcher in (self._watcher, self._pause):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._watcher = self._pause = None
        self._listener.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    def _accept(self) -> None:
        listener = self._listener
        for _ in range(self._backlog):
            try:
                plain, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _CLIENT_GONE:
                    continue
                if error.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors()
                else:
                    self._warn(f"accepting a connection failed: {error}")
                    self._pause_accepting()
                return
            if self.open >= self.max_connections:
                self._refuse(plain, address)
                continue
            sock = ClientSocket(*self._kind, plain.detach())
            sock.acceptor = self
            self.open += 1
            sock.setblocking(False)
            self._spawn(self._server.handle, sock, address)

    def _refuse(self, sock: socket.socket, address: tuple) -> None:
        self._warn(f"{self.open} connections open, the most allowed (--max-connections): "
                   "new clients are refused until some close")
        sock.setblocking(False)
        if self.refusing < REFUSING_MAX:
            self.refusing += 1
            self._spawn(self._refused, sock, address)
        else:
            send_now(sock, self._server.refusal(None))
            sock.close()

    def _refused(self, sock: socket.socket, address: tuple) -> None:
        try:
            self._server.refuse(sock, address)
        finally:
            self.refusing -= 1

    def _out_of_descriptors(self) -> None:
        self._warn(f"out of file descriptors with {self.open} connections open: clients are "
                   "refused; lower --max-connections or raise the limit (ulimit -n)")
        # The spare descriptor makes room to accept each waiting client, if only to refuse it.
        while self._spare is not None:
            os.close(self._spare)
            try:
                sock, _ = self._listener.accept()
            except OSError:
                sock = None
            self._spare = _reserve()
            if sock is None:
                break
            send_now(sock, self._server.refusal(None))
            sock.close()
        else:
            # Nothing to give up: the listener stays readable, so wait rather than spin.
            self._pause_accepting()

    def _pause_accepting(self) -> None:
        self._watcher.stop()
        if self._pause is None:
            self._pause = get_hub().loop.timer(PAUSE)
        self._pause.start(self._resume)

    def _resume(self) -> None:
        if self._watcher is not None:
            self._watcher.start(self._accept)

    def _warn(self, message: str) -> None:
        now = monotonic()
        if now - self._warned < WARN_EVERY:
            self._unwarned += 1
            return
        if self._unwarned:
            message += f" ({self._unwarned} more such since the last warning)"
        log.warning("%s", message)
        self._warned = now
        self._unwarned = 0


def _reserve() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
