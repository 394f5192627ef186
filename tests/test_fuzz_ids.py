"""Property-based fuzzing of event ids and resume cursors (gateway/ids.py): what a client sends
back as Last-Event-ID (or `lastEventId=`) is outside input, read before anything else."""

from __future__ import annotations

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.ids import ZERO, CursorError, format_cursor, format_id, parse_cursor, parse_id

MAX_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers
CHANNEL = st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True) | st.sampled_from(
    ["chat", "news", "a", "x" * 128])
CHANNELS = st.lists(CHANNEL, min_size=1, max_size=5, unique=True)
PART = st.integers(0, MAX_PART) | st.sampled_from([0, 1, MAX_PART])
EVENT_ID = st.tuples(PART, PART)
# The publisher's own id rides after a space: anything but CR, LF and NUL (the encoder's rule).
SOURCE_ID = st.none() | st.text().map(lambda s: s.replace("\r", "").replace("\n", "").replace("\0", ""))

_PIECES = ["chat", "news", "=", ",", "-", " ", "0", "1", "9" * 20, "18446744073709551616",
           "00", "\u0661", "\uff11", "\n", "\0", "é"]
WIDE_PART = PART | st.integers(0, 10**21) | st.sampled_from([MAX_PART + 1, 10**20 - 1, 10**20])
WIDE_ID = st.builds("{}-{}".format, WIDE_PART, WIDE_PART)
# Cursors as the gateway writes them, with parts of any size: most of them parse.
CURSOR = st.builds(
    lambda position, source: f"{position} {source}" if source else position,
    WIDE_ID | st.lists(st.builds("{}={}".format, CHANNEL, WIDE_ID), min_size=1, max_size=4).map(
        ",".join),
    st.none() | st.text(max_size=8),
)
CURSOR_LIKE = CURSOR | st.text() | st.lists(st.sampled_from(_PIECES) | st.text(max_size=3),
                                            max_size=16).map("".join)


@given(text=CURSOR_LIKE, channels=CHANNELS)
@example(text="chat=1-0,", channels=["chat"])
@example(text="=1-0", channels=["chat", "news"])
@example(text="\u0661-0", channels=["chat"])
@example(text="1-0", channels=["chat", "news"])
def test_any_cursor_text_gives_positions_in_the_named_channels_or_a_cursor_error(text, channels):
    try:
        positions = parse_cursor(text, channels)
    except CursorError as error:
        assert isinstance(error, ValueError)
        return
    assert set(positions) <= set(channels)
    for ms, seq in positions.values():
        assert type(ms) is int and type(seq) is int and ms >= 0 and seq >= 0


@given(channels=CHANNELS, data=st.data(), source_id=SOURCE_ID)
def test_a_formatted_cursor_parses_back_to_every_channels_position(channels, data, source_id):
    known = data.draw(st.lists(st.sampled_from(channels), unique=True))
    positions = {name: data.draw(EVENT_ID) for name in known}
    text = format_cursor(channels, positions, source_id)
    assert parse_cursor(text, channels) == {name: positions.get(name, ZERO) for name in channels}


@given(channels=CHANNELS, data=st.data())
def test_a_cursor_for_other_channels_only_resumes_the_ones_both_name(channels, data):
    # A client that reconnects with a different channel list keeps the positions that still apply.
    issued = data.draw(st.lists(CHANNEL, min_size=2, max_size=5, unique=True))
    positions = {name: data.draw(EVENT_ID) for name in issued}
    parsed = parse_cursor(format_cursor(issued, positions), channels)
    assert parsed == {name: positions[name] for name in channels if name in positions}


@given(event_id=EVENT_ID)
@example(event_id=(MAX_PART, MAX_PART))
def test_a_formatted_id_parses_back_to_itself(event_id):
    assert parse_id(format_id(event_id)) == event_id


@given(text=CURSOR_LIKE)
def test_parse_id_reads_only_two_ascii_decimal_numbers(text):
    event_id = parse_id(text)
    if event_id is not None:
        left, _, right = text.partition("-")
        assert left.isascii() and left.isdigit() and right.isascii() and right.isdigit()
        assert event_id == (int(left), int(right))


BEYOND_64_BITS = st.integers(MAX_PART + 1, 10**20 - 1) | st.integers(10**20, 10**40)


@given(big=BEYOND_64_BITS, other=PART, big_first=st.booleans())
@example(big=MAX_PART + 1, other=0, big_first=True)
def test_an_id_with_a_part_beyond_64_bits_is_refused(big, other, big_first):
    text = f"{big}-{other}" if big_first else f"{other}-{big}"
    assert parse_id(text) is None
    with pytest.raises(CursorError):
        parse_cursor(text, ["chat"])
    with pytest.raises(CursorError):
        parse_cursor(f"chat=0-0,news={text}", ["chat", "news"])


@given(text=CURSOR, channels=CHANNELS | st.just(["chat"]))
@example(text="chat=18446744073709551616-0", channels=["chat"])
def test_every_position_parse_cursor_accepts_fits_in_64_bits(text, channels):
    try:
        positions = parse_cursor(text, channels)
    except CursorError:
        return
    assert all(part <= MAX_PART for event_id in positions.values() for part in event_id)
