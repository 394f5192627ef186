"""One client connection: request heads read within deadlines, each request run, kept alive.

A connection runs in a greenlet of the server's pool. Its socket is a plain non-blocking one:
a read or write that can be done at once is just a system call, and only one that must wait
takes an event-loop watcher (`gevent.socket.wait_read` / `wait_write`), so the usual event
stream request, whose head is in the socket when it is accepted, costs no watcher at all.

Deadlines bound what a client can hold: a request head must arrive within the header timeout
(from the connection's start, or from the first byte after an idle keep-alive wait), a chunked
body likewise, and a kept-alive connection may sit idle for the idle timeout. A long-poll client
waits between requests as often as it is answered, so that wait costs no timer of its own: the
connection reuses one read watcher for every wait, and one timer per process (`Server._sweep`)
closes the connections idle past their deadline, a fraction of the timeout late at most.

Connections whose next request arrives are served in the order it arrived (`Server.arrived`).
libev runs the watchers that one turn of the loop found ready last-ready first, so in a
saturated process, where a turn finds hundreds, the first client to send would wait the
longest: twice the turn's time at worst, where serving them in order makes it one turn for all.
A turn serves at most ADMIT_BATCH of them, so that the I/O ready meanwhile (a publish, the
replies and live events from Redis) waits a few milliseconds, not the length of a thousand
requests.

A refused request gets its JSON error, then a lingering close (RFC 9112 section 9.6): the
gateway stops sending and reads what the client still sends for a moment, so the client's
kernel does not discard the answer on the reset that closing an unread socket would cause.
"""

import logging
import socket
from collections import deque
from dataclasses import dataclass
from time import monotonic
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import gevent.event
from gevent.hub import Waiter, get_hub
from gevent.socket import wait_read, wait_write

from . import h1
from .seam import DIRECT, HELD, Direct, Sent
from .wsgi import Body, close_result, direct_request, environ, log_access, respond, send_result

log = logging.getLogger("gateway.http")

READ_SIZE = 4096
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
REFUSAL_WAIT = 1.0  # seconds a refused client gets to send the head that says what it wants
# Connections served a turn at most, of those whose next request arrived: the rest wait for the
# next turn, after the I/O that is ready meanwhile (a publish, Redis' replies).
ADMIT_BATCH = 64
SWEEP_EVERY = 1.0  # seconds between sweeps of idle connections, at most (a quarter of the timeout)


@dataclass(frozen=True)
class Settings:
    """The HTTP layer's limits (see config.py for what each option means)."""

    max_head: int
    header_timeout: float
    idle_timeout: float
    max_body: int  # the largest chunked body read for the application


