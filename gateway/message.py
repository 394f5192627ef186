"""The published message: its JSON format, its validation, and how it is framed for the wire.

The JSON format is flask-sse's, so its publishers work unchanged:
`{"data": <any JSON>, "type": "<event name>", "id": "<publisher's id>", "retry": <ms>}`,
with `event` accepted as an alias of `type`. The gateway adds `stream_id`, the id it assigned.
"""

import json
import re
from typing import Any, Dict, Optional, Sequence

from . import wire
from .ids import EventId, HistoryBounds, format_cursor, format_id, history_gap, parse_id

_CHANNEL = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class InvalidMessage(ValueError):
    """A message a publisher must fix: the text says what is wrong."""


def check_channel(name: str) -> str:
    if not _CHANNEL.fullmatch(name):
        raise InvalidMessage(
            f"invalid channel name {name[:140]!r}: use 1-128 of A-Z a-z 0-9 _ . : -"
        )
    return name


class Message:
    """One event on one channel. Immutable once built; its wire bytes are computed once."""

    __slots__ = ("channel", "data", "event", "source_id", "retry", "event_id", "shared", "_body",
                 "_frame", "_chunk")

    def __init__(
        self,
        channel: str,
        data: str,
        event: Optional[str] = None,
        source_id: Optional[str] = None,
        retry: Optional[int] = None,
        event_id: Optional[EventId] = None,
    ) -> None:
        self.channel = channel
        self.data = data
        self.event = event
        self.source_id = source_id
        self.retry = retry
        self.event_id = event_id
        # Whether `frame` is what every one-channel subscriber gets (a raw message with a
        # publisher's id needs each connection's own cursor in its `id:` line).
        self.shared = event_id is not None or source_id is None
        self._body: Optional[bytes] = None
        self._frame: Optional[bytes] = None
        self._chunk: Optional[bytes] = None

    def with_id(self, event_id: EventId) -> "Message":
        return Message(self.channel, self.data, self.event, self.source_id, self.retry, event_id)

    @property
    def body(self) -> bytes:
        """The event's lines without its `id` line: shared by every subscriber."""
        if self._body is None:
            self._body = wire.encode_body(self.data, self.event, self.retry)
        return self._body

    @property
    def frame(self) -> bytes:
        """The whole event as a one-channel stream sends it: encoded once, shared by all."""
        if self._frame is None:
            tail = b""
            if self.event_id is not None:
                tail = wire.encode_id(format_cursor((self.channel,), {self.channel: self.event_id},
                                                    self.source_id))
            self._frame = self.body + tail + b"\n"
        return self._frame

    @property
    def chunk(self) -> bytes:
        """`frame` in HTTP/1.1 chunked framing, for writing straight to a socket."""
        if self._chunk is None:
            self._chunk = wire.http_chunk(self.frame)
        return self._chunk

    def to_json(self) -> str:
        """The broker payload, without the gateway id (the broker adds it)."""
        payload: Dict[str, Any] = {"data": self.data}
        if self.event:
            payload["type"] = self.event
        if self.source_id is not None:
            payload["id"] = self.source_id
        if self.retry is not None:
            payload["retry"] = self.retry
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)

    def to_dict(self) -> Dict[str, Any]:
        """The long-poll form of the event (the cursor is added by the transport)."""
        # The same data as the event stream delivers, whose lines always end in LF.
        item: Dict[str, Any] = {"event": self.event or "message",
                                "data": wire.normalize_newlines(self.data)}
        if self.source_id is not None:
            item["sourceId"] = self.source_id
        return item

    def __repr__(self) -> str:
        ident = format_id(self.event_id) if self.event_id else None
        return f"Message({self.channel!r}, id={ident}, event={self.event!r}, {len(self.data)} chars)"


#: The event that tells a client that events it asked for are gone from history.
RESET_EVENT = "gateway-reset"


def reset_message(channels: Sequence[str], reason: str) -> Message:
    data = json.dumps({"channels": list(channels), "reason": reason}, separators=(",", ":"))
    return Message(channels[0], data, event=RESET_EVENT)


class HistoryLost(Message):
    """The `gateway-reset` for a channel's open streams when its history lost events while the
    broker's connection was down; `bounds` is what history held when the broker read it, after
    subscribing again. A stream that resumed from the new history meanwhile lost nothing: each
    stream asks `concerns` (transports.Session.accept)."""

    __slots__ = ("bounds",)

    def __init__(self, channel: str, bounds: HistoryBounds) -> None:
        super().__init__(channel, reset_message([channel], "history-lost").data, event=RESET_EVENT)
        self.bounds = bounds

    def concerns(self, position: EventId) -> bool:
        """Whether a stream at `position` lost events."""
        bounds = self.bounds
        if bounds.exists and position > bounds.last:
            # Read from history after the broker was: every later event reaches it live.
            return False
        return history_gap(position, bounds)


def build_message(
    channel: str,
    data: Any,
    event: Optional[str] = None,
    source_id: Optional[str] = None,
    retry: Optional[int] = None,
) -> Message:
    """Validate a publisher's fields; raises InvalidMessage naming the bad one."""
    if data is None:
        raise InvalidMessage("'data' is required")
    if event is not None:
        if not isinstance(event, str):
            raise InvalidMessage("'event' must be a string")
        _check(event, "event")
    if source_id is not None:
        if not isinstance(source_id, str):
            raise InvalidMessage("'id' must be a string")
        _check(source_id, "id")
    if retry is not None and (
        isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= 86_400_000
    ):
        raise InvalidMessage("'retry' must be an integer number of milliseconds, 0 to 86400000")
    return Message(channel, wire.format_data(data), event or None, source_id, retry)


def _check(value: str, name: str) -> None:
    try:
        wire.check_field(name, value)
    except wire.FieldError as error:
        raise InvalidMessage(str(error)) from None


def from_publish_body(channel: str, body: Any) -> Message:
    """A message from the JSON object a publisher POSTed or passed to the Python API."""
    if not isinstance(body, dict):
        raise InvalidMessage("the body must be a JSON object with a 'data' field")
    unknown = set(body) - {"data", "event", "type", "id", "retry"}
    if unknown:
        raise InvalidMessage(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "event" in body and "type" in body and body["event"] != body["type"]:
        raise InvalidMessage("'event' and 'type' are aliases; give one")
    event = body.get("event", body.get("type"))
    return build_message(channel, body.get("data"), event, body.get("id"), body.get("retry"))


def from_broker_payload(channel: str, payload: bytes) -> Message:
    """A message as it arrives from the broker: JSON in our format, or any other text as data.

    Raises InvalidMessage for a JSON object that is not a valid message (e.g. no `data`).
    """
    text = payload.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return Message(channel, text)
    if not isinstance(body, dict):
        return Message(channel, text)
    event_id = None
    if "stream_id" in body:
        event_id = parse_id(str(body.pop("stream_id")))
        if event_id is None:
            raise InvalidMessage("'stream_id' is not a stream id")
    if "data" not in body:
        raise InvalidMessage("'data' is required")
    event = body.get("type", body.get("event"))
    message = build_message(channel, body["data"], event, _optional_str(body.get("id")),
                            body.get("retry"))
    return message.with_id(event_id) if event_id else message


def _optional_str(value: Any) -> Optional[str]:
    # flask-sse publishers often send numeric ids.
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)
