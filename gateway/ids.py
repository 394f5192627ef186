"""Event ids and resume cursors: parsing, formatting and the history-gap rule, with no I/O.

An event id is a Redis stream id, `<milliseconds>-<sequence>`, assigned once at publish time
and ordered within its channel. The embedded broker mints ids of the same form.

The id a client sees (and sends back as `Last-Event-ID`) is a *cursor*:
- on a one-channel connection, the id of the last event: `1700000000000-0`;
- on a several-channel connection, every channel's position: `chat=1700000000000-0,news=0-0`;
- either may be followed by a space and the publisher's own id: `1700000000000-0 order-42`.
"""

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

EventId = Tuple[int, int]

ZERO: EventId = (0, 0)
# Both parts of a Redis stream id are unsigned 64-bit integers; Redis refuses anything larger.
_PART_MAX = 2**64 - 1
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def parse_id(text: str) -> Optional[EventId]:
    """An id in `<ms>-<seq>` form with both parts in 64 bits, else None (no gateway issued it)."""
    match = _ID.fullmatch(text)
    if match is None:
        return None
    event_id = int(match.group(1)), int(match.group(2))
    return event_id if event_id[0] <= _PART_MAX and event_id[1] <= _PART_MAX else None


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def successor(event_id: EventId) -> Optional[EventId]:
    """The smallest id after `event_id`, None after the largest id there is."""
    ms, seq = event_id
    if seq < _PART_MAX:
        return ms, seq + 1
    return (ms + 1, 0) if ms < _PART_MAX else None


class CursorError(ValueError):
    """A Last-Event-ID that this gateway did not issue, or cannot read."""


def parse_cursor(text: str, channels: Sequence[str]) -> Dict[str, EventId]:
    """The position in each of `channels` that a client's last event id names.

    Channels the cursor does not mention are absent from the result (they start live).
    """
    position = text.split(" ", 1)[0]
    if "=" not in position:
        event_id = parse_id(position)
        if event_id is None or len(channels) != 1:
            raise CursorError(f"unreadable last event id {text[:80]!r}")
        return {channels[0]: event_id}
    positions: Dict[str, EventId] = {}
    for part in position.split(","):
        name, _, value = part.partition("=")
        event_id = parse_id(value)
        if event_id is None:
            raise CursorError(f"unreadable last event id {text[:80]!r}")
        if name in channels:
            positions[name] = event_id
    return positions


def format_cursor(
    channels: Sequence[str], positions: Dict[str, EventId], source_id: Optional[str] = None
) -> str:
    if len(channels) == 1:
        text = format_id(positions.get(channels[0], ZERO))
    else:
        text = ",".join(f"{name}={format_id(positions.get(name, ZERO))}" for name in channels)
    return f"{text} {source_id}" if source_id else text


@dataclass(frozen=True)
class HistoryBounds:
    """What a channel's history still holds, as Redis' XINFO STREAM reports it.

    `exists` is False when there is no history at all (never published, expired, or lost).
    `max_deleted` is the largest id ever trimmed away (ZERO if none).
    """

    exists: bool
    first: EventId = ZERO
    last: EventId = ZERO
    max_deleted: EventId = ZERO


def history_gap(after: EventId, bounds: HistoryBounds) -> bool:
    """True when events after `after` may have existed that history no longer holds.

    `after == ZERO` means "from the very beginning" (a client that connected to an empty
    channel): only trimming can have lost anything. Any other position must belong to the
    history that exists now: a position history has never held (older than its first entry
    with nothing trimmed, i.e. history was recreated, or newer than its last) is a gap too.
    """
    if bounds.max_deleted > after:
        return True
    if after == ZERO:
        return False
    if not bounds.exists or after > bounds.last:
        return True
    return bounds.max_deleted == ZERO and after < bounds.first
