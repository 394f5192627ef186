"""Property-based fuzzing of the event-stream encoder and parser (gateway/wire.py), no sockets.

The parser is checked against a literal transcription of the WHATWG "interpret an event
stream" algorithm, written here over the whole input at once: the real parser is incremental,
so any chunking mistake (CR at a chunk end, a split BOM or UTF-8 sequence) shows as a difference.
"""

from __future__ import annotations

import json
import re

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.wire import (
    EventStreamParser,
    FieldError,
    ParsedEvent,
    check_field,
    encode_body,
    encode_comment,
    encode_event,
    encode_id,
    encode_retry,
    format_data,
    normalize_newlines,
)

# Pieces that matter to the format, mixed into otherwise arbitrary text.
_TRICKY = ["\r", "\n", "\r\n", "\0", ":", " ", "\t", "\ufeff", "data: ", "id: ", "event: ",
           "retry: 1", ": c", "\u2028", "\u2029", "\x85", "\x0b", "é", "日", "🎉"]
_TRICKY_BYTES = [b"\r", b"\n", b"\r\n", b"\0", b":", b" ", b"data", b"id", b"event", b"retry",
                 b"message", b"7", b"0", b"x", b"\xef\xbb\xbf", b"\xef", b"\xbb", b"\xc3", b"\xa9",
                 b"\xf0\x9f\x8e\x89", b"\xf0\x9f", b"\xff", b"\xed\xa0\x80", b"\xe2\x80\xa8"]


def texts(surrogates: bool = False, max_size: int = 40) -> st.SearchStrategy[str]:
    # characters() alone may give lone surrogates: codec="utf-8" keeps to encodable text.
    chars = st.characters(exclude_categories=()) if surrogates else st.characters(codec="utf-8")
    return st.lists(chars | st.sampled_from(_TRICKY), max_size=max_size).map("".join)


def single_line(text: str) -> str:
    return re.sub("[\r\n\0]", "", text)


FIELD_VALUES = texts().map(single_line)
RETRIES = st.none() | st.integers(0, 86_400_000)
WIRE_BYTES = st.binary(max_size=200) | st.lists(st.sampled_from(_TRICKY_BYTES), max_size=60).map(
    b"".join)


def parse_chunks(*chunks: bytes) -> tuple[list[ParsedEvent], EventStreamParser]:
    parser = EventStreamParser()
    events: list[ParsedEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


def state(events: list[ParsedEvent], parser: EventStreamParser) -> tuple:
    return events, parser.last_event_id, parser.retry, parser.comments


def as_received(data: str) -> str:
    """What a client gets of `data`: CRLF, then any remaining CR, as LF."""
    return data.replace("\r\n", "\n").replace("\r", "\n")


def reference_parse(raw: bytes) -> tuple:
    """The WHATWG algorithm step by step, over the whole stream decoded at once."""
    text = raw.decode("utf-8", errors="replace")
    if text[:1] == "\ufeff":
        text = text[1:]
    # The last piece has no line end yet: it is never processed.
    lines = re.split("\r\n|\r|\n", text)[:-1]
    events, data, event_type, id_buffer, last_id, retry, comments = [], "", "", "", "", None, 0
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data == "":
                event_type = ""
                continue
            if data[-1] == "\n":
                data = data[:-1]
            events.append(ParsedEvent(event_type or "message", data, last_id))
            data, event_type = "", ""
            continue
        if line[0] == ":":
            comments += 1
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value[:1] == " ":
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                id_buffer = value
        elif name == "retry":
            # Only ASCII digits; like Chromium, a time that does not fit in 64 bits is ignored.
            if value and all(c in "0123456789" for c in value):
                number = value.lstrip("0") or "0"
                if len(number) <= 20 and int(number) < 2**64:
                    retry = int(number)
    return events, last_id, retry, comments


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(raw)) for cut in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)])]


# -- the encoder ------------------------------------------------------------------------------


@given(data=texts(), event=st.none() | FIELD_VALUES, id=st.none() | FIELD_VALUES, retry=RETRIES)
@example(data="a\r\r\nb\n\rc\r", event="", id="", retry=0)
@example(data="", event="message", id=None, retry=None)
@example(data="\ufeff", event=" lead", id=" chat=1-0 x", retry=None)
def test_an_encoded_event_parses_back_to_its_data_type_id_and_retry(data, event, id, retry):
    events, parser = parse_chunks(encode_event(data, event=event, id=id, retry=retry))
    assert events == [ParsedEvent(event or "message", as_received(data), id or "")]
    assert parser.retry == retry
    assert normalize_newlines(data) == as_received(data)


@given(data=texts(surrogates=True), event=st.none() | texts(surrogates=True),
       id=st.none() | texts(surrogates=True), retry=RETRIES)
