"""The event-stream transport: native EventSource, and the padded, rotated stream for XHR/XDR.

The server hands the connection over with the response head it made (`StreamResponse` is an
`http.seam.TakeOver`); the stream sends that head, its opening bytes and the events that came
meanwhile in one write. From then on a stream has no greenlet:
the hub's dispatch writes each event to its socket with a non-blocking send, and event-loop
watchers do the rest: finish a write the socket could not take at once, send heartbeats,
rotate a padded stream, notice the client leaving. An idle stream is a few small objects.
"""

import socket
from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Union

from gevent import get_hub

from .. import wire
from ..http import h1
from ..http.seam import TakeOver
from ..hub import Seat
from ..message import Message
from .session import Session

HEARTBEAT = wire.encode_comment("keepalive")
ROTATE = wire.encode_comment("rotate")
# XDomainRequest shows nothing, and some proxies hold data back, until about 2 KB arrived.
PADDING = wire.encode_padding(2048)
STALLED_HEARTBEATS = 2
_READ, _WRITE = 1, 2


@dataclass(frozen=True)
class StreamOptions:
    retry_ms: int
    heartbeat: float
    padded: bool = False
    rotate_bytes: int = 0  # 0: never rotate
    rotate_seconds: float = 0.0

    @cached_property
    def prelude(self) -> bytes:
        """What every stream with these options begins with: padding, retry, a comment."""
        padding = PADDING if self.padded else b""
        return padding + wire.encode_retry(self.retry_ms) + wire.encode_comment("ok")


