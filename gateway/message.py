"""The published message: its JSON format, the one validation rule for every message from
outside, and how it is framed for the wire.

The JSON format is flask-sse's, so its publishers work unchanged:
`{"data": <any JSON>, "type": "<event name>", "id": "<publisher's id>", "retry": <ms>}`,
with `event` accepted as an alias of `type`.

Every message from outside (a publish body or its query, a Redis pub/sub payload, a history
entry read back) meets the same rule once, where it enters: UTF-8 decoded strictly; JSON as
RFC 8259 defines it (no NaN or Infinity, which Python's json accepts); text made of Unicode
scalar values (no lone surrogates, which JSON's `\\u` escapes carry into any string or key,
and which no UTF-8 encoder can write); and the field rules of `build_message`. What fails
raises InvalidMessage naming the field, and is never stored nor delivered.
"""

import json
import math
import re
from typing import Any, Dict, Optional, Sequence

from . import wire
from .http import h1
from .ids import EventId, HistoryBounds, format_cursor, format_id, history_gap

_CHANNEL = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class InvalidMessage(ValueError):
    """A message a publisher must fix: the text says what is wrong."""


class InvalidJson(InvalidMessage):
    """A body that is not JSON in UTF-8."""


def check_channel(name: str) -> str:
    if not _CHANNEL.fullmatch(name):
        raise InvalidMessage(
            f"invalid channel name {name[:140]!r}: use 1-128 of A-Z a-z 0-9 _ . : -"
        )
    return name


class Message:
    """One event on one channel. Immutable once built; its wire bytes are computed once.

    `body`: the event's lines without its `id` line, shared by every subscriber. `frame`: the
    whole event as a one-channel stream sends it. `chunk`: `frame` in HTTP/1.1 chunked framing,
    for writing straight to a socket. Each is encoded on first use and then read as a plain
    attribute (an unset slot's read lands in `__getattr__`, once): the fan-out reads one per
    subscriber, and a property would cost a call each time.
    """

    __slots__ = ("channel", "data", "event", "source_id", "retry", "event_id", "shared", "body",
                 "frame", "chunk")

    body: bytes
    frame: bytes
    chunk: bytes

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

    def __getattr__(self, name: str) -> bytes:
        if name == "body":
            value = wire.encode_body(self.data, self.event, self.retry)
        elif name == "frame":
            event_id = self.event_id
            if event_id is None:
                value = wire.encode_frame(self.body)
            elif self.source_id is None:  # the one-channel cursor is the event's own id
                value = wire.encode_numbered(self.body, *event_id)
            else:
                value = wire.encode_frame(self.body, format_cursor(
                    (self.channel,), {self.channel: event_id}, self.source_id))
        elif name == "chunk":
            value = h1.encode_chunk(self.frame)
        else:
            raise AttributeError(f"'Message' object has no attribute {name!r}")
        setattr(self, name, value)
        return value

    def with_id(self, event_id: EventId) -> "Message":
        return Message(self.channel, self.data, self.event, self.source_id, self.retry, event_id)

    def to_json(self) -> str:
        """The broker payload, without the gateway id (the broker adds it)."""
        # The object built from its encoded strings: encoding a str alone takes the encoder's
        # fast path, where a dict would build a new C encoder at every call.
        encode = _ENCODER.encode
        text = '{"data":' + encode(self.data)
        if self.event:
            text += ',"type":' + encode(self.event)
        if self.source_id is not None:
            text += ',"id":' + encode(self.source_id)
        if self.retry is not None:
            text += f',"retry":{int(self.retry)}'
        return text + "}"

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
        # Not the same for every stream: each one's Session.accept asks `concerns`.
        self.shared = False

    def concerns(self, position: EventId) -> bool:
        """Whether a stream at `position` lost events."""
        bounds = self.bounds
        if bounds.exists and position > bounds.last:
            # Read from history after the broker was: every later event reaches it live.
            return False
        return history_gap(position, bounds)


