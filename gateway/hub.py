"""Per-process fan-out: channel -> local subscribers. The only place that knows both sides.

The broker hands each message to `Hub.dispatch` once, and the hub hands it to every local
subscriber of its channel (`Subscriber.deliver`): an event stream writes it to its socket there
and then, a long-poll queues it and wakes its request. A subscriber that has fallen too far
behind is dropped and counted, so one slow client never costs memory without bound nor slows
the others; and the bytes all subscribers hold for their clients share one budget, so many slow
clients together cannot either.

A subscriber reaches back into the hub only through the `Seat` the hub gives it as it attaches.
"""

import logging
from typing import Callable, Dict, List, Protocol, Sequence, Set

import gevent.event

from .brokers import Broker, History
from .ids import ZERO, EventId
from .message import Message

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the hub asks of a local subscriber (the transports implement it)."""

    channels: Sequence[str]

    def attached(self, seat: "Seat") -> None:
        """Take the seat the hub gives, before the first `deliver`."""

    def deliver(self, message: Message) -> bool:
        """Take a message; False when too far behind, and the hub drops the subscriber."""

    def close(self) -> None:
        """Stop at once: let go of what it holds (`seat.hold(0)`) and leave (`seat.leave()`)."""

    def end(self) -> None:
        """End cleanly, the server stopping: as `close`, once the client has what it is owed."""


class Seat:
    """A subscriber's place at the hub: its one way back in, given as the hub attaches it.

    Through it the subscriber reports the bytes it holds for its client (`hold`), reads how
    far its channels have been dispatched (`tail`), asks to be dropped (`drop_slow`) and
    leaves (`leave`). A subscriber that has left may still hold bytes (an ending stream whose
    socket has not taken its last ones), and still reports them here until it lets them go.
    """

    __slots__ = ("subscriber", "held", "_hub")

    def __init__(self, hub: "Hub", subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.held = 0  # as the budget counts it
        self._hub = hub

    def hold(self, held: int) -> None:
        """The bytes held now; over the budget, the largest holders (maybe this one) are dropped."""
        if held != self.held:
            self._hub.budget.update(self, held)

    def tail(self, channel: str) -> EventId:
        """The id of the last event dispatched on one of the subscriber's channels (or the
        channel's last when the subscriber was attached)."""
        return self._hub._channels[channel].tail

    def drop_slow(self, why: str) -> None:
        """Drop the subscriber as one that cannot keep up, counted and logged with `why`."""
        self._hub._drop_slow(self.subscriber, why)

    def leave(self) -> None:
        self._hub._detach(self.subscriber)


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
    event, when it drains, when a long-poll queues or takes. Only the seats holding bytes are
    tracked, so finding the largest costs nothing while every socket keeps up. Over the limit,
    the largest holders are dropped until the total is back under it.
    """

    __slots__ = ("limit", "total", "_holders", "_drop", "_trimming")

    def __init__(self, limit: int, drop: Callable[[Seat], None]) -> None:
        self.limit = limit
        self.total = 0
        self._holders: Set[Seat] = set()
        self._drop = drop  # must leave the seat holding nothing
        self._trimming = False

    def update(self, seat: Seat, held: int) -> None:
        before = seat.held
        seat.held = held
        self.total += held - before
        if not held:
            self._holders.discard(seat)
            return
        if not before:
            self._holders.add(seat)
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


def _held(seat: Seat) -> int:
    return seat.held


class Hub:
    def __init__(self, broker: Broker, max_buffered_bytes: int) -> None:
        self._broker = broker
        self._channels: Dict[str, _Channel] = {}
        self.budget = Budget(max_buffered_bytes, self._drop_for_memory)
        self.dropped_slow = 0  # stalled ones included
        self.dropped_stalled = 0
        self.dropped_memory = 0
        self.resets: Dict[str, int] = {}  # gateway-reset events sent at subscribe, by reason
        # While `dispatch` walks a channel's subscribers, those that leave wait here.
        self._dispatching = False
        self._leaving: List[Subscriber] = []

    @property
    def subscriber_count(self) -> int:
        """Subscribers whose subscriptions are live (not still being set up)."""
        return len(self.subscribers())

    def subscribers(self) -> Set[Subscriber]:
        """Every subscriber whose subscriptions are live, once each."""
        return {s for entry in self._channels.values() if entry.ready.successful()
                for s in entry.subscribers}

    def channel_counts(self) -> Dict[str, int]:
        """Each subscribed channel's number of local subscribers."""
        return {channel: len(entry.subscribers) for channel, entry in self._channels.items()
                if entry.ready.successful()}

    def local_subscribers(self, channel: str) -> int:
        entry = self._channels.get(channel)
        return len(entry.subscribers) if entry is not None else 0

    def count_reset(self, reason: str) -> None:
        """A subscriber is sent a `gateway-reset` as it subscribes, for `reason`."""
        self.resets[reason] = self.resets.get(reason, 0) + 1

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def buffered_bytes(self) -> int:
        """What subscribers hold for their clients: not yet taken by a socket or a long-poll."""
        return self.budget.total

    def attach(self, subscriber: Subscriber) -> Dict[str, EventId]:
        """Subscribe on every channel; returns each channel's last event id at this moment.

        Every message published after that id reaches the subscriber. Raises BrokerUnavailable
        when the broker cannot subscribe, and closes the subscriber: nothing is left attached.
        """
        subscriber.attached(Seat(self, subscriber))
        positions: Dict[str, EventId] = {}
        try:
            for channel in subscriber.channels:
                positions[channel] = self._attach_one(subscriber, channel)
        except BaseException:
            subscriber.close()
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

    def _detach(self, subscriber: Subscriber) -> None:
        if self._dispatching:
            self._leaving.append(subscriber)
            return
        for channel in subscriber.channels:
            entry = self._channels.get(channel)
            if entry is None:
                continue
            entry.subscribers.discard(subscriber)
            if not entry.subscribers and entry.ready.ready():
                del self._channels[channel]
                self._broker.unsubscribe(channel)

    def dispatch(self, message: Message) -> None:
        """Called by the broker, once per message, in id order per channel."""
        entry = self._channels.get(message.channel)
        if entry is None:
            return
        if message.event_id is not None:
            entry.tail = message.event_id
        # No copy of the set: a subscriber that leaves meanwhile (its client gone, dropped,
        # a stream rotated) is taken out after the loop. Nothing in the loop yields, so no
        # other greenlet attaches or dispatches while it runs.
        self._dispatching = True
        try:
            for subscriber in entry.subscribers:
                if not subscriber.deliver(message):
                    self._drop_slow(subscriber, "")
        finally:
            self._dispatching = False
            if self._leaving:
                leaving, self._leaving = self._leaving, []
                for subscriber in leaving:
                    self._detach(subscriber)

    def _drop_slow(self, subscriber: Subscriber, why: str) -> None:
        """Disconnect a subscriber that cannot keep up, and count it."""
        self.dropped_slow += 1
        if why:
            self.dropped_stalled += 1
        log.info("dropped a subscriber of %s: %s", ",".join(subscriber.channels),
                 why or "its queue is full (--max-pending)")
        subscriber.close()

    def _drop_for_memory(self, seat: Seat) -> None:
        self.dropped_memory += 1  # the budget logs what its drops freed
        seat.subscriber.close()

    def history(self, positions: Dict[str, EventId]) -> Dict[str, History]:
        return self._broker.history(positions)

    def close_all(self) -> None:
        for entry in list(self._channels.values()):
            for subscriber in list(entry.subscribers):
                subscriber.end()
