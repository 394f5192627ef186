"""Recent events in memory: per subscribed channel, the latest events the hub dispatched, to
answer history reads without asking the broker.

A channel's `Recent` holds every event the broker delivered on it after `base`, up to `last`,
within bounds of count and bytes, and never an event that Redis' own trimming (by
`--history-length` and `--history-age`) could have removed: it evicts by the same rules, a
little earlier. `history(after, ...)` answers exactly what a read of the broker's history would
have answered when `last` was published, for any `after` from `base` to `last`, or None when it
cannot be sure (then the broker is asked). Why that answer is the same for every client is in
docs/design.md ("Recent events in memory").

The messages are the hub's own, shared with the fan-out: their encoded frames are not copied.
"""

from collections import deque
from dataclasses import dataclass
from typing import Deque, Optional

from .brokers import History
from .ids import ZERO, EventId, HistoryBounds, history_gap
from .message import Message

# Redis trims by age with the time the publish script reads after its XADD (TIME), which can
# be a little later than the event's id says: evict that much earlier than Redis would.
SCRIPT_SLACK_MS = 100
# Whether a quiet channel's history has expired is judged by this process' clock against
# Redis' (event ids are Redis time): this much disagreement between them is allowed for.
CLOCK_SKEW_MS = 1000


@dataclass(frozen=True)
class RecentLimits:
    """How much a channel keeps: at most `events` (and never more than `history_length`) and
    `max_bytes` of encoded frames; `history_age` (seconds) as the broker's history has it."""

    events: int
    max_bytes: int
    history_length: int
    history_age: float


class Recent:
    """One channel's recent events, oldest first.

    `base`: every event after it, to `last`, is held or was never published (the messages kept
    start right after it). `whole`: history did not exist at `base` (ZERO), and nothing has
    been evicted since, so the messages are all of it and its bounds are known exactly.
    `covering`: False after history was lost, until the next event starts coverage again.
    """

    __slots__ = ("messages", "size", "base", "last", "whole", "covering", "_max_events",
                 "_max_bytes", "_age_ms", "_margin_ms")

    def __init__(self, limits: RecentLimits, tail: EventId) -> None:
        """`tail`: the channel's last event id when it was subscribed (ZERO: no history)."""
        self._max_events = min(limits.events, limits.history_length)
        self._max_bytes = limits.max_bytes
        self._age_ms = int(limits.history_age * 1000)
        self._margin_ms = min(CLOCK_SKEW_MS, self._age_ms // 2)
        self.messages: Deque[Message] = deque()
        self.size = 0  # bytes of the messages' frames
        self.base = self.last = tail
        self.whole = tail == ZERO
        self.covering = True

    def add(self, message: Message) -> None:
        """A message the hub dispatched (it has an id, newer than every one before)."""
        event_id = message.event_id
        last = self.last
        if event_id <= last:
            return
        if not self.covering or (last != ZERO and event_id[0] + SCRIPT_SLACK_MS
                                 >= last[0] + self._age_ms):
            # History was lost, or it may have expired between `last` and this event (Redis
            # drops the key `--history-age` after its last publish): start again here.
            self._restart(event_id)
            return
        messages = self.messages
        messages.append(message)
        self.size += len(message.frame)
        self.last = event_id
        oldest_ms = event_id[0] + SCRIPT_SLACK_MS - self._age_ms
        while messages and (len(messages) > self._max_events or self.size > self._max_bytes
                            or messages[0].event_id[0] < oldest_ms):
            evicted = messages.popleft()
            self.size -= len(evicted.frame)
            self.base = evicted.event_id
            self.whole = False

    def restart(self, at: Optional[EventId]) -> None:
        """History may hold what was not dispatched, up to `at` (entries read from history or
        unreadable): keep nothing from before. ZERO: there is no history, and every event of
        it is to come. None: history was lost; cover nothing until the next event."""
        if at is None:
            self.messages.clear()
            self.size = 0
            self.covering = False
        else:
            self._restart(max(at, self.last))

    def _restart(self, at: EventId) -> None:
        self.messages.clear()
        self.size = 0
        self.base = self.last = at
        self.whole = at == ZERO  # no history: every event of it is to come
        self.covering = True

    def history(self, after: EventId, limit: Optional[int], now_ms: int) -> Optional[History]:
        """The history after `after` (at most `limit` events), as the broker would read it;
        None when this cannot say (`after` outside base..last, or history may have expired)."""
        if not self.covering or after < self.base or after > self.last:
            return None
        last = self.last
        if last != ZERO and now_ms >= last[0] + self._age_ms - self._margin_ms:
            return None
        newer = []
        for message in reversed(self.messages):  # from the newest back: a poll costs a step
            if message.event_id <= after:
                break
            newer.append(message)
        newer.reverse()
        if self.whole:
            messages = self.messages
            first = messages[0].event_id if messages else ZERO
            gap = history_gap(after, HistoryBounds(bool(messages), first, last, ZERO))
        else:
            # Every event after `base` is here and history held one at or before it: nothing
            # after `after` was trimmed, and `after` is within what history holds.
            gap = False
        return History(newer if limit is None else newer[:limit], gap)