class Server:
    """What a process's connections share: the application, the settings, the Date cache,
    the idle connections to close when the process stops, the connections the event loop
    holds."""

    def __init__(self, app: Callable, settings: Settings, address: tuple,
                 refusal: Callable[[Optional[h1.Request]], bytes],
                 spawn: Callable[..., None]) -> None:
        """`spawn(func, *args)` runs a job in a greenlet (a connection the event loop gives
        back is served on)."""
        self.app = app
        self.settings = settings
        self.spawn = spawn
        self.server_name = str(address[0])
        self.server_port = str(address[1])
        self.date = h1.HttpDate()
        # The whole answer to a client over the connection cap, given its head (or None).
        self.refusal = refusal
        self.stopping = False
        self.idle: Set["Connection"] = set()  # waiting for the first bytes of a request head
        # Kept alive between requests: each one's deadline and what to call with False when
        # it passes, in the order they began waiting, so in the order of their deadlines.
        self.resting: Dict["Connection", Tuple[float, Callable[[bool], Any]]] = {}
        # Held by the event loop, with no greenlet (see seam.Direct), and what is set once
        # the last of them is gone after `stop`.
        self.looped: Set["Connection"] = set()
        self._unlooped: Optional[gevent.event.Event] = None
        self.hub = get_hub()
        self._sweeper = None  # the loop timer of `_sweep`, from the first wait
        # The connections whose next request arrived in the loop's last turn, as it ran their
        # watchers (last-ready first); those of earlier turns still to serve, in arrival
        # order; and the timer due at once that serves them in its next.
        self._arrivals: List[Tuple[Callable[..., Any], Any]] = []
        self._admitting: Deque[Tuple[Callable[..., Any], Any]] = deque()
        self._admitter = self.hub.loop.timer(0.0, ref=False)

    def handle(self, sock: socket.socket, address: tuple) -> None:
        """Serve one accepted connection until it closes or is handed over (a pool job)."""
        Connection(self, sock, address).serve()

    def refuse(self, sock: socket.socket, address: tuple) -> None:
        """Answer a connection over the cap with `refusal`, then close it (a pool job)."""
        Connection(self, sock, address).refuse()

    def stop(self) -> None:
        """Serve no further request: idle connections close now, busy ones after their
        response."""
        self.stopping = True
        for connection in [*self.idle, *self.resting]:
            connection.wake()

    def join_looped(self, timeout: float) -> bool:
        """After `stop`: wait until the connections the event loop holds are gone (their held
        responses sent); False if some remain after `timeout`."""
        if not self.looped:
            return True
        self._unlooped = gevent.event.Event()
        return self._unlooped.wait(timeout)

    def unloop(self, connection: "Connection") -> None:
        """The event loop holds `connection` no more."""
        self.looped.discard(connection)
        if self._unlooped is not None and not self.looped:
            self._unlooped.set()

    def rest(self, connection: "Connection", expired: Callable[[bool], Any]) -> None:
        """`connection` waits for its next request; a sweep calls `expired(False)` once it is
        idle past the idle timeout (the connection takes itself out of `resting` when its
        wait ends otherwise)."""
        if self._sweeper is None:
            every = min(SWEEP_EVERY, self.settings.idle_timeout / 4)
            self._sweeper = self.hub.loop.timer(every, every, ref=False)
            self._sweeper.start(self._sweep)
        self.resting[connection] = (monotonic() + self.settings.idle_timeout, expired)

    def arrived(self, resume: Callable[[Any], Any], value: Any) -> None:
        """In the hub, from a connection's read watcher (stopped): its client has sent more.
        `resume(value)` runs in a later turn of the loop, in the order the watchers became
        ready: the next one, unless ADMIT_BATCH arrived before it. (A timer due at once runs
        before the watchers of its turn, so each turn serves those of the last ones.)"""
        self._arrivals.append((resume, value))
        if not self._admitter.active:
            self._admitter.start(self._admit)

    def _admit(self) -> None:
        queue = self._admitting
        if self._arrivals:
            queue.extend(reversed(self._arrivals))
            self._arrivals = []
        for _ in range(min(ADMIT_BATCH, len(queue))):
            resume, value = queue.popleft()
            try:
                resume(value)
            except Exception:  # the others must still be served
                log.exception("resuming a connection failed")
        if queue and not self._admitter.active:
            self._admitter.start(self._admit)

    def _sweep(self) -> None:
        # In the hub. Each switch runs the connection's greenlet until it closes the socket.
        resting = self.resting
        now = monotonic()
        expired = []
        for connection, (deadline, wake) in resting.items():
            if deadline > now:
                break
            expired.append((connection, wake))
        for connection, _ in expired:
            del resting[connection]
        for _, wake in expired:
            wake(False)


