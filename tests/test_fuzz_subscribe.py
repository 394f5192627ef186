"""Property-based fuzzing of what a subscribe request's query asks for (gateway/subscribe.py):
the query string, channel lists, Last-Event-ID, numbers and the padding switch. Whatever the
request, the answer is a value or an ApiError with a 4xx status and a JSON body."""

from __future__ import annotations

import json
import math
from urllib.parse import urlencode

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.subscribe import (
    LAST_EVENT_ID_PARAMS,
    ApiError,
    Query,
    channels,
    last_event_id,
    number_arg,
    wants_padding,
)

CHANNEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
VALID_CHANNEL = st.from_regex(r"[A-Za-z0-9_.:-]{1,16}", fullmatch=True) | st.sampled_from(
    ["chat", "a", "x" * 128, "-", ".", "::"])
# Near misses first: one char too many, a space, a line end, a letter that only looks ASCII.
BAD_CHANNEL = st.sampled_from(["", "x" * 129, "a b", "a\n", "chat\r\n", "ch\u0430t", "é", "a/b",
                               "a%2Fb", "a\0", "\ufeffchat", "chat "]) | st.text(min_size=1)
ANY_CHANNEL = VALID_CHANNEL | BAD_CHANNEL
# A WSGI query string is the request's raw bytes as latin-1: any of the 256 code points.
RAW_QUERY = st.text(st.characters(max_codepoint=255)) | st.lists(
    st.sampled_from(["channel=", "chat", "&", "=", "%", "%2", "%0A", "%C3%A9", "%FF", "+", ";",
                     "lastEventId=", "1-0", "transport=stream", "padding=", "evs_preamble"]),
    max_size=12).map("".join)
NAMES = st.sampled_from(["channel", "lastEventId", "last_event_id", "evs_last_event_id",
                         "timeout", "batch", "transport", "padding", "evs_preamble", ""]) | st.text(
    max_size=6)
PAIRS = st.lists(st.tuples(NAMES, st.text(max_size=12)), max_size=8)


def is_channel(name: str) -> bool:
    """The documented grammar, checked without a regex: 1-128 of A-Z a-z 0-9 _ . : -"""
    return 1 <= len(name) <= 128 and set(name) <= CHANNEL_CHARS


def first(pairs: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in pairs if key == name), None)


def assert_client_error(error: ApiError) -> None:
    assert 400 <= error.status < 500
    assert json.loads(error.body()) == {"error": error.error, "detail": error.detail}
    assert error.error and error.detail


# -- the query string -------------------------------------------------------------------------


@given(query=RAW_QUERY, key=NAMES)
@example(query="channel=a&channel&=x&&", key="channel")
@example(query="a=%FF%FE&a=%", key="a")
def test_any_query_string_reads_as_a_consistent_multi_valued_mapping(query, key):
    args = Query(query)
    values = args.getlist(key)
    assert all(isinstance(v, str) for v in values)
    assert (key in args) == bool(values)
    assert args.get(key) == (values[0] if values else None)
    assert args.get(key, "fallback") == (values[0] if values else "fallback")
    values.append("not stored")  # getlist hands out a copy
    assert "not stored" not in args.getlist(key)


@given(pairs=PAIRS)
@example(pairs=[("", ""), ("a b", "c&d=e"), ("a b", "")])
def test_an_encoded_query_gives_back_every_value_of_every_name_in_order(pairs):
    args = Query(urlencode(pairs))
    for name, _ in pairs:
        assert args.getlist(name) == [v for n, v in pairs if n == name]


# -- channel lists ----------------------------------------------------------------------------


@given(path_channel=st.none() | ANY_CHANNEL,
       listed=st.lists(VALID_CHANNEL, max_size=6) | st.lists(ANY_CHANNEL, max_size=6),
       limit=st.integers(1, 5))
@example(path_channel=None, listed=["a", "a", "b"], limit=3)
@example(path_channel=None, listed=["a", "b"], limit=1)
@example(path_channel=None, listed=[], limit=1)
@example(path_channel="x" * 129, listed=["ok"], limit=1)
def test_a_channel_list_is_accepted_only_when_every_name_is_in_the_grammar(path_channel, listed,
                                                                           limit):
    args = Query(urlencode([("channel", name) for name in listed]))
    requested = [path_channel] if path_channel is not None else listed
    try:
        names = channels(path_channel, args, limit)
    except ApiError as error:
        assert_client_error(error)
        assert not requested or len(requested) > limit or not all(map(is_channel, requested))
        return
    assert 1 <= len(requested) <= limit and all(map(is_channel, requested))
    assert names == list(dict.fromkeys(requested))  # each once, in the order asked
    assert all(is_channel(name) for name in names)


