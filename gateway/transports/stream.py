"""The event-stream transport: native EventSource, and the padded, rotated stream for XHR/XDR.

The response head and the opening bytes go out through the WSGI server. After that, when the
server hands over its connection (`socket`, `response_use_chunked`), the stream writes to the
socket itself, framing chunks as the server would, and lends the idle socket to the hub for
direct writes; the server writes only the closing chunk.
"""

import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

import gevent

from .. import wire
from ..message import Message
from .session import Session

HEARTBEAT = wire.encode_comment("keepalive")
ROTATE = wire.encode_comment("rotate")
# XDomainRequest shows nothing, and some proxies hold data back, until about 2 KB arrived.
PADDING = b":" + b" " * 2048 + b"\n"


@dataclass(frozen=True)
class StreamOptions:
    retry_ms: int
    heartbeat: float
    padded: bool = False
    rotate_bytes: int = 0  # 0: never rotate
    rotate_seconds: float = 0.0


def event_stream(session: Session, backlog: List[Message], options: StreamOptions,
                 connection: Optional[Any] = None) -> Iterator[bytes]:
    """The response body; ends when the subscriber is closed or, when padded, at rotation.

    `connection` is the server's handler for this request, if it exposes its socket.
    """
    subscriber = session.subscriber
    subscriber.writer = gevent.getcurrent()
    try:
        head = [PADDING] if options.padded else []
        head.append(wire.encode_retry(options.retry_ms))
        head.append(wire.encode_comment("ok"))
        head.append(session.frames(backlog))
        # An id with no data dispatches nothing but gives the client a resume point at once.
        head.append(wire.encode_id(session.cursor()) + b"\n")
        chunk = b"".join(head)
        yield chunk
        writer = _Writer(connection, session, options)
        writer.sent = len(chunk)
        while not subscriber.closed and not writer.rotation_due():
            writer.lend()
            ready = subscriber.wait(writer.wait_time())
            writer.reclaim()
            if not ready:
                yield from writer.write(HEARTBEAT)
                continue
            items = subscriber.drain()
            if items and isinstance(items[0], bytes):
                # The rest of a partial direct send: already framed for this socket.
                writer.send_raw(items.pop(0))
            chunk = session.frames(items)
            if chunk:
                yield from writer.write(chunk)
        if writer.rotating and not subscriber.closed:
            yield from writer.write(ROTATE)
    finally:
        subscriber.sock = None
        subscriber.writer = None
        session.close()


class _Writer:
    """Writes one stream's bytes after its head: to the socket itself when it can."""

    __slots__ = ("sock", "chunked", "session", "subscriber", "direct", "rotating",
                 "rotate_bytes", "deadline", "heartbeat", "sent")

    def __init__(self, connection: Optional[Any], session: Session,
                 options: StreamOptions) -> None:
        self.sock = getattr(connection, "socket", None)
        self.chunked = bool(getattr(connection, "response_use_chunked", False))
        self.session = session
        self.subscriber = session.subscriber
        self.subscriber.chunked = self.chunked
        self.rotating = bool(options.rotate_bytes or options.rotate_seconds)
        self.rotate_bytes = options.rotate_bytes
        self.deadline = time.monotonic() + options.rotate_seconds if options.rotate_seconds else None
        self.heartbeat = options.heartbeat
        # Direct writes carry the shared one-channel bytes and are not counted for rotation.
        self.direct = self.sock is not None and len(session.channels) == 1 and not self.rotating
        self.sent = 0

    def lend(self) -> None:
        subscriber = self.subscriber
        if not self.direct or subscriber.queue or subscriber.closed:
            return
        # Until the hub has dispatched up to the position replay reached, live events may
        # still repeat replayed ones and must go through the session's filter.
        (channel,) = self.session.channels
        if self.session.positions[channel] <= self.session.hub.tail(channel):
            subscriber.sock = self.sock

    def reclaim(self) -> None:
        self.subscriber.sock = None

    def write(self, data: bytes) -> Iterator[bytes]:
        self.sent += len(data)
        if self.sock is None:
            yield data
        else:
            self.sock.sendall(wire.http_chunk(data) if self.chunked else data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def rotation_due(self) -> bool:
        if not self.rotating:
            return False
        if self.rotate_bytes and self.sent >= self.rotate_bytes:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def wait_time(self) -> float:
        if self.deadline is None:
            return self.heartbeat
        return max(0.0, min(self.heartbeat, self.deadline - time.monotonic()))
