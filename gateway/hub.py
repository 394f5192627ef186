"""Per-process fan-out: channel -> local subscribers. The only place that knows both sides.

The broker hands each message to `Hub.dispatch` once; the hub appends that same object to the
bounded queue of every local subscriber of its channel and wakes them. A subscriber whose
queue is full has fallen too far behind: it is dropped and counted, so one slow client never
costs memory without bound nor slows the others.
"""

import logging
from collections import deque
from typing import Deque, Dict, List, Optional, Sequence, Set

import gevent
import gevent.event

from .brokers import Broker, History
from .ids import EventId
from .message import Message

log = logging.getLogger(__name__)


class Subscriber:
    """One client connection's share of the hub: its channels, a bounded queue, a wake-up."""

    __slots__ = ("channels", "queue", "max_pending", "closed", "reason", "writer", "_wakeup")

    def __init__(self, channels: Sequence[str], max_pending: int) -> None:
        self.channels = tuple(channels)
        self.queue: Deque[Message] = deque()
        self.max_pending = max_pending
        self.closed = False
        self.reason = ""
        self.writer: Optional[gevent.Greenlet] = None
        self._wakeup = gevent.event.Event()

    def push(self, message: Message) -> bool:
        """Queue a message; False when the queue is full."""
        if len(self.queue) >= self.max_pending:
            return False
        self.queue.append(message)
        self._wakeup.set()
        return True

    def wait(self, timeout: Optional[float]) -> bool:
        """Block until there is something to send or the subscriber is closed."""
        if self.queue or self.closed:
            return True
        return self._wakeup.wait(timeout)

    def drain(self) -> List[Message]:
        self._wakeup.clear()
        items = list(self.queue)
        self.queue.clear()
        return items

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._wakeup.set()


class Hub:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._subscribers: Dict[str, Set[Subscriber]] = {}
        self._ready: Dict[str, gevent.event.AsyncResult] = {}
        self._tails: Dict[str, EventId] = {}
        self.dropped_slow = 0
        self.delivered = 0

    @property
    def subscriber_count(self) -> int:
        return len({s for subs in self._subscribers.values() for s in subs})

    @property
    def channel_count(self) -> int:
        return len(self._subscribers)

    def attach(self, subscriber: Subscriber) -> Dict[str, EventId]:
        """Subscribe on every channel; returns each channel's last event id at this moment.

        Every message published after that id reaches the subscriber's queue. Raises
        BrokerUnavailable (and leaves nothing attached) when the broker cannot subscribe.
        """
        positions: Dict[str, EventId] = {}
        try:
            for channel in subscriber.channels:
                positions[channel] = self._attach_one(subscriber, channel)
        except BaseException:
            self.detach(subscriber)
            raise
        return positions

    def _attach_one(self, subscriber: Subscriber, channel: str) -> EventId:
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            subscribers = self._subscribers[channel] = set()
            ready = self._ready[channel] = gevent.event.AsyncResult()
            subscribers.add(subscriber)
            try:
                self._tails[channel] = self._broker.subscribe(channel)
            except BaseException as error:
                ready.set_exception(error)
                self._forget(channel)
                raise
            ready.set(True)
            return self._tails[channel]
        subscribers.add(subscriber)
        self._ready[channel].get()
        return self._tails[channel]

    def detach(self, subscriber: Subscriber) -> None:
        for channel in subscriber.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is None:
                continue
            subscribers.discard(subscriber)
            if not subscribers and self._ready[channel].ready():
                self._forget(channel)
                self._broker.unsubscribe(channel)

    def _forget(self, channel: str) -> None:
        self._subscribers.pop(channel, None)
        self._ready.pop(channel, None)
        self._tails.pop(channel, None)

    def dispatch(self, message: Message) -> None:
        """Called by the broker, once per message, in id order per channel."""
        channel = message.channel
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        if message.event_id is not None:
            self._tails[channel] = message.event_id
        slow = [s for s in subscribers if not s.push(message)]
        self.delivered += len(subscribers) - len(slow)
        for subscriber in slow:
            self._drop_slow(subscriber)

    def _drop_slow(self, subscriber: Subscriber) -> None:
        self.dropped_slow += 1
        log.info("dropped a subscriber of %s: %d messages behind", ",".join(subscriber.channels),
                 len(subscriber.queue))
        subscriber.close("slow")
        subscriber.queue.clear()
        self.detach(subscriber)
        writer = subscriber.writer
        # Its writer may be stuck sending to a client that does not read: end it now.
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)

    def history(self, channel: str, after: EventId) -> History:
        return self._broker.history(channel, after)

    def close_all(self, reason: str) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscriber in list(subscribers):
                subscriber.close(reason)
