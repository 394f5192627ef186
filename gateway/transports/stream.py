"""The event-stream transport: native EventSource, and the padded, rotated stream for XHR/XDR."""

import time
from dataclasses import dataclass
from typing import Iterator, List

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


def event_stream(session: Session, backlog: List[Message], options: StreamOptions) -> Iterator[bytes]:
    """The response body; ends when the subscriber is closed or, when padded, at rotation."""
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
        sent = len(chunk)
        deadline = time.monotonic() + options.rotate_seconds if options.rotate_seconds else None
        while not subscriber.closed:
            if not subscriber.wait(_until(deadline, options.heartbeat)):
                chunk = HEARTBEAT
            else:
                chunk = session.frames(subscriber.drain())
            if chunk:
                yield chunk
                sent += len(chunk)
            if (options.rotate_bytes and sent >= options.rotate_bytes) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                yield ROTATE
                break
    finally:
        subscriber.writer = None
        session.close()


def _until(deadline, heartbeat: float) -> float:
    if deadline is None:
        return heartbeat
    return max(0.0, min(heartbeat, deadline - time.monotonic()))
