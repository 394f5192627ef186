"""A client's position on its channels: attach, replay what it missed, then filter live events.

Order matters for "no gap, no duplicate": the session attaches to the hub first (live events
start queueing), then reads history after the client's last id, then passes queued events
only if they are newer than what was replayed.
"""

import heapq
from typing import Dict, List, Optional, Tuple

from .. import wire
from ..brokers.base import History
from ..hub import Hub, Subscriber
from ..ids import ZERO, CursorError, EventId, format_cursor, parse_cursor
from ..message import RESET_EVENT, HistoryLost, Message, reset_message

__all__ = ["RESET_EVENT", "Session"]


class Session:
    __slots__ = ("hub", "channels", "subscriber", "positions")

    def __init__(self, hub: Hub, subscriber: Subscriber) -> None:
        self.hub = hub
        self.channels = subscriber.channels
        self.subscriber = subscriber
        self.positions: Dict[str, EventId] = {}

    def open(self, last_event_id: Optional[str], limit: Optional[int] = None) -> List[Message]:
        """Attach and return the backlog to send first (resets, then replayed events), with at
        most `limit` events of each channel's history (the client takes no more at once).

        Raises BrokerUnavailable, with the subscriber closed, when the broker cannot serve.
        """
        self.positions = self.hub.attach(self.subscriber)
        if last_event_id is None:
            return []
        try:
            try:
                requested = parse_cursor(last_event_id, self.channels)
            except CursorError:
                # Treated like lost history: say so, then send everything history holds.
                start = {channel: ZERO for channel in self.channels}
                _, events = self._replay(start, self.hub.history(start, limit))
                self.hub.count_reset("unknown-id")
                return [reset_message(self.channels, "unknown-id"), *events]
            lost, events = self._replay(requested, self.hub.history(requested, limit))
            if not lost:
                return events
            self.hub.count_reset("history-lost")
            return [reset_message(lost, "history-lost"), *events]
        except BaseException:
            self.close()
            raise

    def open_now(self, last_event_id: Optional[str],
                 limit: Optional[int] = None) -> Optional[List[Message]]:
        """As `open`, for the event loop, which must not wait: None, with nothing left
        attached, where `open` would (a channel not subscribed yet, history the broker must
        read, a cursor this process cannot parse). The backlog lacks the events of publishes
        this process acknowledged that are still on their way (`Hub.history_now`)."""
        positions = self.hub.attach_now(self.subscriber)
        if positions is None:
            return None
        self.positions = positions
        if last_event_id is None:
            return []
        try:
            requested = parse_cursor(last_event_id, self.channels)
        except CursorError:
            requested = None
        answer = None if requested is None else self.hub.history_now(requested, limit)
        if answer is None:
            self.close()
            return None
        lost, events = self._replay(requested, answer)
        if not lost:
            return events
        self.hub.count_reset("history-lost")
        return [reset_message(lost, "history-lost"), *events]

    def _replay(self, requested: Dict[str, EventId],
                answer: Dict[str, History]) -> Tuple[List[str], List[Message]]:
        """The channels whose history (`answer`) has a gap, and the events after each
        position."""
        lost: List[str] = []
        histories: List[List[Message]] = []
        for channel, history in answer.items():
            after = requested[channel]
            if history.gap:
                lost.append(channel)
                # A position history never reached (e.g. from before Redis lost its data)
                # must not hide the events to come: start from the channel's end instead.
                after = min(after, self.positions[channel])
            self.positions[channel] = after
            histories.append(history.messages)
        if len(histories) == 1:
            return lost, list(histories[0])  # a copy: the read's messages may be shared
        return lost, list(heapq.merge(*histories, key=lambda m: m.event_id))

    def accept(self, message: Message) -> bool:
        """Whether the client still needs this message; advances its position if so."""
        event_id = message.event_id
        if event_id is None:
            return not isinstance(message, HistoryLost) or message.concerns(
                self.positions[message.channel])
        if event_id <= self.positions.get(message.channel, event_id):
            return False
        self.positions[message.channel] = event_id
        return True

    def cursor(self, source_id: Optional[str] = None) -> str:
        return format_cursor(self.channels, self.positions, source_id)

    def frame(self, message: Message) -> bytes:
        """The message's event-stream bytes for this client, shared with others where possible."""
        # A one-channel cursor is the event's own id; an event without an id has no cursor line.
        if message.shared and (message.event_id is None or len(self.channels) == 1):
            return message.frame
        return wire.encode_frame(message.body, self.cursor(message.source_id))

    def frames(self, messages: List[Message]) -> bytes:
        return b"".join([self.frame(m) for m in messages if self.accept(m)])

    def close(self) -> None:
        """End at once: the subscriber lets go of what it holds and leaves the hub."""
        self.subscriber.close()
