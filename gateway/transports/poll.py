"""Long-polling, as JSON or JSONP: one response per batch of events, the cursor to send next.

A poll answers at once when events after the client's cursor exist (at most `batch` of them),
else holds until one arrives or the hold time ends. The cursor in the answer covers exactly the
events in it, so the next poll resumes after them: nothing lost, nothing twice.

A held poll is woken through the process' `wakeups.Wakeups` (the hub's, given with its seat),
never through gevent's callback queue: in a saturated process a wake-up queued there waits
behind thousands of others, and a held poll would time out with its events still queued.

An event's JSON is encoded once for every one-channel poll that answers with it (`Answer`).

A poll whose request came with a `seam.Direct` is held in the event loop, with no greenlet
(`DirectAnswer`): its wake-up, or the end of its hold, sends there and then the response its
greenlet would have sent, with the events it would have taken (the response made once for every
poll answered with the same events in the same variant), and the poll leaves the hub.

While the broker is down, a poll is held a short while and answered with no events and the
client's own cursor (`unavailable`): never an error status, and the client keeps its place.
"""

import json
import re
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import gevent
from gevent.hub import Waiter, get_hub

from ..http.seam import HELD, Direct, Held, Sent
from ..hub import Seat
from ..ids import format_cursor
from ..message import Message
from .session import Session

# A plain identifier only: a dotted path such as window.opener.document.body.click would let
# any page make the gateway's response call a method of another window of this origin.
CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}")
# What JSON writes as it is, between quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_.:=,-]*")


class PollQueue:
    """A long-poll's subscriber (hub.Subscriber): a bounded queue of the messages dispatched
    to it, which its request waits on (`wait`) and takes (`drain`), or which answers it from
    the event loop (`direct`). What it queues, counted by the length of the messages' frames,
    is on the hub's budget.
    """

    fast = False  # takes events one by one (the hub's `Subscriber.fast`)
    __slots__ = ("channels", "queue", "max_pending", "closed", "seat", "direct", "_waiter",
                 "_due")

    def __init__(self, channels: Sequence[str], max_pending: int) -> None:
        self.channels = tuple(channels)
        # A list, not a deque: an empty deque costs a 600-byte block per idle subscriber.
        self.queue: List[Message] = []
        self.max_pending = max_pending
        self.closed = False
        self.seat: Optional[Seat] = None  # given by the hub
        self.direct: Optional[DirectAnswer] = None  # while held in the event loop
        self._waiter: Optional[Waiter] = None  # while its request waits
        self._due = False  # a wake-up is scheduled and has not run yet

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
        if self._waiter is not None or self.direct is not None:
            self._schedule_wake()
        return True

    def wait(self, timeout: float) -> bool:
        """Block until there is something to take or the queue is closed (True), or until
        `timeout` seconds have passed (False)."""
        if self.queue or self.closed:
            return True
        hub = get_hub()
        waiter = self._waiter = Waiter(hub)
        timer = hub.loop.timer(max(timeout, 0.0))
        # From the time now, not the loop's time of this turn: else it ends early.
        timer.start(waiter.switch, False, update=True)
        try:
            return waiter.get()
        finally:
            timer.close()
            self._waiter = None

    def wake(self) -> None:
        """Resume the waiting request, or answer it from here (the wake-ups call it, in the
        hub)."""
        self._due = False
        if self.direct is not None:
            self.direct.woken(self)
        elif self._waiter is not None:
            self._waiter.switch(True)

    def _schedule_wake(self) -> None:
        if not self._due:
            self._due = True
            self.seat.wakeups.call_soon(self.wake)

    def drain(self) -> List[Message]:
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
        if self._waiter is not None or self.direct is not None:
            self._schedule_wake()

    def end(self) -> None:
        """End cleanly (the server is stopping): a queue has nothing more to finish."""
        self.close()


