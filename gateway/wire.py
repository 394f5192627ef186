"""The WHATWG HTML event-stream format: events to bytes and bytes to events, with no I/O;
and the HTTP/1.1 chunked framing those bytes travel in. Every frame the gateway sends is made here.

References: https://html.spec.whatwg.org/multipage/server-sent-events.html
("Parsing an event stream" and "Interpreting an event stream"); RFC 9112, section 7.1.
"""

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any, List, Optional

# The spec's grammar: end-of-line = ( cr lf / cr / lf ).
_LINE_BREAK = re.compile("\r\n|\r|\n")
_MAX_RETRY = 2**64 - 1


class FieldError(ValueError):
    """An `id` or `event` value that would break out of its line or be ignored by browsers."""


def check_field(name: str, value: str) -> str:
    """Refuse CR, LF and NUL in a single-line field: they would inject new fields or be dropped."""
    # Three scans cost a fifth of a regex search: encode_id runs once per delivery on streams of
    # several channels, whose cursors differ per connection.
    if "\r" in value or "\n" in value or "\0" in value:
        raise FieldError(f"{name} must not contain CR, LF or NUL")
    return value


def normalize_newlines(text: str) -> str:
    """CR and CRLF as LF: what a client receives of data sent as an event stream."""
    return _LINE_BREAK.sub("\n", text)


def format_data(value: Any) -> str:
    """A string is sent as is; any other JSON value as compact JSON, as flask-sse does.

    Raises ValueError for NaN and infinities, which JSON cannot carry.
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_body(data: str, event: Optional[str] = None, retry: Optional[int] = None) -> bytes:
    """The `event`, `retry` and `data` lines of one event, without `id` and the closing blank line.

    Every line of the data becomes its own `data:` line; the receiver joins them with LF, so CR
    and CRLF in the data arrive as LF, which is all the format can carry. An event type with CR,
    LF or NUL raises FieldError: it would inject fields.
    """
    if not event and retry is None and "\n" not in data and "\r" not in data:
        return ("data: " + data + "\n").encode("utf-8")  # the common event: one data line
    parts = []
    if event:
        parts.append(f"event: {check_field('event', event)}\n")
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    return "".join(parts).encode("utf-8")


def encode_id(event_id: str) -> bytes:
    """An `id` line; FieldError for CR, LF or NUL, which would inject fields or be ignored."""
    return f"id: {check_field('id', event_id)}\n".encode("utf-8")


def encode_frame(body: bytes, event_id: Optional[str] = None) -> bytes:
    """An event from its body (`encode_body`): its `id` line, if any, and the blank line that
    dispatches it. With no body, the `id` line alone sets the client's last event id and
    dispatches nothing: the data buffer is empty (the spec's "dispatch the event", step 2)."""
    if event_id is None:
        return body + b"\n"
    return body + encode_id(event_id) + b"\n"


def encode_numbered(body: bytes, ms: int, seq: int) -> bytes:
    """`encode_frame` with a stream id `<ms>-<seq>` as the `id`: digits and a dash, which
    need no check."""
    return b"%sid: %d-%d\n\n" % (body, ms, seq)


def encode_event(
    data: str,
    event: Optional[str] = None,
    id: Optional[str] = None,
    retry: Optional[int] = None,
) -> bytes:
    """One complete event, ready for the wire."""
    return encode_frame(encode_body(data, event, retry), id)


def encode_comment(text: str = "") -> bytes:
    """A comment block: ignored by clients, keeps proxies and idle-timeouts at bay."""
    lines = _LINE_BREAK.split(text)
    return ("".join(f": {line}\n" if line else ":\n" for line in lines) + "\n").encode("utf-8")


def encode_retry(milliseconds: int) -> bytes:
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def encode_turn_away(milliseconds: int, why: str) -> bytes:
    """A retry delay and a comment saying why, for a stream that ends at once.

    No blank line: nothing is dispatched, so the client's last event ID stays what it was
    (a dispatch sets it from this connection's ID buffer, which starts empty), and its next
    connection resumes from there.
    """
    return f"retry: {int(milliseconds)}\n: {_LINE_BREAK.sub(' ', why)}\n".encode("utf-8")


def encode_padding(size: int) -> bytes:
    """A comment line of `size` spaces: clients ignore it, buffers on the way fill up."""
    return b":" + b" " * size + b"\n"


@dataclass(frozen=True)
class ParsedEvent:
    type: str
    data: str
    last_event_id: str


class EventStreamParser:
    """Feed bytes, get dispatched events: the spec's "interpret an event stream" algorithm.

    `retry` holds the last valid reconnection time, `last_event_id` the last event ID string,
    `comments` how many comment lines were seen (heartbeats). An event still open when the
    stream ends is never returned, as the spec requires.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._bom_checked = False
        self._skip_lf = False
        self._data: List[str] = []
        self._event_type = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry: Optional[int] = None
        self.comments = 0

    def feed(self, chunk: bytes) -> List[ParsedEvent]:
        text = self._decoder.decode(chunk)
        if not self._bom_checked:
            if not text:
                return []
            # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
            if text[0] == "\ufeff":
                text = text[1:]
            self._bom_checked = True
        if self._skip_lf and text:
            # A CR ended the previous chunk; an LF starting this one belongs to that CRLF.
            if text[0] == "\n":
                text = text[1:]
            self._skip_lf = False
        self._buffer += text
        events: List[ParsedEvent] = []
        start = 0
        buffer = self._buffer
        length = len(buffer)
        while True:
            match = _LINE_BREAK.search(buffer, start)
            if match is None:
                break
            if match.group() == "\r" and match.end() == length:
                # Cannot tell CR from CRLF yet: treat it as a line end and drop a following LF.
                self._skip_lf = True
            event = self._process_line(buffer[start:match.start()])
            if event is not None:
                events.append(event)
            start = match.end()
        self._buffer = buffer[start:]
        return events

    def _process_line(self, line: str) -> Optional[ParsedEvent]:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if value and value.isascii() and value.isdigit():
                # Chromium ignores a time that does not fit in 64 bits (and int() refuses a
                # string of over 4,300 digits, leading zeros included).
                digits = value.lstrip("0") or "0"
                if len(digits) <= 20 and int(digits) <= _MAX_RETRY:
                    self.retry = int(digits)
        return None

    def _dispatch(self) -> Optional[ParsedEvent]:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._event_type = ""
            return None
        # Joining with LF is the spec's "append data + LF, then drop the last LF".
        event = ParsedEvent(self._event_type or "message", "\n".join(self._data), self.last_event_id)
        self._data = []
        self._event_type = ""
        return event
