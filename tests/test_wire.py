"""The event-stream wire format, with no I/O: the encoder, field checks and the spec parser.

The parser cases follow the WHATWG HTML "interpret an event stream" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence

import pytest

from gateway.wire import (
    EventStreamParser,
    FieldError,
    ParsedEvent,
    check_field,
    encode_body,
    encode_comment,
    encode_event,
    encode_frame,
    encode_id,
    encode_padding,
    encode_retry,
    encode_turn_away,
    format_data,
)


def parse(*chunks: bytes) -> tuple[list[ParsedEvent], EventStreamParser]:
    parser = EventStreamParser()
    events: list[ParsedEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


def parse_bytewise(data: bytes) -> tuple[list[ParsedEvent], EventStreamParser]:
    return parse(*[data[i:i + 1] for i in range(len(data))])


def as_tuples(events: Sequence[ParsedEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in events]


def normalise_line_ends(text: str) -> str:
    return re.sub("\r\n|\r", "\n", text)


# -- encoder ----------------------------------------------------------------------------------


def test_plain_event_is_one_data_line_and_a_blank_line():
    assert encode_event("hello") == b"data: hello\n\n"


def test_every_field_of_an_event_is_written_on_its_own_line():
    frame = encode_event("a\nb", event="update", id="7", retry=2500)
    lines = frame.split(b"\n")
    assert frame.endswith(b"\n\n")
    assert sorted(lines[:-2]) == sorted(
        [b"event: update", b"retry: 2500", b"data: a", b"data: b", b"id: 7"]
    )
    # The data lines keep their order.
    assert lines.index(b"data: a") < lines.index(b"data: b")


def test_empty_data_is_encoded_so_that_it_still_dispatches():
    frame = encode_event("")
    events, _ = parse(frame)
    assert as_tuples(events) == [("message", "", "")]


def test_every_kind_of_line_break_in_data_starts_a_new_data_line():
    assert encode_body("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n"


def test_data_that_looks_like_fields_or_comments_stays_data():
    text = "id: 3\nevent: evil\nretry: 1\n: not a comment\n\ndata: x"
    events, parser = parse(encode_event(text))
    assert as_tuples(events) == [("message", text, "")]
    assert parser.retry is None
    assert parser.comments == 0


def test_body_has_no_id_line_and_no_terminating_blank_line():
    body = encode_body("x", event="e")
    assert body == b"event: e\ndata: x\n"
    assert body + encode_id("5") + b"\n" == encode_event("x", event="e", id="5")


def test_empty_event_type_writes_no_event_line():
    assert encode_body("x", event="") == b"data: x\n"
    events, _ = parse(encode_event("x", event=""))
    assert events[0].type == "message"


def test_id_line_sets_the_last_event_id_without_dispatching():
    events, parser = parse(encode_id("chat=1-0,news=0-0") + b"\n")
    assert events == []
    assert parser.last_event_id == "chat=1-0,news=0-0"


def test_comment_is_a_colon_line_and_a_blank_line():
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment() == b":\n\n"


def test_multi_line_comment_cannot_inject_an_event():
    frame = encode_comment("first\ndata: injected\r\nid: 9")
    events, parser = parse(frame)
    assert events == []
    assert parser.comments == 3
    assert parser.last_event_id == ""


def test_retry_frame_sets_the_reconnection_time_only():
    events, parser = parse(encode_retry(2500))
    assert encode_retry(2500) == b"retry: 2500\n\n"
    assert events == []
    assert parser.retry == 2500


@pytest.mark.parametrize("value", ["", "plain", "with space", "a:b", "unicode é日🎉", "tab\there"])
def test_single_line_field_values_pass_the_check_unchanged(value):
    assert check_field("event", value) == value


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\0b", "\r", "\n", "\0", "end\r\n", "\ntail"])
def test_field_value_with_cr_lf_or_nul_is_refused(value):
    with pytest.raises(FieldError) as caught:
        check_field("id", value)
    assert isinstance(caught.value, ValueError)
    assert "id" in str(caught.value)


def test_string_data_is_sent_as_is_even_when_it_looks_like_json():
    assert format_data('{"a": 1}') == '{"a": 1}'
    assert format_data("") == ""


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"b": 1, "a": [1, 2, {"c": None}]}, '{"b":1,"a":[1,2,{"c":null}]}'),
        ({"text": "é日🎉"}, '{"text":"é日🎉"}'),
        ([1, "two"], '[1,"two"]'),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
    ],
)
def test_non_string_data_is_sent_as_compact_json_keeping_key_order_and_unicode(value, expected):
    assert format_data(value) == expected
    assert json.loads(format_data(value)) == value


# -- parser: the spec's algorithm ------------------------------------------------------------


def test_spec_example_stock_ticker_joins_data_lines_with_lf():
    events, _ = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert as_tuples(events) == [("message", "YHOO\n+2\n10", "")]


def test_spec_example_ids_comments_and_leading_spaces():
    stream = (b": test stream\n\ndata: first event\nid: 1\n\n"
              b"data:second event\nid\n\ndata:  third event\n\n")
    events, parser = parse(stream)
    assert as_tuples(events) == [
        ("message", "first event", "1"),
        ("message", "second event", ""),
        ("message", " third event", ""),
    ]
    assert parser.comments == 1


def test_spec_example_data_field_without_colon_and_unfinished_last_event():
    events, _ = parse(b"data\n\ndata\ndata\n\ndata:")
    assert as_tuples(events) == [("message", "", ""), ("message", "\n", "")]


def test_spec_example_space_after_colon_is_optional():
    events, _ = parse(b"data:test\n\ndata: test\n\n")
    assert [e.data for e in events] == ["test", "test"]


def test_one_leading_bom_is_ignored():
    events, _ = parse(b"\xef\xbb\xbfdata: a\n\n")
    assert as_tuples(events) == [("message", "a", "")]


def test_bom_split_across_chunks_is_still_ignored():
    events, _ = parse(b"\xef", b"\xbb", b"\xbfdata: a\n\n")
    assert as_tuples(events) == [("message", "a", "")]


def test_only_one_leading_bom_is_ignored():
    # The second BOM becomes part of the field name "\ufeffdata", which is no field at all.
    events, _ = parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n")
    assert as_tuples(events) == [("message", "b", "")]


def test_bom_after_the_start_of_the_stream_is_not_ignored():
    events, _ = parse(b"data: a\n\n", b"\xef\xbb\xbfdata: b\n\ndata: c\n\n")
    assert [e.data for e in events] == ["a", "c"]


def test_cr_lf_and_crlf_each_end_a_line():
    events, _ = parse(b"data: a\rdata: b\ndata: c\r\ndata: d\r\r\n\n")
    # After "d" come CR (ends its line), CRLF (a blank line: dispatch) and LF (nothing to dispatch).
    assert as_tuples(events) == [("message", "a\nb\nc\nd", "")]


def test_crlf_split_between_chunks_is_one_line_end():
    events, _ = parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert as_tuples(events) == [("message", "a\nb", "")]


def test_cr_at_chunk_end_followed_by_other_text_is_a_line_end():
    events, _ = parse(b"data: a\r", b"data: b\r", b"\r")
    assert as_tuples(events) == [("message", "a\nb", "")]


def test_cr_at_chunk_end_followed_by_empty_chunks_then_lf_is_one_line_end():
    events, _ = parse(b"data: a\r", b"", b"", b"\n\n")
    assert as_tuples(events) == [("message", "a", "")]


def test_crlf_split_between_chunks_right_after_a_split_multibyte_character():
    events, _ = parse(b"data: \xc3", b"\xa9\r", b"\n\r", b"\n")
    assert as_tuples(events) == [("message", "é", "")]


def test_lone_cr_as_blank_line_dispatches():
    events, _ = parse(b"data: a\r\rdata: b\r\r")
    assert [e.data for e in events] == ["a", "b"]


def test_multibyte_utf8_split_across_chunks_is_decoded_whole():
    text = "é日本🎉ü"
    events, _ = parse_bytewise(f"data: {text}\n\n".encode())
    assert as_tuples(events) == [("message", text, "")]


def test_invalid_utf8_is_replaced_not_fatal():
    events, _ = parse(b"data: a\xffb\n\ndata: ok\n\n")
    assert [e.data for e in events] == ["a\ufffdb", "ok"]


def test_comment_lines_count_and_do_not_interrupt_an_event():
    events, parser = parse(b": one\ndata: a\n:\n: keepalive\ndata: b\n\n")
    assert as_tuples(events) == [("message", "a\nb", "")]
    assert parser.comments == 3


def test_comment_alone_dispatches_nothing():
    events, parser = parse(b": keepalive\n\n: keepalive\n\n")
    assert events == []
    assert parser.comments == 2


def test_field_without_colon_has_an_empty_value():
    events, _ = parse(b"id: 5\nevent: x\nevent\ndata: a\nid\n\n")
    assert as_tuples(events) == [("message", "a", "")]


def test_only_one_leading_space_of_a_value_is_stripped():
    events, _ = parse(b"data:  two\n\ndata:\tthree\n\nevent:  x\ndata: y\n\n")
    assert as_tuples(events) == [("message", " two", ""), ("message", "\tthree", ""),
                                 (" x", "y", "")]


def test_only_the_first_colon_separates_name_and_value():
    events, _ = parse(b"data: a: b:c\n\ndata::x\n\n")
    assert [e.data for e in events] == ["a: b:c", ":x"]


def test_field_names_are_case_sensitive_and_unknown_fields_ignored():
    events, parser = parse(b"Data: x\nDATA: y\nfoo: bar\nRetry: 10\n\ndata: z\n\n")
    assert as_tuples(events) == [("message", "z", "")]
    assert parser.retry is None


def test_only_the_final_lf_of_the_data_buffer_is_dropped():
    events, _ = parse(b"data: a\ndata:\n\ndata:\ndata:\n\n")
    assert [e.data for e in events] == ["a\n", "\n"]


def test_event_with_no_data_lines_dispatches_nothing_and_resets_its_type():
    events, _ = parse(b"event: lonely\nid: 3\n\ndata: next\n\n")
    assert as_tuples(events) == [("message", "next", "3")]


def test_data_field_with_empty_value_dispatches_an_empty_string():
    events, _ = parse(b"data:\n\ndata: \n\n")
    assert as_tuples(events) == [("message", "", ""), ("message", "", "")]


def test_event_type_defaults_to_message_and_resets_after_each_dispatch():
    events, _ = parse(b"event: upd\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n")
    assert [e.type for e in events] == ["upd", "message", "message"]


def test_last_event_id_is_set_at_dispatch_not_when_the_id_line_arrives():
    parser = EventStreamParser()
    assert parser.feed(b"id: 5\n") == []
    assert parser.last_event_id == ""
    assert parser.feed(b"\n") == []
    assert parser.last_event_id == "5"


def test_id_persists_across_events_until_changed_or_cleared():
    events, parser = parse(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\nid\ndata: d\n\n")
    assert [e.last_event_id for e in events] == ["7", "7", "8", ""]
    assert parser.last_event_id == ""


def test_id_containing_nul_is_ignored():
    events, parser = parse(b"id: 1\n\ndata: a\nid: 2\x003\n\n")
    assert as_tuples(events) == [("message", "a", "1")]
    assert parser.last_event_id == "1"


def test_nul_in_data_is_kept():
    events, _ = parse(b"data: a\x00b\n\n")
    assert events[0].data == "a\x00b"


@pytest.mark.parametrize("value", ["0", "1500", "007", "86400000"])
def test_retry_of_ascii_digits_sets_the_reconnection_time(value):
    _, parser = parse(f"retry: {value}\n".encode())
    assert parser.retry == int(value)


@pytest.mark.parametrize(
    "value", ["15x", "-1", "1.5", "1e3", " 100", "100 ", "+5", "\u0661\u0662", "\u00b2", "５"]
)
def test_retry_that_is_not_only_ascii_digits_is_ignored(value):
    _, parser = parse(b"retry: 700\n", f"retry: {value}\n".encode())
    assert parser.retry == 700


def test_retry_does_not_dispatch_or_touch_the_event():
    events, parser = parse(b"data: a\nretry: 10\ndata: b\n\nretry: 20\n\n")
    assert as_tuples(events) == [("message", "a\nb", "")]
    assert parser.retry == 20


def test_unfinished_event_at_end_of_stream_is_discarded():
    events, parser = parse(b"data: a\n\ndata: b\nid: 9\n", b"data: c")
    assert as_tuples(events) == [("message", "a", "")]
    assert parser.last_event_id == ""


SPEC_STREAMS = [
    b"\xef\xbb\xbfdata: bom\r\n\r\n",
    b": c\r\nevent: e\rdata: x\ndata: y\r\nid: 4\r\n\r\ndata: z\r\r",
    b"data:\n\ndata\ndata\n\nid: a\x00b\nretry: 12\ndata: \xe2\x82\xac\n\n",
    "event: ü\ndata: 日本\rdata: 🎉\r\n\r\n".encode(),
    b"retry: 5x\nretry: 30\nid\nevent\ndata:  s\r\n\r\ndata: tail",
]


@pytest.mark.parametrize("stream", SPEC_STREAMS)
def test_result_does_not_depend_on_where_the_stream_is_split(stream):
    whole_events, whole = parse(stream)
    assert whole_events  # every stream above dispatches something
    byte_events, bytewise = parse_bytewise(stream)
    assert as_tuples(byte_events) == as_tuples(whole_events)
    assert (bytewise.last_event_id, bytewise.retry, bytewise.comments) == (
        whole.last_event_id, whole.retry, whole.comments)
    for cut in range(len(stream) + 1):
        split_events, split = parse(stream[:cut], stream[cut:])
        assert as_tuples(split_events) == as_tuples(whole_events), f"split at byte {cut}"
        assert split.last_event_id == whole.last_event_id


# -- round trip ---------------------------------------------------------------------------------

ROUND_TRIP_DATA = [
    "", " ", "  leading spaces", "trailing  ", "a", ":", ": looks like a comment", "a:b:c",
    "\n", "\r", "\r\n", "\n\n", "\r\r", "\r\n\r\n", "\n\r", "a\nb", "a\rb", "a\r\nb", "a\n",
    "\na", "x\r", "data: nested", "id: 1", "event: e\n\ndata: f", "é日本🎉", "\ufeffbom first",
    "tab\tand\0nul", "\u2028line separator\u0085next line", '{"json": ["text", 1]}',
]

_PIECES = ["a", "Z", " ", "  ", ":", "\r", "\n", "\r\n", "é", "日", "🎉", "\0", "\t", "data:",
           "id: ", "\ufeff", "\u2028", "\x85"]


def random_data(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("data", ROUND_TRIP_DATA)
def test_encoded_data_parses_back_with_line_ends_normalised_to_lf(data):
    events, _ = parse(encode_event(data, event="e", id="1-0 x"))
    assert as_tuples(events) == [("e", normalise_line_ends(data), "1-0 x")]


def test_round_trip_holds_for_many_generated_strings_split_anywhere():
    rng = random.Random(20261121)
    for _ in range(600):
        data = random_data(rng)
        frame = encode_event(data, id=str(rng.randint(0, 99)))
        cut = rng.randint(0, len(frame))
        events, _ = parse(frame[:cut], frame[cut:])
        assert [e.data for e in events] == [normalise_line_ends(data)], repr(data)


def test_a_stream_of_encoded_events_parses_back_in_order():
    rng = random.Random(7)
    messages = [(random_data(rng), f"type{i % 3}", f"{i}-0") for i in range(200)]
    stream = encode_retry(1000) + encode_comment("ok") + b"".join(
        encode_event(data, event=kind, id=ident) + encode_comment("keepalive")
        for data, kind, ident in messages
    )
    events, parser = parse_bytewise(stream)
    assert as_tuples(events) == [(k, normalise_line_ends(d), i) for d, k, i in messages]
    assert parser.retry == 1000
    assert parser.comments == 201


# -- frames and HTTP chunks -------------------------------------------------------------------


def test_a_frame_is_the_body_its_id_line_and_the_blank_line_that_dispatches_it():
    body = encode_body("x", event="e")
    assert encode_frame(body, "5") == body + encode_id("5") + b"\n"
    assert encode_frame(body) == body + b"\n" == encode_event("x", event="e")
    events, _ = parse(encode_frame(b"", "chat=1-0") + encode_frame(body))
    assert as_tuples(events) == [("e", "x", "chat=1-0")]  # the id alone dispatched nothing


def test_padding_is_a_comment_line_the_client_ignores():
    padding = encode_padding(2048)
    assert len(padding) == 2050
    events, parser = parse(padding + encode_retry(1000) + encode_event("after"))
    assert as_tuples(events) == [("message", "after", "")]
    assert (parser.comments, parser.retry) == (1, 1000)




def test_a_turn_away_sets_the_retry_delay_and_dispatches_nothing():
    parser = EventStreamParser()
    parser.last_event_id = "7-0"
    assert parser.feed(encode_turn_away(4321, "busy\nnow")) == []
    assert parser.retry == 4321
    assert parser.last_event_id == "7-0"
    assert encode_turn_away(10, "a\r\nb") == b"retry: 10\n: a b\n"