class DirectAnswer:
    """A poll answered from the event loop, through its request's `seam.Direct`: with the
    whole response `respond(taken, cursor, date)` gives for the events taken (made once for
    all the polls of the same variant), then `answered()` (once it went out)."""

    __slots__ = ("direct", "respond", "answered", "session", "batch", "_taken", "_until",
                 "_timer")

    def __init__(self, direct: Direct,
                 respond: Callable[[List["Taken"], str, str], Tuple[str, int, bytes]],
                 answered: Callable[[], None]) -> None:
        self.direct = direct
        self.respond = respond
        self.answered = answered
        self.session: Optional[Session] = None  # while held
        self.batch = 0
        self._taken: List[Taken] = []  # of the backlog, while `until` is awaited
        self._until: Optional[Callable[[], bool]] = None
        self._timer = None

    def start(self, session: Session, backlog: List[Message], hold: float, batch: int,
              until: Optional[Callable[[], bool]] = None) -> Union[Sent, Held]:
        """Answer the poll of `session`, open with its `backlog`, as `collect` would: at once
        (the body says what went) if it takes any of the backlog, else once events come, the
        queue closes or `hold` seconds pass, from the event loop (`HELD`). With `until`, an
        answer from the backlog waits for `until()` (checked as events come) or the hold's end:
        the backlog lacks events that are on their way."""
        events = _take(session, backlog, batch)
        if events and until is None:
            session.close()
            return self._send(session, events)
        self.session, self.batch = session, batch
        if events:
            self._taken, self._until = events, until
        session.subscriber.direct = self
        timer = self._timer = get_hub().loop.timer(max(hold, 0.0))
        timer.start(self._expired, update=True)  # as `PollQueue.wait`'s timer
        return HELD

    def woken(self, queue: PollQueue) -> None:
        """In the hub: `queue`, held, has events (answered if the session takes any) or was
        closed (answered with none)."""
        if queue.closed:
            self._finish(self._taken)
            return
        if self._until is not None:
            if not self._until():
                return  # what it waits for is still on its way: the events stay queued
            self._until = None
        taken = self._taken
        events = taken + _take(self.session, queue.drain(), self.batch - len(taken))
        if events:
            self._finish(events)

    def _expired(self) -> None:
        self._finish(self._taken)

    def _finish(self, events: List["Taken"]) -> None:
        session = self.session
        session.subscriber.direct = None
        self._timer.close()
        session.close()
        self.direct.answered(self._send(session, events))

    def _send(self, session: Session, events: List["Taken"]) -> Sent:
        direct = self.direct
        status, length, response = self.respond(events, session.cursor(), direct.date())
        sent = Sent(status, length, response[direct.send(response):])
        self.answered()
        return sent


# An event taken by a poll, and the cursor after it; None for a one-channel poll's event
# that has an id, whose cursor is the event's own (as its frame's `id:` line).
Taken = Tuple[Message, Optional[str]]


class Answer:
    """A poll's answer: the events taken, and the cursor to send next.

    `json()` and `jsonp()` give exactly the bytes of `encode_json(to_dict())` and
    `encode_jsonp(callback, to_dict())`, from each event's encoding made once for all polls.
    """

    __slots__ = ("events", "cursor", "retry")

    def __init__(self, events: List[Taken], cursor: str, retry_ms: int) -> None:
        self.events = events
        self.cursor = cursor
        self.retry = retry_ms

    def to_dict(self) -> Dict[str, Any]:
        return {"events": [_item(message, cursor) for message, cursor in self.events],
                "lastEventId": self.cursor, "retry": self.retry}

    def json(self) -> bytes:
        return self._encode(False)

    def jsonp(self, callback: str) -> bytes:
        """`callback` must match CALLBACK."""
        return _call(callback, self._encode(True))

    def _encode(self, ascii: bool) -> bytes:
        items = [_ENCODED.get(message, ascii) if cursor is None
                 else _dumps(_item(message, cursor), ascii)
                 for message, cursor in self.events]
        cursor = self.cursor
        # A cursor of ids and channel names needs no escaping; one with a publisher's id may.
        quoted = b'"%s"' % cursor.encode() if _PLAIN.fullmatch(cursor) else _dumps(cursor, ascii)
        return b'{"events":[%s],"lastEventId":%s,"retry":%d}' % (
            b",".join(items), quoted, self.retry)


