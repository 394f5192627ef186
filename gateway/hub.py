"""Per-process fan-out: channel -> local subscribers. The only place that knows both sides.

The broker hands each message to `Hub.dispatch` once. For a subscriber whose writer is idle
and whose socket was handed over (`Subscriber.sock`), the hub writes the message's shared,
pre-framed bytes straight to the socket with a non-blocking send: no greenlet switch, no copy.
Everything else (a full socket buffer, a partial send, per-connection framing) goes to the
subscriber's bounded queue and wakes its writer. A subscriber whose queue is full has fallen
too far behind: it is dropped and counted, so one slow client never costs memory without
bound nor slows the others.
"""

import logging
import socket
from typing import Dict, List, Optional, Sequence, Set, Union

import gevent
import gevent.event

from .brokers import Broker, History
from .ids import EventId
from .message import Message

log = logging.getLogger(__name__)


class Subscriber:
    """One client connection's share of the hub: its channels, a bounded queue, a wake-up.

    The queue holds messages, and bytes already framed for the socket (the rest of a
    partial direct send). `sock` is set, by the writer, only while it is idle and only for a
    one-channel connection whose bytes are the shared ones: then the hub may write directly.
    """

    __slots__ = ("channels", "queue", "max_pending", "closed", "writer", "sock", "chunked",
                 "_wakeup")

    def __init__(self, channels: Sequence[str], max_pending: int) -> None:
        self.channels = tuple(channels)
        # A list, not a deque: an empty deque costs a 600-byte block per idle subscriber.
        self.queue: List[Union[Message, bytes]] = []
        self.max_pending = max_pending
        self.closed = False
        self.writer: Optional[gevent.Greenlet] = None
        self.sock: Optional[socket.socket] = None
        self.chunked = True
        self._wakeup = gevent.event.Event()

    def push(self, message: Union[Message, bytes]) -> bool:
        """Queue a message; False when the queue is full."""
        if len(self.queue) >= self.max_pending:
            return False
        self.queue.append(message)
        self._wakeup.set()
        return True

    def send(self, message: Message) -> bool:
        """Write a shared message straight to the idle socket, queueing what does not fit."""
        data = message.chunk if self.chunked else message.frame
        try:
            sent = self.sock.send(data, 0, 0.0)  # a timeout of 0: never wait, never switch
        except BlockingIOError:
            sent = 0
        except OSError as error:
            # The client is gone; its writer finds out on its next write and ends.
            log.debug("a subscriber's socket failed: %s", error)
            self.close()
            return True
        if sent == len(data):
            return True
        # From now on the writer owns the socket until it has sent the rest.
        self.sock = None
        return self.push(data[sent:])

    def wait(self, timeout: Optional[float]) -> bool:
        """Block until there is something to send or the subscriber is closed."""
        if self.queue or self.closed:
            return True
        return self._wakeup.wait(timeout)

    def drain(self) -> List[Union[Message, bytes]]:
        self._wakeup.clear()
        items, self.queue = self.queue, []
        return items

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock = None
            self._wakeup.set()


class Hub:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._subscribers: Dict[str, Set[Subscriber]] = {}
        self._ready: Dict[str, gevent.event.AsyncResult] = {}
        self._tails: Dict[str, EventId] = {}
        self.dropped_slow = 0

    @property
    def subscriber_count(self) -> int:
        """Subscribers whose subscriptions are live (not still being set up)."""
        live = [subs for channel, subs in self._subscribers.items()
                if self._ready[channel].successful()]
        return len({s for subs in live for s in subs})

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
        shared = message.shared
        slow = []
        for subscriber in subscribers:
            if subscriber.sock is not None and shared:
                if not subscriber.send(message):
                    slow.append(subscriber)
            elif not subscriber.push(message):
                slow.append(subscriber)
        for subscriber in slow:
            self._drop_slow(subscriber)

    def _drop_slow(self, subscriber: Subscriber) -> None:
        self.dropped_slow += 1
        log.info("dropped a subscriber of %s: %d messages behind", ",".join(subscriber.channels),
                 len(subscriber.queue))
        subscriber.close()
        subscriber.queue = []
        self.detach(subscriber)
        writer = subscriber.writer
        # Its writer may be stuck sending to a client that does not read: end it now.
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)

    def tail(self, channel: str) -> EventId:
        """The id of the last event dispatched on a channel (or current when it was attached)."""
        return self._tails[channel]

    def history(self, positions: Dict[str, EventId]) -> Dict[str, History]:
        return self._broker.history(positions)

    def close_all(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscriber in list(subscribers):
                subscriber.close()
