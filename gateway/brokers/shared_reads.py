"""History reads shared between requests: a reconnect storm costs a few reads, not one a client.

When a gateway restarts, its clients come back at once, most of them with the same
Last-Event-ID. A read of channels' history is therefore shared: while one is in flight, and for
`RECENT` seconds after it, a request for the same channels from positions at or after the
read's is answered from it, by cutting each channel's events at the request's position. The
messages are the read's own, immutable objects, so their bytes are encoded once for everyone.

That answer is exactly what a read of its own would give, under one condition, checked per
request. The request's connection attached to the hub before it asked (see
transports.session), so every event the broker delivers from then on reaches it live; what
history must supply are the events delivered before. The broker delivers each channel's
events in id order, so when the last id the read saw in each channel is at or after the last
id the broker has delivered on it, every event the connection can have missed is in the read.
A channel that has moved on since fails that check, and the request waits for the next read
(which the first to find out starts) or, after a few, reads for itself. So does a request whose
position is past the last id the read saw (an event published since, that reached the client
through another gateway): to the read that position is past the end of history, a gap, while
history holds it now. The several channels
of one read were read at one instant, and a request shares all of them or none, so replay
keeps their publish order.

`RECENT` bounds what sharing can hide: history trimmed for age, or lost by Redis, within that
time is still served from the read.
"""

import bisect
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import gevent.event

from ..ids import EventId, HistoryBounds, history_gap
from ..message import Message
from .base import History

RECENT = 1.0
_ATTEMPTS = 3  # reads in turn a request waits for before it reads for itself


class ChannelRead:
    """What one read found in one channel's history after a position. Never changed once made."""

    __slots__ = ("messages", "ids", "skipped", "entries", "complete", "bounds")

    def __init__(self, messages: List[Message], skipped: List[EventId], complete: bool,
                 bounds: HistoryBounds) -> None:
        self.messages = messages  # oldest first
        self.ids = [message.event_id for message in messages]
        self.skipped = skipped  # ids of entries left out as invalid
        # Every entry read, valid or not: a limit counts entries, as Redis' COUNT does.
        self.entries = sorted(self.ids + skipped) if skipped else self.ids
        self.complete = complete  # False when the read stopped at its limit, before the end
        self.bounds = bounds  # as they were when it was read

    def serve(self, after: EventId, limit: Optional[int]) -> Optional[Tuple[History, int]]:
        """The history after `after` (the valid ones of at most `limit` entries) and the number
        of invalid entries left out of it; None when the read ended before that much was known."""
        entries = self.entries
        first = bisect.bisect_right(entries, after)
        stop = len(entries) if limit is None else min(len(entries), first + limit)
        if stop - first != limit and not self.complete:
            return None
        upper = entries[stop] if stop < len(entries) else None  # the first entry left out
        start = bisect.bisect_right(self.ids, after)
        end = len(self.ids) if upper is None else bisect.bisect_left(self.ids, upper)
        skipped = sum(1 for i in self.skipped if i > after and (upper is None or i < upper))
        return History(self.messages[start:end], history_gap(after, self.bounds), self.bounds), skipped


Reader = Callable[[Dict[str, EventId], Optional[int]], Dict[str, ChannelRead]]


class _Read:
    __slots__ = ("positions", "started", "reads")

    def __init__(self, positions: Dict[str, EventId]) -> None:
        self.positions = positions
        self.started = time.monotonic()
        self.reads: "gevent.event.AsyncResult" = gevent.event.AsyncResult()

    def covers(self, positions: Dict[str, EventId]) -> bool:
        mine = self.positions
        return all(after >= mine[channel] for channel, after in positions.items())


class SharedReads:
    """Answers history requests from reads in flight or just done, else reads.

    `read` reads channels' history at one instant (at most `limit` events per channel);
    `delivered` is the id of the last event the broker delivered on a channel, None if it
    does not deliver the channel now.
    """

    def __init__(self, read: Reader, delivered: Callable[[str], Optional[EventId]],
                 recent: float = RECENT) -> None:
        self._read = read
        self._delivered = delivered
        self._recent = recent
        self._reads: "OrderedDict[Tuple[str, ...], _Read]" = OrderedDict()
        self.reads = 0  # reads made, for tests and benchmarks
        self.shared = 0  # requests answered from another's read

    def history(self, positions: Dict[str, EventId], limit: Optional[int] = None,
                fresh: bool = False) -> Tuple[Dict[str, History], int]:
        """Each channel's history after its position, and how many invalid entries were left
        out. `fresh`: read now, whatever is in flight."""
        if not positions:
            return {}, 0
        key = tuple(positions)
        self._forget_old(time.monotonic())
        tried = None
        # A read that the channel moved past while it was in flight answers none of those
        # waiting for it; the first of them to find out starts another, and the rest, woken
        # in the same turn, wait for that one rather than each read for itself.
        for _ in range(0 if fresh else _ATTEMPTS):
            other = self._reads.get(key)
            if other is None or other is tried or not other.covers(positions):
                break
            # Raises what that read raised: when Redis fails it, a thousand more would only
            # add to its load. None: the greenlet reading was killed.
            reads = other.reads.get()
            answer = None if reads is None else self._answer(reads, positions, limit, check=True)
            if answer is not None:
                self.shared += 1
                return answer
            tried = other
        return self._read_now(key, positions, limit)

    def _read_now(self, key: Tuple[str, ...], positions: Dict[str, EventId],
                  limit: Optional[int]) -> Tuple[Dict[str, History], int]:
        mine = self._reads[key] = _Read(dict(positions))
        self._reads.move_to_end(key)
        self.reads += 1
        try:
            reads = self._read(positions, limit)
        except BaseException as error:
            if isinstance(error, Exception):
                mine.reads.set_exception(error)
            else:
                mine.reads.set(None)  # killed: those waiting read for themselves
            if self._reads.get(key) is mine:
                del self._reads[key]
            raise
        mine.reads.set(reads)
        # Its own read answers the request whatever has been delivered since: it attached first.
        answer = self._answer(reads, positions, limit, check=False)
        assert answer is not None
        return answer

    def _answer(self, reads: Dict[str, ChannelRead], positions: Dict[str, EventId],
                limit: Optional[int], check: bool) -> Optional[Tuple[Dict[str, History], int]]:
        histories: Dict[str, History] = {}
        skipped = 0
        for channel, after in positions.items():
            read = reads[channel]
            if check:
                delivered = self._delivered(channel)
                if delivered is None or delivered > read.bounds.last:
                    return None
                if after > read.bounds.last:
                    # A cursor from an event published since (another gateway sent it): the
                    # read would call it past the end of history, a gap, where there is none.
                    return None
            served = read.serve(after, limit)
            if served is None:
                return None
            histories[channel] = served[0]
            skipped += served[1]
        return histories, skipped

    def _forget_old(self, now: float) -> None:
        reads = self._reads
        while reads:
            key, oldest = next(iter(reads.items()))
            if now - oldest.started < self._recent:
                return
            del reads[key]
