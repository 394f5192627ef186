"""Unit tests of gateway/ids.py: event ids, resume cursors and the history-gap rule (no I/O)."""

import pytest

from gateway.ids import (
    ZERO,
    CursorError,
    HistoryBounds,
    format_cursor,
    format_id,
    history_gap,
    parse_cursor,
    parse_id,
    successor,
)

# -- event ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0-0", (0, 0)),
        ("1-0", (1, 0)),
        ("1795280678065-0", (1795280678065, 0)),
        ("1795280678065-17", (1795280678065, 17)),
        ("18446744073709551615-18446744073709551615",
         (18446744073709551615, 18446744073709551615)),
    ],
)
def test_parse_id_reads_milliseconds_and_sequence(text, expected):
    assert parse_id(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "1", "1-", "-1", "1-0-0", "a-b", "1795280678065", "-1-0", "1-0 x", " 1-0", "1.5-0",
     "1-0,2-0", "chat=1-0", "123456789012345678901-0", "1-123456789012345678901", "*", "$"],
)
def test_parse_id_rejects_anything_but_digits_dash_digits(text):
    assert parse_id(text) is None


@pytest.mark.parametrize("text", ["18446744073709551616-0", "0-18446744073709551616",
                                  "99999999999999999999-0", "99999999999999999999-99999999999999999999"])
def test_parse_id_rejects_parts_beyond_64_bits_which_no_stream_id_has(text):
    assert parse_id(text) is None


@pytest.mark.parametrize("text", ["\u0661-0", "1-\u0967", "\uff11-0"])
def test_parse_id_rejects_digits_other_than_ascii(text):
    assert parse_id(text) is None


@pytest.mark.parametrize("event_id, expected", [
    ((0, 0), (0, 1)),
    ((5, 7), (5, 8)),
    ((5, 2**64 - 1), (6, 0)),
    ((2**64 - 1, 2**64 - 2), (2**64 - 1, 2**64 - 1)),
    ((2**64 - 1, 2**64 - 1), None),
])
def test_successor_is_the_smallest_id_after_and_none_after_the_largest(event_id, expected):
    assert successor(event_id) == expected


@pytest.mark.parametrize("text, channels", [
    ("99999999999999999999-0", ["chat"]),
    ("18446744073709551616-0 publisher-id", ["chat"]),
    ("a=99999999999999999999-0,b=0-0", ["a", "b"]),
    ("a=0-0,b=0-18446744073709551616", ["a", "b"]),
])
def test_cursor_with_an_id_beyond_64_bits_is_unreadable(text, channels):
    with pytest.raises(CursorError):
        parse_cursor(text, channels)


@pytest.mark.parametrize("event_id", [(0, 0), (1, 0), (1795280678065, 3), (2**64 - 1, 2**64 - 1)])
def test_format_id_round_trips_through_parse_id(event_id):
    assert parse_id(format_id(event_id)) == event_id


def test_format_id_writes_redis_stream_form():
    assert format_id((1795280678065, 2)) == "1795280678065-2"
    assert format_id(ZERO) == "0-0"


def test_ids_order_by_milliseconds_then_sequence():
    # The gap rule and the live-duplicate filter compare ids as tuples: (ms, seq) numerically.
    assert parse_id("9-10") > parse_id("9-9")
    assert parse_id("10-0") > parse_id("9-99")
    assert parse_id("100-0") > parse_id("99-0")  # numeric, not lexicographic


# -- cursors: one channel ---------------------------------------------------------------------


def test_one_channel_cursor_is_the_event_id():
    assert format_cursor(["chat"], {"chat": (1795280678065, 0)}) == "1795280678065-0"
    assert parse_cursor("1795280678065-0", ["chat"]) == {"chat": (1795280678065, 0)}


def test_one_channel_cursor_of_a_channel_without_events_is_zero():
    assert format_cursor(["chat"], {}) == "0-0"
    assert parse_cursor("0-0", ["chat"]) == {"chat": ZERO}


def test_one_channel_cursor_carries_the_publishers_id_after_a_space():
    text = format_cursor(["chat"], {"chat": (5, 1)}, "order-42")
    assert text == "5-1 order-42"
    assert parse_cursor(text, ["chat"]) == {"chat": (5, 1)}


def test_cursor_ignores_everything_after_the_first_space():
    assert parse_cursor("5-1 a b=c,d", ["chat"]) == {"chat": (5, 1)}
    assert parse_cursor("5-1 ", ["chat"]) == {"chat": (5, 1)}


def test_empty_publisher_id_adds_no_space():
    assert format_cursor(["chat"], {"chat": (5, 1)}, "") == "5-1"
    assert format_cursor(["chat"], {"chat": (5, 1)}, None) == "5-1"


def test_one_channel_connection_reads_its_channel_from_a_several_channel_cursor():
    # A client that moved from /events?channel=a&channel=b to /events/a keeps its position.
    assert parse_cursor("a=3-0,b=4-0", ["a"]) == {"a": (3, 0)}


# -- cursors: several channels ------------------------------------------------------------------


def test_several_channel_cursor_names_every_channel_in_connection_order():
    text = format_cursor(["news", "chat"], {"chat": (7, 0), "news": (9, 2)})
    assert text == "news=9-2,chat=7-0"
    assert parse_cursor(text, ["news", "chat"]) == {"news": (9, 2), "chat": (7, 0)}


