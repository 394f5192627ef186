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
from typing import Callable, Dict, Optional, Tuple

from gevent import get_hub
from gevent.monkey import get_original

from . import h1
from .connection import Server, send_now

log = logging.getLogger("gateway.http")

# The socket class of the standard library, also after gevent's monkey-patching: the server
# waits on its sockets with its own watchers, and a patched socket makes two per connection.
PlainSocket = get_original("socket", "socket")
# gevent's os.close defers closing anything but a regular file to a later loop turn; the spare
# descriptor must be free at once, for the accept that follows.
close_now = get_original("os", "close")
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
        self._warned: Dict[str, Tuple[float, int]] = {}

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
            close_now(self._spare)
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
                    self._warn("accept", f"accepting a connection failed: {error}")
                    self._pause_accepting()
                return
            if self.open >= self.max_connections:
                self._warn("cap", f"{self.open} connections open, the most allowed "
                           "(--max-connections): new clients are refused until some close")
                self._refuse(plain, address)
                continue
            sock = ClientSocket(*self._kind, plain.detach())
            sock.acceptor = self
            self.open += 1
            sock.setblocking(False)
            self._spawn(self._server.handle, sock, address)

    def _refuse(self, sock: socket.socket, address: tuple) -> None:
        if self.refusing < REFUSING_MAX:
            sock.setblocking(False)
            self.refusing += 1
            self._spawn(self._refused, sock, address)
        else:
            _refuse_now(sock, self._server.refusal)

    def _refused(self, sock: socket.socket, address: tuple) -> None:
        try:
            self._server.refuse(sock, address)
        finally:
            self.refusing -= 1
            if self._spare is None and self._watcher is not None:
                # Out of descriptors, this one was the spare's: take it back, accept again.
                self._spare = _reserve()
                self._resume()

    def _out_of_descriptors(self) -> None:
        self._warn("descriptors", f"out of file descriptors with {self.open} connections open: clients are "
                   "refused; lower --max-connections or raise the limit (ulimit -n)")
        if self._spare is None:
            self._spare = _reserve()
        # The spare descriptor makes room to accept each waiting client, if only to refuse it.
        while self._spare is not None:
            close_now(self._spare)
            self._spare = None
            try:
                sock, address = self._listener.accept()
            except OSError:
                sock = None
            else:
                self._refuse(sock, address)
            self._spare = _reserve()
            if sock is None:
                return
        # Nothing to give up: the listener stays readable, so wait rather than spin.
        self._pause_accepting()

    def _pause_accepting(self) -> None:
        self._watcher.stop()
        if self._pause is None:
            self._pause = get_hub().loop.timer(PAUSE)
        self._pause.start(self._resume)

    def _resume(self) -> None:
        if self._pause is not None:
            self._pause.stop()
        if self._watcher is not None and not self._watcher.active:
            self._watcher.start(self._accept)

    def _warn(self, kind: str, message: str) -> None:
        """Log `message` at most once every WARN_EVERY seconds for each kind."""
        now = monotonic()
        last, unsaid = self._warned.get(kind, (-WARN_EVERY, 0))
        if now - last < WARN_EVERY:
            self._warned[kind] = (last, unsaid + 1)
            return
        if unsaid:
            message += f" ({unsaid} more such since the last warning)"
        log.warning("%s", message)
        self._warned[kind] = (now, 0)


def _refuse_now(sock: socket.socket, refusal: Callable[[Optional[h1.Request]], bytes]) -> None:
    """Refuse without waiting: the request head if it is there already, the refusal it calls
    for, close. Reading first also spares the client the reset that closing a socket with
    unread bytes causes, which could make its kernel drop the answer."""
    sock.setblocking(False)
    request = None
    try:
        data = h1.skip_empty_lines(sock.recv(65536))
        end = h1.head_end(data)
        if end >= 0:
            request = h1.parse_request_head(data[:end])
    except (OSError, h1.HttpError):
        pass
    send_now(sock, refusal(request))
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _reserve() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
