"""Long-polling, as JSON or JSONP: one response per batch of events, the cursor to send next.

A poll answers at once when events after the client's cursor exist (at most `batch` of them),
else holds until one arrives or the hold time ends. The cursor in the answer covers exactly the
events in it, so the next poll resumes after them: nothing lost, nothing twice.

While the broker is down, a poll is held a short while and answered with no events and the
client's own cursor (`unavailable`): never an error status, and the client keeps its place.
"""

import json
import re
import time
from typing import Any, Dict, List, Optional, Sequence

import gevent
import gevent.event

from ..hub import Seat
from ..message import Message
from .session import Session

# A plain identifier only: a dotted path such as window.opener.document.body.click would let
# any page make the gateway's response call a method of another window of this origin.
CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}")


class PollQueue:
    """A long-poll's subscriber (hub.Subscriber): a bounded queue of the messages dispatched
    to it, which its request waits on (`wait`) and takes (`drain`). What it queues, counted by
    the length of the messages' frames, is on the hub's budget.
    """

    __slots__ = ("channels", "queue", "max_pending", "closed", "seat", "_wakeup")

    def __init__(self, channels: Sequence[str], max_pending: int) -> None:
        self.channels = tuple(channels)
        # A list, not a deque: an empty deque costs a 600-byte block per idle subscriber.
        self.queue: List[Message] = []
        self.max_pending = max_pending
        self.closed = False
        self.seat: Optional[Seat] = None  # given by the hub
        self._wakeup: Optional[gevent.event.Event] = None  # made by the first wait

    @property
    def held(self) -> int:
        """The bytes queued, as the hub's budget counts them."""
        return self.seat.held if self.seat is not None else 0

    def attached(self, seat: Seat) -> None:
        self.seat = seat

    def deliver(self, message: Message) -> bool:
        if self.closed:
            return True  # dropped while this message was being dispatched
        if len(self.queue) >= self.max_pending:
            return False
        self.queue.append(message)
        self.seat.hold(self.seat.held + len(message.frame))
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def wait(self, timeout: Optional[float]) -> bool:
        """Block until there is something to take or the queue is closed."""
        if self.queue or self.closed:
            return True
        if self._wakeup is None:
            self._wakeup = gevent.event.Event()
        return self._wakeup.wait(timeout)

    def drain(self) -> List[Message]:
        if self._wakeup is not None:
            self._wakeup.clear()
        items, self.queue = self.queue, []
        self.seat.hold(0)
        return items

    def close(self) -> None:
        """Leave the hub; what is still queued goes (the next poll reads it from history)."""
        if self.closed:
            return
        self.closed = True
        self.queue = []
        seat = self.seat
        if seat is not None:
            seat.hold(0)
            seat.leave()
        if self._wakeup is not None:
            self._wakeup.set()

    def end(self) -> None:
        """End cleanly (the server is stopping): a queue has nothing more to finish."""
        self.close()


def poll(session: Session, backlog: List[Message], hold: float, batch: int,
         retry_ms: int) -> Dict[str, Any]:
    """Wait for events (at most `hold` seconds) and return the response body."""
    subscriber = session.subscriber
    deadline = time.monotonic() + hold
    try:
        events = _take(session, backlog, batch)
        while not events and not subscriber.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not subscriber.wait(remaining):
                break
            events = _take(session, subscriber.drain(), batch)
        return {"events": events, "lastEventId": session.cursor(), "retry": retry_ms}
    finally:
        session.close()


def unavailable(cursor: Optional[str], hold: float, retry_ms: int) -> Dict[str, Any]:
    """The answer while the broker is down, after a hold of `retry_ms` (at most `hold` seconds).

    A client polls again as soon as it has an answer: the hold keeps it from polling in a tight
    loop. Its cursor comes back unchanged ("" if it sent none), so it loses nothing.
    """
    gevent.sleep(min(hold, retry_ms / 1000))
    return {"events": [], "lastEventId": cursor or "", "retry": retry_ms}


def _take(session: Session, messages: List[Message], batch: int) -> List[Dict[str, Any]]:
    events = []
    for message in messages:
        if len(events) >= batch:
            break  # the cursor stops before the rest: the next poll gets them from history
        if session.accept(message):
            item = message.to_dict()
            item["id"] = session.cursor(message.source_id)
            events.append(item)
    return events


def encode_json(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_jsonp(callback: str, body: Dict[str, Any]) -> bytes:
    """`callback` must match CALLBACK. ASCII-only JSON: U+2028/2029 break old JS parsers."""
    if not CALLBACK.fullmatch(callback):
        raise ValueError("invalid callback name")
    # The leading comment keeps the response from starting with attacker-chosen bytes.
    return f"/**/{callback}({json.dumps(body, separators=(',', ':'))});".encode("ascii")