class Run(Message):
    """Consecutive events of one channel, received together, as one write: for the streams
    that take every event's shared bytes as they are (`EventStream.fast`). Their frames are
    joined once, for every such stream; only `frame` and `chunk` (one chunk for them all) are
    read of it, and its `event_id` is the last one's."""

    __slots__ = ()

    def __init__(self, messages: Sequence[Message]) -> None:
        last = messages[-1]
        super().__init__(last.channel, "", event_id=last.event_id)
        self.frame = b"".join([message.frame for message in messages])


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
        _check_field(event, "event")
    if source_id is not None:
        if not isinstance(source_id, str):
            raise InvalidMessage("'id' must be a string")
        _check_field(source_id, "id")
    if retry is not None and (
        isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= 86_400_000
    ):
        raise InvalidMessage("'retry' must be an integer number of milliseconds, 0 to 86400000")
    try:
        text = wire.format_data(data)
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidMessage(f"'data' must be a string or a JSON value: {error}") from None
    # Checked as the compact JSON the client gets: that covers every nested string and key.
    check_text(text, "data")
    return Message(channel, text, event or None, source_id, retry)


def check_text(value: str, name: str) -> str:
    """Refuse a lone surrogate: it is not a Unicode scalar value, so no UTF-8 can carry it."""
    # An ASCII string (the common case) is known to be one without looking at it.
    if not value.isascii():
        found = _SURROGATE.search(value)
        if found:
            raise InvalidMessage(
                f"'{name}' contains U+{ord(found.group()):04X}, a lone surrogate: text must be "
                "valid Unicode (a \\u escape of a surrogate needs its pair)")
    return value


def _check_field(value: str, name: str) -> None:
    try:
        wire.check_field(name, value)
    except wire.FieldError as error:
        raise InvalidMessage(str(error)) from None
    check_text(value, name)


class _NotFinite(ValueError):
    """NaN, Infinity, or a number too large for a double: Python's json takes them, JSON has none."""


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(f"{text[:40]} is too large for a number")
    return value


#: JSON as RFC 8259 defines it: NaN, Infinity and numbers too large for a double refused.
#: Made once: `json.loads` with options builds a decoder at every call.
JSON_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_loads = JSON_DECODER.decode


def parse_json(raw: bytes) -> Any:
    """A publish body as JSON (RFC 8259) in UTF-8; raises InvalidJson saying what is wrong."""
    try:
        return _loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidJson(f"the body is not UTF-8: {error.reason} at byte {error.start}") from None
    except (ValueError, RecursionError) as error:
        raise InvalidJson(f"the body is not valid JSON: {error}") from None


def decode_text(raw: bytes, what: str) -> str:
    """Bytes from outside as text: UTF-8, strictly; raises InvalidMessage naming `what`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidMessage(f"{what} is not UTF-8: {error.reason} at byte {error.start}") from None


def from_publish_body(channel: str, body: Any) -> Message:
    """A message from the JSON object a publisher POSTed or passed to the Python API."""
    if not isinstance(body, dict):
        raise InvalidMessage("the body must be a JSON object with a 'data' field")
    unknown = set(body) - {"data", "event", "type", "id", "retry"}
    if unknown:
        names = ", ".join(sorted(repr(name[:40]) for name in unknown))
        raise InvalidMessage(f"unknown field(s): {names}")
    if "event" in body and "type" in body and body["event"] != body["type"]:
        raise InvalidMessage("'event' and 'type' are aliases; give one")
    event = body.get("event", body.get("type"))
    return build_message(channel, body.get("data"), event, body.get("id"), body.get("retry"))


def from_broker_payload(channel: str, payload: bytes) -> Message:
    """A message as the broker carries it: JSON in our format, or any other text as the data.

    Raises InvalidMessage for bytes that are not UTF-8 and for a JSON object that is not a
    valid message (no `data`, a bad field, NaN, a lone surrogate). Any `stream_id` field is
    ignored like every unknown field: an event's id never comes from its message.
    """
    text = decode_text(payload, "the message")
    try:
        body = _loads(text)
    except json.JSONDecodeError:
        return Message(channel, text)  # not JSON: any text is the data
    except (ValueError, RecursionError) as error:
        # JSON's syntax, but not a value it can carry (NaN, a number too long, nesting too deep):
        # a message object with one is refused rather than shown to clients as text.
        if text.lstrip().startswith("{"):
            raise InvalidMessage(f"the message is not valid JSON: {error}") from None
        return Message(channel, text)
    if not isinstance(body, dict):
        return Message(channel, text)
    if "data" not in body:
        raise InvalidMessage("'data' is required")
    event = body.get("type", body.get("event"))
    return build_message(channel, body["data"], event, _optional_str(body.get("id")),
                         body.get("retry"))


def _optional_str(value: Any) -> Optional[str]:
    # flask-sse publishers often send numeric ids.
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)