def _item(message: Message, cursor: Optional[str]) -> Dict[str, Any]:
    item = message.to_dict()
    if cursor is None:
        cursor = format_cursor((message.channel,), {message.channel: message.event_id},
                               message.source_id)
    item["id"] = cursor
    return item


def _dumps(value: Any, ascii: bool) -> bytes:
    # ASCII-only for JSONP: U+2028/U+2029 break old JavaScript parsers.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii).encode(
        "ascii" if ascii else "utf-8")


class _EncodedEvents:
    """Each recent event's JSON, as one-channel polls answer with it, made once (a bounded
    cache: the polls that answer with an event do so in the moments after its dispatch)."""

    __slots__ = ("_entries", "_bytes", "max_entries", "max_bytes")

    def __init__(self, max_entries: int = 512, max_bytes: int = 4 << 20) -> None:
        # id(message) -> [message, UTF-8 JSON, ASCII JSON]; holding the message keeps its id
        # from being reused while the entry lives.
        self._entries: "OrderedDict[int, List[Any]]" = OrderedDict()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def get(self, message: Message, ascii: bool) -> bytes:
        entry = self._entries.get(id(message))
        if entry is None:
            entry = self._entries[id(message)] = [message, None, None]
        encoded = entry[2 if ascii else 1]
        if encoded is None:
            encoded = entry[2 if ascii else 1] = _dumps(_item(message, None), ascii)
            self._bytes += len(encoded)
            self._trim()
        return encoded

    def _trim(self) -> None:
        entries = self._entries
        while len(entries) > 1 and (len(entries) > self.max_entries or
                                    self._bytes > self.max_bytes):
            self._forget(entries.popitem(last=False)[1])

    def _forget(self, entry: List[Any]) -> None:
        self._bytes -= sum(len(encoded) for encoded in entry[1:] if encoded is not None)


_ENCODED = _EncodedEvents()


def collect(session: Session, backlog: List[Message], hold: float, batch: int,
            retry_ms: int) -> Answer:
    """Wait for events (at most `hold` seconds) and return the answer; the session is closed."""
    subscriber = session.subscriber
    deadline = time.monotonic() + hold
    try:
        events = _take(session, backlog, batch)
        while not events and not subscriber.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not subscriber.wait(remaining):
                break
            events = _take(session, subscriber.drain(), batch)
        return Answer(events, session.cursor(), retry_ms)
    finally:
        session.close()


def poll(session: Session, backlog: List[Message], hold: float, batch: int,
         retry_ms: int) -> Dict[str, Any]:
    """As `collect`, the answer as the JSON-ready body."""
    return collect(session, backlog, hold, batch, retry_ms).to_dict()


def unavailable(cursor: Optional[str], hold: float, retry_ms: int) -> Answer:
    """The answer while the broker is down, after a hold of `retry_ms` (at most `hold` seconds).

    A client polls again as soon as it has an answer: the hold keeps it from polling in a tight
    loop. Its cursor comes back unchanged ("" if it sent none), so it loses nothing.
    """
    gevent.sleep(min(hold, retry_ms / 1000))
    return Answer([], cursor or "", retry_ms)


def _take(session: Session, messages: List[Message], batch: int) -> List[Taken]:
    events: List[Taken] = []
    own_ids = len(session.channels) == 1
    for message in messages:
        if len(events) >= batch:
            break  # the cursor stops before the rest: the next poll gets them from history
        if session.accept(message):
            shared = own_ids and message.event_id is not None
            events.append((message, None if shared else session.cursor(message.source_id)))
    return events


def encode_json(body: Dict[str, Any]) -> bytes:
    """A JSON-ready body as a poll answers with it."""
    return _dumps(body, False)


def encode_jsonp(callback: str, body: Dict[str, Any]) -> bytes:
    """A JSON-ready body as a JSONP poll answers with it; `callback` must match CALLBACK."""
    return _call(callback, _dumps(body, True))


def _call(callback: str, ascii_json: bytes) -> bytes:
    if not CALLBACK.fullmatch(callback):
        raise ValueError("invalid callback name")
    # The leading comment keeps the response from starting with attacker-chosen bytes.
    return b"/**/%s(%s);" % (callback.encode("ascii"), ascii_json)
