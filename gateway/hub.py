"""Per-process fan-out: channel -> local subscribers. The only place that knows both sides.

The broker hands each message to `Hub.dispatch` once, and the hub hands it to every local
subscriber of its channel (`Subscriber.deliver`): an event stream writes it to its socket there
and then, a long-poll queues it and wakes its request. A subscriber that has fallen too far
behind is dropped and counted, so one slow client never costs memory without bound nor slows
the others; and the bytes all subscribers hold for their clients share one budget, so many slow
clients together cannot either.
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import gevent.event

from .brokers import Broker, History
from .ids import ZERO, EventId
from .message import Message

log = logging.getLogger(__name__)


class Subscriber:
    """One client's share of the hub: its channels and a bounded queue of messages.

    A long-poll waits on it (`wait`, `drain`); the event stream overrides `deliver` to write
    to its socket instead (see transports.stream). `held` is what the subscriber holds for its
    client, in bytes, as the hub's budget counts it (see `_hold`).
    """

    __slots__ = ("channels", "queue", "max_pending", "closed", "held", "budget", "_wakeup")

    def __init__(self, channels: Sequence[str], max_pending: int) -> None:
        self.channels = tuple(channels)
        # A list, not a deque: an empty deque costs a 600-byte block per idle subscriber.
        self.queue: List[Any] = []
        self.max_pending = max_pending
        self.closed = False
        self.held = 0
        self.budget: Optional[Budget] = None  # the hub's, from when it is attached
        self._wakeup: Optional[gevent.event.Event] = None  # made by the first wait

    def deliver(self, message: Message) -> bool:
        """Take a message; False when the subscriber has fallen too far behind."""
        return self.push(message, len(message.frame))

    def push(self, item: Any, size: int) -> bool:
        """Queue an item of `size` bytes; False when the queue is full."""
        if self.closed:
            return True  # dropped while this message was being dispatched
        if len(self.queue) >= self.max_pending:
            return False
        self.queue.append(item)
        self._hold(self.held + size)
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def wait(self, timeout: Optional[float]) -> bool:
        """Block until there is something to take or the subscriber is closed."""
        if self.queue or self.closed:
            return True
        if self._wakeup is None:
            self._wakeup = gevent.event.Event()
        return self._wakeup.wait(timeout)

    def drain(self) -> List[Any]:
        if self._wakeup is not None:
            self._wakeup.clear()
        items, self.queue = self.queue, []
        self._hold(0)
        return items

    def release(self) -> None:
        """Let go of what is queued: the subscriber has left the hub, nobody will take it."""
        self.queue = []
        self._hold(0)

    def _hold(self, held: int) -> None:
        """Tell the budget what the subscriber holds now (it may drop the largest holders)."""
        if held != self.held:
            self.budget.update(self, held)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._wakeup is not None:
                self._wakeup.set()

    def end(self) -> None:
        """End cleanly (the server is stopping); a queue has nothing more to finish."""
        self.close()


class _Channel:
    """A channel's local subscribers, its subscription (pending until the broker confirms),
    and the id of the last event dispatched on it."""

    __slots__ = ("subscribers", "ready", "tail")

    def __init__(self) -> None:
        self.subscribers: Set[Subscriber] = set()
        self.ready = gevent.event.AsyncResult()
        self.tail: EventId = ZERO


class Budget:
    """The bytes held for slow clients across the process, against one limit.

    Subscribers report what they hold only when it changes: when a socket cannot take an
    event, when it drains, when a long-poll queues or takes. Only the subscribers holding
    bytes are tracked, so finding the largest costs nothing while every socket keeps up.
    Over the limit, the largest holders are dropped until the total is back under it.
    """

    __slots__ = ("limit", "total", "_holders", "_drop", "_trimming")

    def __init__(self, limit: int, drop: Callable[[Subscriber], None]) -> None:
        self.limit = limit
        self.total = 0
        self._holders: Set[Subscriber] = set()
        self._drop = drop  # must leave the subscriber holding nothing
        self._trimming = False

    def update(self, subscriber: Subscriber, held: int) -> None:
        before = subscriber.held
        subscriber.held = held
        self.total += held - before
        if not held:
            self._holders.discard(subscriber)
            return
        if not before:
            self._holders.add(subscriber)
        if held > before and self.total > self.limit and not self._trimming:
            self._trim()

    def _trim(self) -> None:
        self._trimming = True  # a drop may yield (the broker unsubscribes): one trim at a time
        over, dropped = self.total, 0
        try:
            for _ in range(len(self._holders)):
                if self.total <= self.limit:
                    break
                self._drop(max(self._holders, key=_held))
                dropped += 1
        finally:
            self._trimming = False
        log.info("%d bytes held for slow clients, over --max-buffered-bytes (%d): dropped %d "
                 "subscriber(s) holding the most, freeing %d bytes", over, self.limit, dropped,
                 over - self.total)


def _held(subscriber: Subscriber) -> int:
    return subscriber.held


class Hub:
    def __init__(self, broker: Broker, max_buffered_bytes: int) -> None:
        self._broker = broker
        self._channels: Dict[str, _Channel] = {}
        self.budget = Budget(max_buffered_bytes, self._drop_for_memory)
        self.dropped_slow = 0
        self.dropped_memory = 0

    @property
    def subscriber_count(self) -> int:
        """Subscribers whose subscriptions are live (not still being set up)."""
        return len({s for entry in self._channels.values() if entry.ready.successful()
                    for s in entry.subscribers})

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def buffered_bytes(self) -> int:
        """What subscribers hold for their clients: not yet taken by a socket or a long-poll."""
        return self.budget.total

    def attach(self, subscriber: Subscriber) -> Dict[str, EventId]:
        """Subscribe on every channel; returns each channel's last event id at this moment.

        Every message published after that id reaches the subscriber's queue. Raises
        BrokerUnavailable (and leaves nothing attached) when the broker cannot subscribe.
        """
        subscriber.budget = self.budget
        positions: Dict[str, EventId] = {}
        try:
            for channel in subscriber.channels:
                positions[channel] = self._attach_one(subscriber, channel)
        except BaseException:
            self.detach(subscriber)
            raise
        return positions

    def _attach_one(self, subscriber: Subscriber, channel: str) -> EventId:
        entry = self._channels.get(channel)
        if entry is not None:
            entry.subscribers.add(subscriber)
            entry.ready.get()
            return entry.tail
        entry = self._channels[channel] = _Channel()
        entry.subscribers.add(subscriber)
        try:
            entry.tail = self._broker.subscribe(channel)
        except BaseException as error:
            entry.ready.set_exception(error)
            del self._channels[channel]
            raise
        entry.ready.set(True)
        return entry.tail

    def detach(self, subscriber: Subscriber) -> None:
        for channel in subscriber.channels:
            entry = self._channels.get(channel)
            if entry is None:
                continue
            entry.subscribers.discard(subscriber)
            if not entry.subscribers and entry.ready.ready():
                del self._channels[channel]
                self._broker.unsubscribe(channel)
        subscriber.release()

    def dispatch(self, message: Message) -> None:
        """Called by the broker, once per message, in id order per channel."""
        entry = self._channels.get(message.channel)
        if entry is None:
            return
        if message.event_id is not None:
            entry.tail = message.event_id
        # A copy: a subscriber whose client is gone leaves the hub from inside `deliver`.
        slow = [subscriber for subscriber in tuple(entry.subscribers)
                if not subscriber.deliver(message)]
        for subscriber in slow:
            self.drop_slow(subscriber)

    def drop_slow(self, subscriber: Subscriber, why: str = "") -> None:
        """Disconnect a subscriber that cannot keep up, and count it."""
        if subscriber.closed:
            return  # dropped for memory during the same dispatch
        self.dropped_slow += 1
        log.info("dropped a subscriber of %s: %s", ",".join(subscriber.channels),
                 why or f"{len(subscriber.queue)} messages behind")
        self._drop(subscriber)

    def _drop_for_memory(self, subscriber: Subscriber) -> None:
        self.dropped_memory += 1  # the budget logs what its drops freed
        self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        subscriber.close()
        self.detach(subscriber)  # which releases what it held

    def tail(self, channel: str) -> EventId:
        """The id of the last event dispatched on a channel (or current when it was attached)."""
        return self._channels[channel].tail

    def history(self, positions: Dict[str, EventId]) -> Dict[str, History]:
        return self._broker.history(positions)

    def close_all(self) -> None:
        for entry in list(self._channels.values()):
            for subscriber in list(entry.subscribers):
                subscriber.end()