class Connection:
    __slots__ = ("server", "sock", "address", "buffer", "taken", "watcher", "pending",
                 "held_bytes", "corked", "readable", "_direct")

    def __init__(self, server: Server, sock: socket.socket, address: tuple) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.buffer = b""  # bytes received and not yet used: the start of the next request
        self.taken = False  # the socket belongs to a TakeOver response now
        self.watcher = None  # the read watcher of its waits between requests, once it waits
        self.pending: list = []  # (response, result) held back, in request order (wsgi.py)
        self.held_bytes = 0  # the request bodies behind them
        self.corked: Optional[list] = None  # what send_all collects while answers are flushed
        self.readable = False  # a Direct's watch saw the client's next bytes (still unread)
        self._direct: Optional[ConnectionDirect] = None

    def direct(self) -> "ConnectionDirect":
        """The connection's seam.Direct (one for all its requests: one is served at a time)."""
        if self._direct is None:
            self._direct = ConnectionDirect(self)
        return self._direct

    def serve(self, owed: bytes = b"", between: bool = False) -> None:
        """Serve requests until the connection closes or is handed over: after sending `owed`,
        and, `between` requests, after waiting for the next one."""
        server = self.server
        settings = server.settings
        try:
            if owed:
                self.send_all(owed)
            while True:
                if between:
                    # Nothing reads the socket between a Direct's watch and here: what it saw
                    # is still there to read, so the wait would end at once.
                    if server.stopping or (not self.buffer and not self.readable
                                           and not self._wait_idle()):
                        return
                request = self.read_head(monotonic() + settings.header_timeout)
                self.readable = False
                if request is None or not respond(self, request) or server.stopping:
                    return
                between = True
        except h1.HttpError as error:
            self.fail(error)
        except OSError as error:  # the client left or timed out; nothing to answer
            log.debug("connection from %s ended: %s", self.address[0], error)
        finally:
            for _, result in self.pending:  # the client left: their work stands, unanswered
                close_result(result)
            self.pending = []
            if self not in server.looped:  # else the event loop holds it, with no greenlet
                self.end()

    def resume(self, owed: bytes) -> None:
        """Serve the connection again once the event loop gives it back (a pool job)."""
        self.serve(owed, between=True)

    def end(self) -> None:
        """Let go of the connection (a handed-over socket is its new owner's to close)."""
        self._direct = None
        if self.watcher is not None:
            self.watcher.close()
        if not self.taken:
            self.sock.close()

    def refuse(self) -> None:
        try:
            wait = min(REFUSAL_WAIT, self.server.settings.header_timeout)
            try:
                request = self.read_head(monotonic() + wait)
            except (h1.HttpError, OSError):
                request = None
            send_now(self.sock, self.server.refusal(request))
            if request is None or request.has_body or self.buffer:
                self.linger()  # else nothing more is due from the client: closing is safe
        finally:
            self.sock.close()

    def read_head(self, deadline: float) -> Optional[h1.Request]:
        """The next request's head; None if the client closed (or went quiet) before sending
        any of it. Raises HttpError for a head to refuse, 408 for one that came too slowly."""
        limit = self.server.settings.max_head
        data = self.buffer
        if data[:1] in (b"\r", b"\n"):
            data = h1.skip_empty_lines(data)
        end = h1.head_end(data)
        if end < 0:
            buffer = bytearray(data)  # grows in place however the head is split
            while True:
                if len(buffer) > limit:
                    raise h1.head_too_large(bytes(buffer), limit)
                searched = len(buffer)
                try:
                    received = self.recv(deadline, idle=not buffer)
                except socket.timeout:
                    if not buffer:
                        return None
                    raise h1.HttpError(408, "request timeout", "the request head did not "
                                       "arrive in time") from None
                if not received:
                    return None
                buffer += received
                if buffer[:1] in (b"\r", b"\n"):
                    buffer = bytearray(h1.skip_empty_lines(bytes(buffer)))
                    searched = 0
                end = h1.head_end(buffer, searched)
                if end >= 0:
                    data = bytes(buffer)
                    break
        if end > limit:
            raise h1.head_too_large(data, limit)
        self.buffer = data[end:]
        return h1.parse_request_head(data[:end])

    def recv(self, deadline: float, idle: bool = False) -> bytes:
        """Bytes from the client (b"" once it closed); socket.timeout after `deadline`.
        `idle`: nothing of a request is in hand yet, so stopping the server may close it."""
        sock = self.sock
        while True:
            try:
                return sock.recv(READ_SIZE)
            except BlockingIOError:
                pass
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            if idle:
                if self.server.stopping:
                    return b""
                self.server.idle.add(self)
            try:
                wait_read(sock.fileno(), remaining)
            finally:
                if idle:
                    self.server.idle.discard(self)

    def flush(self) -> bool:
        """Send the held-back answers (the last one is usually the request just run), in
        order and in one send; False if the connection must close after them."""
        pending, self.pending = self.pending, []
        self.held_bytes = 0
        keep = True
        self.corked = []
        try:
            for response, result in pending:
                if keep:
                    keep = send_result(response, result)
                else:
                    close_result(result)
        finally:
            data, self.corked = b"".join(self.corked), None
        if data:
            self.send_all(data)
        return keep

    def send_all(self, data: bytes) -> None:
        """Send everything, waiting while the socket is full; socket.timeout if it takes
        nothing for the idle timeout."""
        if self.corked is not None:
            self.corked.append(data)
            return
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        timeout = self.server.settings.idle_timeout
        while view:
            wait_write(sock.fileno(), timeout)
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                pass

    def fail(self, error: h1.HttpError) -> None:
        """Answer a refused request with its JSON error and close the connection."""
        log.debug("refused a request from %s: %s", self.address[0], error)
        try:
            if self.pending and not self.flush():  # the answers before it go first
                return
        except OSError:
            return
        send_now(self.sock, h1.error_response(error, self.server.date()))
        self.linger()

    def linger(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_BYTES:
                data = self.recv(deadline)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass

    def wake(self) -> None:
        # Its greenlet waits to read: a shut-down socket reads as closed.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _wait_idle(self) -> bool:
        """Wait for the next request of a kept-alive connection; False if none comes within
        the idle timeout."""
        server = self.server
        watcher = self.watcher
        if watcher is None:
            watcher = self.watcher = server.hub.loop.io(self.sock.fileno(), 1)
        waiter = Waiter(server.hub)
        server.rest(self, waiter.switch)
        watcher.start(self._arrived, waiter)
        try:
            readable = waiter.get()
        finally:
            watcher.stop()
            server.resting.pop(self, None)
        return readable and not server.stopping

    def _arrived(self, waiter: Waiter) -> None:
        self.watcher.stop()
        self.server.arrived(waiter.switch, True)


class ConnectionDirect(Direct):
    """A `seam.Direct` on one connection (wsgi.respond makes it for the requests it may serve).

    While a held request waits for its answer, a read watcher notes whether the client sends
    anything (its next request, early, or the end of the connection), for the greenlet that
    serves the connection on after the answer. Once answered, the connection waits in the
    event loop for its next request, as a greenlet's would (`Server.rest`, `Server.arrived`);
    `serve` gets it if it is a whole GET alone, else a greenlet does.
    """

    __slots__ = ("conn", "_serve", "_request")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._serve: Optional[Callable[[dict], Any]] = None
        self._request: Optional[h1.Request] = None  # the held one, for the access log

    def usable(self) -> bool:
        return not self.conn.server.stopping

    def date(self) -> str:
        return self.conn.server.date()

    def send(self, response: bytes) -> int:
        try:
            return self.conn.sock.send(response)
        except OSError:
            return 0

    def follow(self, serve: Callable[[dict], Any]) -> None:
        self._serve = serve

    def held(self, request: h1.Request) -> None:
        """`request`'s answer is HELD: the event loop has the connection until it is sent."""
        conn = self.conn
        self._request = request
        conn.server.looped.add(conn)
        if conn.watcher is None:
            conn.watcher = conn.server.hub.loop.io(conn.sock.fileno(), 1)
        conn.watcher.start(self._seen)

    def _seen(self) -> None:
        self.conn.watcher.stop()
        self.conn.readable = True

    def answered(self, sent: Sent) -> None:
        conn = self.conn
        conn.watcher.stop()
        log_access(conn.address, self._request, sent.status, sent.length)
        if sent.rest or conn.readable or self._serve is None:
            self._give_back(sent.rest)
        elif conn.server.stopping:
            self._close()
        else:
            self._rest()

    def _rest(self) -> None:
        conn = self.conn
        conn.server.rest(conn, self._idle_too_long)
        conn.watcher.start(self._arrived)

    def _arrived(self) -> None:
        conn = self.conn
        conn.watcher.stop()
        conn.server.resting.pop(conn, None)
        conn.server.arrived(self._next, None)

    def _idle_too_long(self, _: bool) -> None:
        self.conn.watcher.stop()
        self._close()

    def _next(self, _: None) -> None:
        conn = self.conn
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:  # not readable after all: wait on
            self._rest()
            return
        except OSError:
            data = b""
        if not data or conn.server.stopping:
            self._close()
            return
        conn.buffer += data
        request = self._whole_request(conn.buffer)
        if request is not None:
            env = environ(conn, request, Body(conn, 0))
            env[DIRECT] = self
            try:
                result = self._serve(env)
            except Exception:
                log.exception("serving %s from the event loop failed", request.path[:200])
                result = None
            if result is HELD:
                self.held(request)
                conn.buffer = b""
                return
            if type(result) is Sent:
                self._request = request
                conn.buffer = b""
                self.answered(result)
                return
        self._give_back(b"")

    def _whole_request(self, data: bytes) -> Optional[h1.Request]:
        """The request `data` holds, if it is a whole GET head, alone, that keeps the
        connection open and is within the head limit; else None (a greenlet serves it)."""
        if data[:1] in (b"\r", b"\n") or len(data) > self.conn.server.settings.max_head:
            return None
        if h1.head_end(data) != len(data):
            return None
        try:
            request = h1.parse_request_head(data)
        except h1.HttpError:
            return None
        return request if direct_request(request) else None

    def _give_back(self, owed: bytes) -> None:
        self.conn.server.unloop(self.conn)
        self.conn.server.spawn(self.conn.resume, owed)

    def _close(self) -> None:
        self.conn.server.unloop(self.conn)
        self.conn.end()


def send_now(sock: socket.socket, data: bytes) -> None:
    """Send a short answer without waiting: the socket's buffer takes it, or the client is gone."""
    try:
        sock.send(data)
    except OSError:
        pass