def test_several_channel_cursor_writes_zero_for_a_channel_without_position():
    assert format_cursor(["a", "b"], {"a": (1, 0)}) == "a=1-0,b=0-0"


def test_several_channel_cursor_with_publisher_id_round_trips():
    text = format_cursor(["a", "b"], {"a": (1, 0), "b": (2, 5)}, "x y")
    assert text == "a=1-0,b=2-5 x y"
    assert parse_cursor(text, ["a", "b"]) == {"a": (1, 0), "b": (2, 5)}


def test_several_channel_cursor_leaves_out_channels_it_does_not_name():
    # A channel added to the URL since the cursor was issued starts live: absent from the result.
    assert parse_cursor("a=1-0", ["a", "b"]) == {"a": (1, 0)}


def test_several_channel_cursor_ignores_channels_the_connection_does_not_have():
    assert parse_cursor("a=1-0,gone=2-0", ["a", "b"]) == {"a": (1, 0)}
    assert parse_cursor("gone=2-0", ["a", "b"]) == {}


def test_several_channel_cursor_order_does_not_matter():
    assert parse_cursor("b=2-0,a=1-0", ["a", "b"]) == {"a": (1, 0), "b": (2, 0)}


# -- CursorError ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, channels",
    [
        ("", ["chat"]),
        (" 1-0", ["chat"]),  # nothing before the first space
        ("garbage", ["chat"]),
        ("1795280678065", ["chat"]),
        ("1-0-0", ["chat"]),
        ("-1-0", ["chat"]),
        ("1-0,2-0", ["chat"]),
        ("1-0", ["a", "b"]),  # a bare id cannot say which of several channels it belongs to
        ("0-0", ["a", "b"]),
        ("a=", ["a", "b"]),
        ("a=x-1", ["a", "b"]),
        ("a=1-0,b", ["a", "b"]),
        ("a=1-0,", ["a", "b"]),
        ("a=1-0,,b=2-0", ["a", "b"]),
        ("a=1-0;b=2-0", ["a", "b"]),
        ("chat=nope", ["chat"]),
        ("gone=bad", ["a", "b"]),  # malformed even for a channel the connection does not have
    ],
)
def test_unreadable_cursor_raises_cursor_error(text, channels):
    with pytest.raises(CursorError):
        parse_cursor(text, channels)


def test_cursor_error_is_a_value_error_and_truncates_long_input():
    text = "x" * 10_000
    with pytest.raises(ValueError) as caught:
        parse_cursor(text, ["chat"])
    assert isinstance(caught.value, CursorError)
    assert len(str(caught.value)) < 200


# -- the history-gap rule ---------------------------------------------------------------------------

HELD = HistoryBounds(exists=True, first=(100, 0), last=(200, 0))  # nothing ever trimmed
TRIMMED = HistoryBounds(exists=True, first=(150, 0), last=(200, 0), max_deleted=(149, 3))
MISSING = HistoryBounds(exists=False)


@pytest.mark.parametrize("after", [(100, 0), (150, 0), (199, 9), (200, 0)])
def test_no_gap_when_nothing_was_trimmed_and_position_is_held(after):
    assert history_gap(after, HELD) is False


def test_no_gap_when_position_is_the_last_event():
    assert history_gap((200, 0), TRIMMED) is False


@pytest.mark.parametrize("after", [(100, 0), (149, 2), (1, 0)])
def test_gap_when_history_was_trimmed_past_the_position(after):
    assert history_gap(after, TRIMMED) is True


def test_no_gap_when_position_equals_the_largest_trimmed_id():
    # The client saw the last trimmed event itself; everything after it is still held.
    assert history_gap((149, 3), TRIMMED) is False


def test_no_gap_when_position_is_after_the_largest_trimmed_id():
    assert history_gap((150, 0), TRIMMED) is False


def test_position_zero_without_trimming_is_no_gap():
    assert history_gap(ZERO, HELD) is False


def test_position_zero_with_trimming_is_a_gap():
    assert history_gap(ZERO, TRIMMED) is True


def test_position_zero_on_missing_stream_is_no_gap():
    # The client connected to an empty channel that is still empty: it missed nothing.
    assert history_gap(ZERO, MISSING) is False


@pytest.mark.parametrize("after", [(1, 0), (150, 0), (10**15, 0)])
def test_gap_when_stream_is_missing(after):
    # Expired (--history-age) or lost with a Redis restart: the position cannot be checked.
    assert history_gap(after, MISSING) is True


@pytest.mark.parametrize("after", [(200, 1), (201, 0), (10**15, 0)])
def test_gap_when_position_is_newer_than_the_last_id(after):
    assert history_gap(after, HELD) is True
    assert history_gap(after, TRIMMED) is True


@pytest.mark.parametrize("after", [(1, 0), (99, 99)])
def test_gap_when_history_was_recreated_since_the_position(after):
    # max_deleted ZERO and a position older than the first entry: this history never held it.
    assert history_gap(after, HELD) is True


def test_gap_when_existing_stream_is_empty_and_position_is_older_than_its_tail():
    # Every entry trimmed: XINFO reports no first entry, max_deleted == last.
    emptied = HistoryBounds(exists=True, first=ZERO, last=(200, 0), max_deleted=(200, 0))
    assert history_gap((150, 0), emptied) is True
    assert history_gap((200, 0), emptied) is False
    assert history_gap(ZERO, emptied) is True
