"""The in-process broker: per-channel ring buffers, for a single gateway process with no Redis.

Ids have the Redis stream form (`<ms>-<seq>`), so clients and resume behave the same on both
brokers; history lives in memory and is gone when the process exits.
"""

import time
from collections import OrderedDict, deque
from typing import Deque, Dict, List, Optional, Sequence, Set

from ..ids import ZERO, EventId, HistoryBounds, history_gap
from ..message import Message
from .base import Broker, History, MessageSink, PublishResult, ResyncSink


class _Ring:
    __slots__ = ("messages", "last", "max_deleted")

    def __init__(self) -> None:
        self.messages: Deque[Message] = deque()
        self.last: EventId = ZERO
        self.max_deleted: EventId = ZERO

    def trim(self, max_length: int, oldest_ms: int) -> None:
        messages = self.messages
        while messages and (len(messages) > max_length or messages[0].event_id[0] < oldest_ms):
            self.max_deleted = messages.popleft().event_id

    def bounds(self) -> HistoryBounds:
        first = self.messages[0].event_id if self.messages else ZERO
        return HistoryBounds(True, first, self.last, self.max_deleted)


class EmbeddedBroker(Broker):
    name = "embedded"
    history_in_memory = True

    def __init__(self, history_length: int = 1000, history_age: float = 3600.0) -> None:
        self._max_length = history_length
        self._max_age_ms = int(history_age * 1000)
        # Least recently published first, so expired channels are found at the front.
        self._rings: "OrderedDict[str, _Ring]" = OrderedDict()
        self._subscribed: Set[str] = set()
        self._sink: Optional[MessageSink] = None
        self._last: EventId = ZERO

    def start(self, sink: MessageSink, resync: Optional[ResyncSink] = None) -> None:
        # Every event is delivered as it is published, straight from history: nothing to resync.
        self._sink = sink

    def stop(self) -> None:
        self._sink = None

    def publish(self, message: Message) -> PublishResult:
        event_id = self._next_id()
        message = message.with_id(event_id)
        oldest_ms = event_id[0] - self._max_age_ms
        self._forget_expired(oldest_ms)
        ring = self._rings.get(message.channel)
        if ring is None:
            ring = self._rings[message.channel] = _Ring()
        else:
            self._rings.move_to_end(message.channel)
        ring.messages.append(message)
        ring.last = event_id
        ring.trim(self._max_length, oldest_ms)
        delivered = message.channel in self._subscribed and self._sink is not None
        if delivered:
            self._sink(message)
        return PublishResult(event_id, int(delivered))

    def publish_many(self, messages: Sequence[Message]) -> List[PublishResult]:
        # Nothing here yields to another greenlet: the batch is published whole, in order.
        return [self.publish(message) for message in messages]

    def _forget_expired(self, oldest_ms: int) -> None:
        """Drop channels whose every event has expired, so abandoned channels cost nothing."""
        rings = self._rings
        while rings:
            channel, ring = next(iter(rings.items()))
            if ring.last[0] >= oldest_ms:
                return
            del rings[channel]

    def _next_id(self) -> EventId:
        # Like Redis: wall-clock milliseconds, a sequence within one millisecond, never backwards.
        now = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (now, 0) if now > last_ms else (last_ms, last_seq + 1)
        return self._last

    def subscribe(self, channel: str) -> EventId:
        self._subscribed.add(channel)
        ring = self._rings.get(channel)
        return ring.last if ring else ZERO

    def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    def history(self, positions: Dict[str, EventId],
                limit: Optional[int] = None) -> Dict[str, History]:
        return {channel: self._history(channel, after, limit)
                for channel, after in positions.items()}

    def _history(self, channel: str, after: EventId, limit: Optional[int]) -> History:
        ring = self._rings.get(channel)
        if ring is None:
            return History([], history_gap(after, HistoryBounds(exists=False)))
        ring.trim(self._max_length, int(time.time() * 1000) - self._max_age_ms)
        # From the newest back: a client that missed a few events costs a few steps.
        newer = []
        for message in reversed(ring.messages):
            if message.event_id <= after:
                break
            newer.append(message)
        newer.reverse()
        return History(newer if limit is None else newer[:limit], history_gap(after, ring.bounds()))

    def check(self) -> None:
        return None