@given(query=RAW_QUERY, limit=st.integers(1, 5))
def test_channels_of_any_raw_query_are_in_the_grammar_or_refused_with_400(query, limit):
    try:
        names = channels(None, Query(query), limit)
    except ApiError as error:
        assert_client_error(error)
        return
    assert 1 <= len(names) <= limit and all(is_channel(name) for name in names)


# -- Last-Event-ID ----------------------------------------------------------------------------


@given(header=st.none() | st.text(), pairs=PAIRS)
@example(header=None, pairs=[("last_event_id", "2-0"), ("lastEventId", "1-0")])
@example(header="9-0", pairs=[("lastEventId", "1-0")])
def test_the_header_wins_then_the_first_id_parameter_and_empty_means_none(header, pairs):
    args = Query(urlencode(pairs))
    value = last_event_id(header, args)
    assert value is None or (isinstance(value, str) and value)
    if header:
        assert value == header
    elif header is None:
        given_ids = [first(pairs, name) for name in LAST_EVENT_ID_PARAMS]
        assert value == (next((v for v in given_ids if v is not None), None) or None)


# -- numbers and the padding switch -----------------------------------------------------------

NUMBER_TEXT = st.text(max_size=12) | st.sampled_from(
    ["nan", "-nan", "inf", "-inf", "1e400", "-0", "0", "1_0", " 5 ", "\u0665", "0x10", "1e-400",
     "9" * 5000, "25.0000000000000001", ""]) | st.integers(-10, 10**6).map(str) | st.floats().map(
    repr)


@given(raw=st.none() | NUMBER_TEXT, maximum=st.integers(1, 1000), integer=st.booleans())
def test_a_number_argument_is_in_its_range_or_refused_with_400(raw, maximum, integer):
    args = Query(urlencode({} if raw is None else {"n": raw}))
    try:
        value = number_arg(args, "n", 7, maximum, integer=integer)
    except ApiError as error:
        assert_client_error(error)
        assert error.error == "invalid n" and raw is not None
        return
    if raw is None:
        assert value == 7
        return
    assert type(value) is (int if integer else float)
    assert not math.isnan(value) and (1 if integer else 0) <= value <= maximum


@pytest.mark.parametrize("raw", ["1_0", " 5 ", "5 ", "+5", "-0", "\u0665", "0x10", "5.", ".5",
                                 "1e", "inf", "nan", "5\x00", "\uff15"])
def test_a_number_is_ascii_digits_as_clients_write_them_nothing_python_alone_reads(raw):
    for integer in (False, True):
        with pytest.raises(ApiError) as refused:
            number_arg(Query(urlencode({"n": raw})), "n", 7, 1000, integer=integer)
        assert_client_error(refused.value)


@pytest.mark.parametrize("raw, value", [("0", 0.0), ("25", 25.0), ("2.5", 2.5), ("1.6665", 1.6665),
                                        ("5e-7", 5e-7), ("1E1", 10.0)])
def test_a_decimal_as_javascript_writes_it_is_accepted(raw, value):
    assert number_arg(Query(urlencode({"n": raw})), "n", 7, 1000) == value


@given(data=st.data(), maximum=st.integers(1, 10**6), integer=st.booleans())
def test_every_plain_number_in_range_is_accepted_as_itself(data, maximum, integer):
    if integer:
        number = data.draw(st.integers(1, maximum))
    else:
        number = data.draw(st.floats(0, maximum))
    args = Query(urlencode({"n": str(number)}))
    assert number_arg(args, "n", 1, maximum, integer=integer) == number


@given(pairs=PAIRS)
@example(pairs=[("padding", "TRUE")])
@example(pairs=[("evs_preamble", "")])
@example(pairs=[("transport", "Stream")])
def test_padding_is_asked_by_transport_stream_padding_true_or_the_preamble_flag(pairs):
    transport, padding = (first(pairs, name) for name in ("transport", "padding"))
    expected = (transport == "stream" or (padding or "").lower() in ("1", "true")
                or first(pairs, "evs_preamble") is not None)
    assert wants_padding(Query(urlencode(pairs))) is expected
