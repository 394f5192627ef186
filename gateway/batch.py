"""The batch publish format: many messages, each naming its channel, in one request body.

The same list in either of two encodings:

- `application/x-ndjson`: one JSON object per line (LF, or CRLF); lines of only whitespace
  are skipped, so a final newline is fine;
- `application/json`: a JSON array of objects.

Each object is a message as `POST /publish/<channel>` takes it (`data`, `event` or `type`,
`id`, `retry`) plus `channel`. Every item meets the single publish's rule (message.py) and its
size limit, counted on the item's own JSON text; the first that fails refuses the batch with
`InvalidItem`, which names its index (from 0, counting items, not blank lines). Pure functions.
"""

import re
from typing import Any, List

from .message import JSON_DECODER, InvalidMessage, Message, check_channel, from_publish_body

_SPACE = re.compile(r"[ \t\n\r]*")


class InvalidItem(InvalidMessage):
    """Item `index` of a batch is not a valid message; `kind` says how (the HTTP error name)."""

    def __init__(self, index: int, kind: str, why: str, too_large: bool = False,
                 line: int = 0) -> None:
        super().__init__(f"item {index}{f' (line {line})' if line else ''}: {why}")
        self.index, self.kind, self.too_large = index, kind, too_large


def parse_ndjson(raw: bytes, max_item: int) -> List[Message]:
    """The messages of an NDJSON body, in order; raises InvalidItem."""
    messages: List[Message] = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        index = len(messages)
        if len(line) > max_item:
            raise InvalidItem(index, "request entity too large", "larger than the maximum "
                              f"message size of {max_item} bytes", too_large=True, line=number)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidItem(index, "invalid json", f"not UTF-8: {error.reason} at byte "
                              f"{error.start} of the line", line=number) from None
        try:
            body = JSON_DECODER.decode(text)
        except (ValueError, RecursionError) as error:
            raise InvalidItem(index, "invalid json", f"not valid JSON: {error}",
                              line=number) from None
        messages.append(item_message(index, body, number))
    return messages


def parse_array(raw: bytes, max_item: int) -> List[Message]:
    """The messages of a JSON array body, in order; raises InvalidMessage for a body that is
    no array, InvalidItem for a bad item."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidMessage(f"the body is not UTF-8: {error.reason} at byte {error.start}") from None
    position = _SPACE.match(text).end()
    if text[position:position + 1] != "[":
        raise InvalidMessage("the body must be a JSON array of message objects, each with "
                             "'channel' and 'data'")
    position = _SPACE.match(text, position + 1).end()
    messages: List[Message] = []
    if text[position:position + 1] == "]":
        return _end(text, position + 1, messages)
    while True:
        index = len(messages)
        try:
            body, end = JSON_DECODER.raw_decode(text, position)
        except (ValueError, RecursionError) as error:
            raise InvalidItem(index, "invalid json", f"not valid JSON: {error}") from None
        # A character is at most 4 bytes: only a long item needs counting.
        if (end - position) * 4 > max_item and len(text[position:end].encode("utf-8")) > max_item:
            raise InvalidItem(index, "request entity too large", "larger than the maximum "
                              f"message size of {max_item} bytes", too_large=True)
        messages.append(item_message(index, body))
        position = _SPACE.match(text, end).end()
        mark = text[position:position + 1]
        if mark == "]":
            return _end(text, position + 1, messages)
        if mark != ",":
            raise InvalidItem(index + 1, "invalid json", f"expected ',' or ']' at character "
                              f"{position} of the body")
        position = _SPACE.match(text, position + 1).end()


def _end(text: str, position: int, messages: List[Message]) -> List[Message]:
    if _SPACE.match(text, position).end() != len(text):
        raise InvalidMessage(f"the body goes on after its array, at character {position}")
    return messages


def item_message(index: int, body: Any, line: int = 0) -> Message:
    """One item's message; raises InvalidItem naming `index` (and its `line` if given)."""
    if not isinstance(body, dict):
        raise InvalidItem(index, "invalid message", "must be a JSON object with 'channel' "
                          "and 'data'", line=line)
    channel = body.pop("channel", None)
    if not isinstance(channel, str):
        raise InvalidItem(index, "invalid message", "'channel' is required and must be a string",
                          line=line)
    try:
        check_channel(channel)
    except InvalidMessage as error:
        raise InvalidItem(index, "invalid channel", str(error), line=line) from None
    try:
        return from_publish_body(channel, body)
    except InvalidMessage as error:
        raise InvalidItem(index, "invalid message", str(error), line=line) from None