class EventStream:
    """One event-stream connection (a hub.Subscriber): held events until it goes live, then
    written as they come.

    While the socket takes everything, each event is sent as it is dispatched; for a
    one-channel stream that is the message's shared bytes, already in chunked framing (or a
    `Run`'s: several events of the channel in one chunk, as the hub hands them). When
    the socket cannot take more, the rest waits in `out` and later events queue, framed, until
    the socket drains; more than `max_pending` of them and the hub drops the stream. Only then
    does the stream count what it holds (`out` and the queue) in the hub's budget.
    """

    __slots__ = ("channels", "max_pending", "options", "session", "seat", "opening", "sock",
                 "chunked", "fast", "queue", "out", "sent", "closed", "ending", "stalls",
                 "_reader", "_writable", "_heartbeat", "_deadline", "_expiry")

    def __init__(self, channels: List[str], max_pending: int, options: StreamOptions) -> None:
        self.channels = tuple(channels)
        self.max_pending = max_pending
        self.options = options
        self.session: Optional[Session] = None
        self.seat: Optional[Seat] = None  # given by the hub
        self.opening = b""
        self.sock: Optional[socket.socket] = None  # set when live; None again when closed
        self.chunked = True
        # One channel, replay caught up and no rotation: every live event is new to the client
        # and its bytes are the shared ones.
        self.fast = False
        # Messages until the stream is live, framed events behind `out` once it is. A list,
        # not a deque: an empty deque costs a 600-byte block per idle stream.
        self.queue: List[Union[Message, bytes]] = []
        self.out = b""  # bytes for the socket it has not taken yet
        self.sent = 0  # bytes of events and comments so far, for rotation
        self.closed = False  # out of the hub: closed, or ending
        self.ending = False
        self.stalls = 0  # heartbeats in a row at which the socket had taken nothing more
        self._reader = self._writable = self._heartbeat = self._deadline = self._expiry = None

    @property
    def held(self) -> int:
        """The bytes held for the client (`out` and the queue), as the hub's budget counts them."""
        return self.seat.held if self.seat is not None else 0

    def attached(self, seat: Seat) -> None:
        self.seat = seat

    def start(self, session: Session, backlog: List[Message]) -> None:
        """Prepare the opening bytes: padding, retry, a comment, the replay, the position."""
        self.session = session
        # An id with no data dispatches nothing but gives the client a resume point at once.
        self.opening = b"".join((self.options.prelude, session.frames(backlog),
                                 wire.encode_frame(b"", session.cursor())))

    def take_over(self, sock: socket.socket, chunked: bool, response_head: bytes) -> None:
        """Go live on a non-blocking socket: send the HTTP response head, then the events."""
        self.sock = sock
        self.chunked = chunked
        if self.closed:
            self._shut()
            return
        options = self.options
        loop = get_hub().loop
        self._reader = loop.io(sock.fileno(), _READ)
        self._reader.start(self._on_readable)
        self._heartbeat = loop.timer(options.heartbeat, options.heartbeat)
        self._heartbeat.start(self._on_heartbeat)
        if options.rotate_seconds:
            self._deadline = loop.timer(options.rotate_seconds)
            self._deadline.start(self.end, ROTATE)
        held, self.queue = self.queue, []
        self.seat.hold(0)
        body = self.opening + self.session.frames(held)
        self.opening = b""
        self.sent = len(body)
        self._send(response_head + (h1.encode_chunk(body) if chunked else body))
        if self.closed:
            return  # the client left already
        self._check_fast()
        if options.rotate_bytes and self.sent >= options.rotate_bytes:
            self.end(ROTATE)

    def expire_after(self, seconds: float, last: bytes) -> None:
        """End the stream with `last` after `seconds` (its authorization's lifetime). One timer,
        only on a stream that has a lifetime; nothing is checked per event."""
        self._expiry = get_hub().loop.timer(seconds)
        self._expiry.start(self.end, last)

    def deliver(self, message: Message) -> bool:
        if self.fast and message.shared:
            # The fan-out's hot path, hence _send's common case written out here.
            if self.out:
                frame = message.frame
                return self._enqueue(frame, len(frame))
            data = message.chunk if self.chunked else message.frame
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return True
            if sent < len(data):
                self._keep_rest(data[sent:])
            return True
        if self.sock is None or self.closed:
            # Not live yet: held, and filtered against the replay when it goes live.
            return self.closed or self._enqueue(message, len(message.frame))
        session = self.session
        if self.fast:
            # Everything up to the hub's tail reached this client: that is its position.
            (channel,) = self.channels
            session.positions[channel] = self.seat.tail(channel)
            frame = session.frames([message])
        else:
            frame = session.frames([message])
            self._check_fast()
        return self._write(frame) if frame else True

    def end(self, last: bytes = b"") -> None:
        """End the response cleanly: what is pending, `last`, then the end of the body."""
        if self.closed:
            return
        if self.sock is None:
            self.close()
            return
        self._leave_hub()
        self.ending = True
        self.fast = False
        tail = b"".join(self.queue) + last
        self.queue = []
        if self.chunked:
            tail = h1.encode_last_chunk(tail)
        if self.out:
            self.out += tail
            self.seat.hold(len(self.out))
        else:
            self._send(tail)
        if not self.out:
            self._shut()
        # Otherwise the socket gets until the next heartbeat to take the rest.

    def close(self) -> None:
        """End at once: the client is gone or too slow, or the response could not start."""
        if not self.closed:
            self._leave_hub()
        self._shut()

    def _leave_hub(self) -> None:
        self.closed = True
        if self.seat is not None:
            self.seat.leave()

    def _check_fast(self) -> None:
        options = self.options
        if len(self.channels) == 1 and not options.rotate_bytes and not options.rotate_seconds:
            (channel,) = self.channels
            # Once the hub has dispatched past what replay sent, no live event repeats it.
            self.fast = self.session.positions[channel] <= self.seat.tail(channel)

    def _enqueue(self, item: Union[Message, bytes], size: int) -> bool:
        """Hold an item of `size` bytes; False when the queue is full."""
        if len(self.queue) >= self.max_pending:
            return False
        self.queue.append(item)
        self.seat.hold(self.seat.held + size)
        return True

    def _write(self, frame: bytes) -> bool:
        """Send (or queue, behind what the socket has not taken) one or more framed events."""
        self.sent += len(frame)
        ok = True
        if self.out:
            ok = self._enqueue(frame, len(frame))
        else:
            self._send(h1.encode_chunk(frame) if self.chunked else frame)
        rotate_bytes = self.options.rotate_bytes
        if ok and rotate_bytes and self.sent >= rotate_bytes and not self.ending:
            self.end(ROTATE)
        return ok

    def _send(self, data: bytes) -> None:
        """Send what the socket takes now; keep the rest for when it can take more."""
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()  # the client is gone
            return
        if sent < len(data):
            self._keep_rest(data[sent:])

    def _keep_rest(self, rest: bytes) -> None:
        self.out = rest
        self._writable = get_hub().loop.io(self.sock.fileno(), _WRITE)
        self._writable.start(self._on_writable)
        self.seat.hold(len(rest))  # last: over the budget, this may drop the stream

    def _on_writable(self) -> None:
        held = self.seat.held  # len(out) + the queue's frames
        while True:
            data = self.out
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return
            self.stalls = 0
            held -= sent
            if sent < len(data):
                self.out = data[sent:]
                break
            if not self.queue:
                self.out = b""
                break
            frames = b"".join(self.queue)
            self.queue = []
            self.out = h1.encode_chunk(frames) if self.chunked else frames
            held += len(self.out) - len(frames)
        self.seat.hold(held)
        if not self.out:
            self._stop("_writable")
            if self.ending:
                self._shut()

    def _on_readable(self) -> None:
        # A client sends nothing after its request: readable means it closed or reset.
        try:
            data = self.sock.recv(1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()

    def _on_heartbeat(self) -> None:
        if self.ending:
            self.close()  # the socket had a heartbeat's time to take the end of the body
        elif not self.out:
            self._write(HEARTBEAT)
        else:
            # A client that reads nothing more while its channel is quiet never overflows
            # --max-pending; TCP keeps such a connection open for as long as the peer is up.
            self.stalls += 1
            if self.stalls >= STALLED_HEARTBEATS:
                self.seat.drop_slow(f"its socket took nothing for {self.stalls} heartbeats")

    def _stop(self, name: str) -> None:
        watcher = getattr(self, name)
        if watcher is not None:
            watcher.stop()
            watcher.close()
            setattr(self, name, None)

    def _shut(self) -> None:
        self.closed = True
        self.fast = False
        for name in ("_reader", "_writable", "_heartbeat", "_deadline", "_expiry"):
            self._stop(name)
        sock, self.sock = self.sock, None
        self.out = b""
        self.queue = []
        if self.seat is not None:
            self.seat.hold(0)
        if sock is not None:
            sock.close()


class StreamResponse(TakeOver):
    """The WSGI body of an event stream: it takes the connection over (see http.seam).

    The server hands the connection and the response head to `take_over`. If the response
    ends before that, WSGI's `close` lets the stream go.
    """

    __slots__ = ("stream", "taken")

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.taken = False

    def take_over(self, sock: socket.socket, chunked: bool, response_head: bytes) -> None:
        self.taken = True
        self.stream.take_over(sock, chunked, response_head)

    def close(self) -> None:
        if not self.taken:
            self.stream.close()