@example(data="x", event="a\ndata: injected", id=None, retry=None)
@example(data="x", event=None, id="1\rretry: 1", retry=None)
@example(data="x", event="ok", id="1\0", retry=None)
@example(data="\ud800", event=None, id=None, retry=None)
def test_no_input_injects_a_field_the_encoder_refuses_instead(data, event, id, retry):
    fields = [v for v in (event, id) if v is not None]
    unsafe = any(re.search("[\r\n\0]", v) for v in fields)
    unencodable = any(re.search("[\ud800-\udfff]", v) for v in [data, *fields])
    try:
        frame = encode_event(data, event=event, id=id, retry=retry)
    except FieldError:
        assert unsafe
        return
    except UnicodeEncodeError:
        assert unencodable
        return
    assert not unsafe and not unencodable
    lines = frame.split(b"\n")
    assert lines[-2:] == [b"", b""] and b"\r" not in frame
    assert all(re.match(rb"(event|data|id|retry): ", line) for line in lines[:-2])
    events, parser = parse_chunks(frame)
    assert events == [ParsedEvent(event or "message", as_received(data), id or "")]
    assert parser.retry == retry


@given(value=texts())
@example(value="\r")
@example(value="a\0")
def test_a_field_value_passes_the_check_unchanged_or_is_refused_for_cr_lf_or_nul(value):
    unsafe = re.search("[\r\n\0]", value) is not None
    try:
        assert check_field("event", value) == value
    except FieldError as error:
        assert unsafe and "event" in str(error)
    else:
        assert not unsafe


@given(event_id=texts())
def test_an_id_line_sets_the_last_event_id_and_dispatches_nothing(event_id):
    try:
        line = encode_id(event_id)
    except FieldError:
        assert re.search("[\r\n\0]", event_id)
        return
    events, parser = parse_chunks(line + b"\n")
    assert events == [] and parser.last_event_id == event_id


@given(text=texts())
@example(text="a\rdata: x\r\n\r\nid: 3\nretry: 5")
def test_a_comment_never_carries_an_event_an_id_or_a_retry(text):
    events, parser = parse_chunks(encode_comment(text), encode_body("after") + b"\n")
    assert events == [ParsedEvent("message", "after", "")]
    assert parser.comments == len(re.split("\r\n|\r|\n", text))
    assert parser.retry is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(value=JSON)
@example(value={"line": "a\r\nb", "sep": "\u2028"})
def test_json_data_is_one_data_line_that_decodes_to_the_same_value(value):
    text = format_data(value)
    if isinstance(value, str):
        assert text == value
        return
    assert "\r" not in text and "\n" not in text
    events, _ = parse_chunks(encode_event(text))
    assert json.loads(events[0].data) == value


# -- the parser -------------------------------------------------------------------------------


@given(raw=WIRE_BYTES)
@example(raw=b"retry: " + b"9" * 5000 + b"\n")
@example(raw=b"retry: " + b"0" * 5000 + b"7\n")
@example(raw=b"retry: 18446744073709551616\nretry: 18446744073709551615\n")
@example(raw=b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\r\r")
@example(raw=b"data: a\r\n\r\nid: 1\0\nid: 2\n\nevent: e\n\ndata\n\n")
def test_the_parser_follows_the_spec_on_any_bytes(raw):
    events, parser = parse_chunks(raw)
    assert state(events, parser) == reference_parse(raw)


@given(raw=WIRE_BYTES, cuts=st.lists(st.integers(0, 200), max_size=12))
@example(raw=b"data: a\r\ndata: b\r\r\n", cuts=[8, 18, 19])
@example(raw=b"\xef\xbb\xbfdata: \xc3\xa9\r\n\r\n", cuts=[1, 2, 10, 11])
@example(raw=b"data: a\r", cuts=[7, 7])
def test_chunk_boundaries_anywhere_give_the_same_events(raw, cuts):
    whole = state(*parse_chunks(raw))
    assert state(*parse_chunks(*split_at(raw, cuts))) == whole
    assert state(*parse_chunks(*[raw[i:i + 1] for i in range(len(raw))])) == whole


def encoded_events() -> st.SearchStrategy[bytes]:
    one = st.one_of(
        st.builds(lambda d, e, i, r: encode_event(d, event=e, id=i, retry=r),
                  texts(), st.none() | FIELD_VALUES, st.none() | FIELD_VALUES, RETRIES),
        st.builds(encode_comment, texts()),
        st.builds(encode_retry, st.integers(0, 86_400_000)),
        st.builds(lambda i: encode_id(i) + b"\n", FIELD_VALUES),
    )
    return st.lists(one, max_size=6).map(b"".join)


@given(stream=encoded_events(), cuts=st.lists(st.integers(0, 400), max_size=12),
       crlf=st.booleans())
def test_a_stream_of_our_events_parses_the_same_however_it_is_cut(stream, cuts, crlf):
    if crlf:  # the format allows CRLF line ends too: a proxy may rewrite them
        stream = stream.replace(b"\n", b"\r\n")
    whole = state(*parse_chunks(stream))
    assert whole == reference_parse(stream)
    assert state(*parse_chunks(*split_at(stream, cuts))) == whole


@pytest.mark.parametrize("digits", [4301, 10_000])
def test_an_absurdly_long_retry_is_ignored_not_fatal(digits):
    events, parser = parse_chunks(b"retry: 3000\n", b"retry: " + b"1" * digits + b"\n",
                                  b"data: still parsing\n\n")
    assert parser.retry == 3000
    assert events == [ParsedEvent("message", "still parsing", "")]
