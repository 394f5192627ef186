"""The sans-I/O HTTP/1.1 module: request heads, response heads, chunks. No sockets at all."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.http import h1
from gateway.http.h1 import ChunkedDecoder, HttpError


def parse(head: bytes) -> h1.Request:
    end = h1.head_end(head)
    assert end == len(head), "the test head must be exactly one head"
    return h1.parse_request_head(head)


def refused(head: bytes) -> HttpError:
    with pytest.raises(HttpError) as caught:
        parse(head)
    return caught.value


# ------------------------------------------------------------------------------ request heads


def test_fields_keep_their_order_with_lower_case_names_and_trimmed_values():
    request = parse(b"GET /events/a?x=1&y HTTP/1.1\r\nHost: gw:8080\r\nLast-Event-ID:  42 \r\n"
                    b"X-Twice: 1\r\nx-twice: 2\r\nX-Empty:\r\n\r\n")
    assert (request.method, request.path, request.query) == ("GET", "/events/a", "x=1&y")
    assert request.fields == [("host", "gw:8080"), ("last-event-id", "42"), ("x-twice", "1"),
                              ("x-twice", "2"), ("x-empty", "")]
    assert request.host == "gw:8080"
    assert (request.version, request.keep_alive, request.has_body) == ("HTTP/1.1", True, False)


def test_values_keep_inner_whitespace_and_obs_text():
    request = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a \t b\r\nY: caf\xe9\r\n\r\n")
    assert request.fields[1:] == [("x", "a \t b"), ("y", "caf\xe9")]


def test_lines_may_end_in_a_bare_lf():
    request = parse(b"GET / HTTP/1.1\nHost: a\nX: 1\n\n")
    assert request.fields == [("host", "a"), ("x", "1")]


def test_empty_lines_before_the_request_line_are_skipped():
    data = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert parse(h1.skip_empty_lines(data)).method == "GET"


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    (b"GET / HTTP/1.9\r\nHost: a\r\n\r\n", True),  # a later HTTP/1.x is taken as 1.1
])
def test_persistence_follows_rfc_9112_section_9_3(head, keep_alive):
    assert parse(head).keep_alive is keep_alive


def test_http_1_0_needs_no_host():
    request = parse(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (request.version, request.host) == ("HTTP/1.0", "")


def test_absolute_form_target_names_the_host_and_the_host_header_is_ignored():
    request = parse(b"GET http://gw.example:81/events/a?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (request.host, request.path, request.query) == ("gw.example:81", "/events/a", "x=1")
    assert parse(b"GET HTTPS://gw?q=1 HTTP/1.1\r\nHost: a\r\n\r\n").path == "/"


def test_asterisk_form_is_for_options_only():
    assert parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").path == "*"
    assert refused(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").status == 400


@pytest.mark.parametrize("head, length, chunked", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n", 12, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 5, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 5, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 0, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", None, True),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", None, True),
    (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", None, False),
])
def test_body_framing(head, length, chunked):
    request = parse(head)
    assert (request.content_length, request.chunked) == (length, chunked)


def test_expect_100_continue_is_honoured_on_http_1_1_and_ignored_on_http_1_0():
    assert parse(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expect_continue
    assert not parse(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue


SMUGGLING = {
    "content-length with chunked": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n",
    "chunked with content-length": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                   b"Content-Length: 4\r\n\r\n",
    "differing content-lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                 b"Content-Length: 14\r\n\r\n",
    "differing content-length list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 14\r\n\r\n",
    "signed content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +14\r\n\r\n",
    "negative content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "hex content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
    "spaced content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 4\r\n\r\n",
    "empty content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
    "huge content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n",
    "transfer-encoding on http/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "chunked not last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "chunked twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n",
    "empty transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
    "nul in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: 1\x002\r\n\r\n",
    "bare cr in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: 1\r2\r\n\r\n",
    "bare cr ending a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: 1\r\r\n\r\n",
    "control character in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: 1\x0b2\r\n\r\n",
    "no host on http/1.1": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "invalid host": b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\n",
    "obsolete line folding": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\nHost: a\r\nnothing here\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
    "two spaces in the request line": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    "tab in the request line": b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare cr in the request line": b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case version": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "no version": b"GET /\r\nHost: a\r\n\r\n",
    "non-ascii target": b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    "relative target": b"GET events HTTP/1.1\r\nHost: a\r\n\r\n",
    "authority-form target": b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
    "user information in the target": b"GET http://u:p@gw/ HTTP/1.1\r\nHost: gw\r\n\r\n",
}


@pytest.mark.parametrize("name", SMUGGLING)
def test_ambiguous_or_malformed_heads_are_400(name):
    error = refused(SMUGGLING[name])
    assert (error.status, error.error) == (400, "bad request")
    assert error.detail


@pytest.mark.parametrize("head, status", [
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
     431),
])
def test_other_refusals_have_their_own_status(head, status):
    assert refused(head).status == status


def test_exactly_the_maximum_number_of_header_lines_is_accepted():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(h1.MAX_FIELDS - 1))
    assert len(parse(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n").fields) == h1.MAX_FIELDS


@pytest.mark.parametrize("name, head", [
    ("a space in a name", b"GET / HTTP/1.1\r\nHost: a\r\nLast Event: 1\r\n\r\n"),
    ("whitespace before the colon", b"GET / HTTP/1.1\r\nHost: a\r\nX\t: 1\r\n\r\n"),
])
def test_refusals_name_the_problem(name, head):
    assert "header" in refused(head).detail


def test_too_large_heads_are_414_for_a_long_request_line_and_431_otherwise():
    assert h1.head_too_large(b"GET /" + b"a" * 2000, 1024).status == 414
    assert h1.head_too_large(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000, 1024).status == 431


@pytest.mark.timeout(10)
def test_a_head_of_whitespace_is_parsed_in_linear_time():
    # A regular expression with optional whitespace on both sides of the value backtracks
    # quadratically here: seconds for one 16 KiB head.
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b" " * 16000 + b"\x01\r\n\r\n"
    for _ in range(50):
        with pytest.raises(HttpError):
            parse(head)


def test_head_end_finds_the_first_empty_line_of_either_kind():
    assert h1.head_end(b"GET / HTTP/1.1\r\nA: 1\r\n\r\nGET /") == 24
    assert h1.head_end(b"GET / HTTP/1.1\nA: 1\n\nX\r\n\r\n") == 21
    assert h1.head_end(b"GET / HTTP/1.1\r\nA: 1\r\n") == -1


@given(st.binary(max_size=300), st.data())
@example(b"GET / HTTP/1.1\r\n\r\n", None)
def test_head_end_searched_in_pieces_finds_what_one_search_finds(data, draw):
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=5))) if draw else []
    expected = h1.head_end(data)
    found, searched = -1, 0
    for cut in [*cuts, len(data)]:
        found = h1.head_end(data[:cut], searched)
        if found >= 0:
            break
        searched = cut
    assert found == expected


HEADISH = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from([b"GET / HTTP/1.1", b"Host: a", b"Content-Length: 5",
                              b"Transfer-Encoding: chunked", b"X: \x00", b" fold", b"\r", b"",
                              b"Content-Length: 5, 6", b"Connection: close", b"Expect: x",
                              b"POST http://h/ HTTP/1.0", b"GET * HTTP/1.1"]), max_size=8)
    .map(b"\r\n".join),
)


@settings(max_examples=400)
@given(HEADISH)
def test_the_parser_raises_nothing_but_http_error_on_arbitrary_bytes(data):
    data = h1.skip_empty_lines(data)
    end = h1.head_end(data)
    head = data[:end] if end >= 0 else data + b"\r\n\r\n"
    try:
        request = h1.parse_request_head(head)
    except HttpError as error:
        assert 400 <= error.status < 600 and error.detail
    else:
        assert request.method and request.path


TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TCHARS, min_size=1, max_size=12)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                 max_size=30).map(lambda v: v.strip(" \t"))
paths = st.text(string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@/", max_size=30)


@given(tokens, paths, st.text(string.ascii_letters + "=&", max_size=20), st.booleans(),
       st.lists(st.tuples(tokens, values), max_size=10))
def test_a_serialised_head_parses_back_to_what_was_serialised(method, path, query, http_10,
                                                              fields):
    fields = [(name, value) for name, value in fields if name.lower() not in h1._FRAMING]
    lines = [f"{method} /{path}{'?' + query if query else ''} HTTP/1.{0 if http_10 else 1}",
             "Host: gw:8080", *(f"{name}: {value}" for name, value in fields)]
    request = parse(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    assert (request.method, request.path, request.query) == (method, "/" + path, query)
    assert request.http_10 is http_10
    assert request.fields == [("host", "gw:8080")] + [(n.lower(), v) for n, v in fields]


# ----------------------------------------------------------------------------- response heads


def test_response_head_is_the_status_line_then_the_fields_then_an_empty_line():
    head = h1.response_head("200 OK", [("Content-Type", "text/event-stream"), ("X", "1")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX: 1\r\n\r\n"


@pytest.mark.parametrize("status, headers", [
    ("200 OK", [("X", "a\r\nSet-Cookie: evil")]),
    ("200 OK", [("X", "a\nb")]),
    ("200 OK", [("X\r\nY", "a")]),
    ("200 OK", [("X", "a\0")]),
    ("200 OK\r\nX: y", []),
])
def test_response_head_refuses_to_be_split(status, headers):
    with pytest.raises(ValueError):
        h1.response_head(status, headers)


def test_error_response_is_json_and_closes_the_connection():
    response = h1.error_response(HttpError(431, "too large", "the head is over 16384 bytes"),
                                 "Tue, 01 Dec 2026 10:00:00 GMT", (("Retry-After", "5"),))
    head, body = response.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"Connection: close" in lines and b"Retry-After: 5" in lines
    assert b"Content-Length: %d" % len(body) in lines
    assert json.loads(body) == {"error": "too large", "detail": "the head is over 16384 bytes"}


# ----------------------------------------------------------------------------- chunked bodies


def decode(data: bytes) -> tuple[bytes, bytes]:
    decoder = ChunkedDecoder()
    body = decoder.feed(data)
    assert decoder.done
    return body, decoder.unused


def test_chunks_decode_with_extensions_and_trailers_and_leave_what_follows():
    data = (b"5;name=value;q=\"a \\\"b\\\"; c\"\r\nhello\r\n6 ; x\r\n world\r\n000\r\n"
            b"Trailer-A: 1\r\nTrailer-B: 2\r\n\r\nGET / HTTP/1.1\r\n")
    assert decode(data) == (b"hello world", b"GET / HTTP/1.1\r\n")


def test_an_empty_body_is_one_last_chunk():
    assert decode(h1.LAST_CHUNK) == (b"", b"")


def test_encode_chunk_frames_data_for_the_decoder():
    assert h1.encode_chunk(b"abc") == b"3\r\nabc\r\n"
    assert decode(h1.encode_chunk(b"x" * 300) + h1.LAST_CHUNK) == (b"x" * 300, b"")


CHUNKED_ERRORS = {
    "a size that is not hexadecimal": b"zz\r\nhello\r\n0\r\n\r\n",
    "a size of 20 digits": b"1" * 20 + b"\r\n",
    "a size with leading zeros past the limit": b"0" * 17 + b"1\r\nx\r\n0\r\n\r\n",
    "a 100 KB chunk extension": b"1;" + b"a" * 100_000,
    "a 100 KB chunk extension, whole": b"1;" + b"a" * 100_000 + b"\r\nx\r\n0\r\n\r\n",
    "a malformed extension": b"1;=x\r\nx\r\n0\r\n\r\n",
    "an unterminated quoted extension": b"1;a=\"x\r\nx\r\n0\r\n\r\n",
    "a space after the size": b"1 \r\nx\r\n0\r\n\r\n",
    "a signed size": b"+1\r\nx\r\n0\r\n\r\n",
    "a bare lf after the size": b"1\nx\r\n0\r\n\r\n",
    "data longer than its size": b"1\r\nxy\r\n0\r\n\r\n",
    "data not followed by crlf": b"1\r\nx\n0\r\n\r\n",
    "a malformed trailer": b"0\r\nno colon\r\n\r\n",
    "a folded trailer": b"0\r\nA: 1\r\n folded\r\n\r\n",
    "a trailer with a nul": b"0\r\nA: \x00\r\n\r\n",
    "too many trailers": b"0\r\n" + b"A: 1\r\n" * 101 + b"\r\n",
    "a trailer line too long": b"0\r\nA: " + b"a" * 5000,
}


@pytest.mark.parametrize("name", CHUNKED_ERRORS)
def test_malformed_chunked_bodies_are_400(name):
    with pytest.raises(HttpError) as caught:
        ChunkedDecoder().feed(CHUNKED_ERRORS[name])
    assert caught.value.status == 400 and caught.value.detail


def test_a_bare_lf_in_a_chunk_line_is_refused_as_soon_as_it_arrives():
    with pytest.raises(HttpError):
        ChunkedDecoder().feed(b"5\nhel")  # no CRLF follows yet, nor ever will


def test_a_chunk_line_at_the_limit_is_accepted_and_one_byte_more_is_not():
    extension = b";" + b"a" * (h1.MAX_CHUNK_LINE - 2)
    assert decode(b"1" + extension + b"\r\nx\r\n0\r\n\r\n")[0] == b"x"
    with pytest.raises(HttpError):
        ChunkedDecoder().feed(b"1" + extension + b"a\r\nx\r\n0\r\n\r\n")


def test_an_incomplete_body_waits_for_more():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nhel") == b"hel"
    assert not decoder.done
    assert decoder.feed(b"lo\r") == b"lo"
    assert decoder.feed(b"\n0\r\n\r\nnext") == b""
    assert decoder.done and decoder.unused == b"next"
    assert decoder.feed(b" more") == b"" and decoder.unused == b"next more"


def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[bytes, bool, bytes]:
    decoder = ChunkedDecoder()
    out, start = [], 0
    for cut in [*sorted(cuts), len(data)]:
        out.append(decoder.feed(data[start:cut]))
        start = cut
    return b"".join(out), decoder.done, decoder.unused


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.binary(max_size=20),
       st.data())
def test_chunked_round_trip_whatever_the_splits(chunks, after, data):
    encoded = b"".join(map(h1.encode_chunk, chunks)) + h1.LAST_CHUNK + after
    cuts = data.draw(st.lists(st.integers(0, len(encoded)), max_size=10))
    assert feed_in_pieces(encoded, cuts) == (b"".join(chunks), True, after)


CHUNKISH = st.lists(st.sampled_from([b"5", b"0", b"a", b"g", b"\r\n", b"\n", b"\r", b";x=1",
                                     b"hello", b"A: 1", b" ", b'"', b"\x00", b"F" * 17]),
                    max_size=14).map(b"".join)


@settings(max_examples=400)
@given(st.one_of(CHUNKISH, st.binary(max_size=200)), st.data())
def test_the_decoder_raises_only_http_error_and_splits_change_nothing(data, draw):
    try:
        whole = feed_in_pieces(data, [])
    except HttpError as error:
        whole = error.status
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=6))
    try:
        pieces = feed_in_pieces(data, cuts)
    except HttpError as error:
        pieces = error.status
    assert pieces == whole


def test_chunks_carry_their_size_in_hex_and_no_data_makes_no_chunk():
    assert h1.encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert h1.encode_chunk(b"") == b""
    assert h1.encode_last_chunk(b"bye") == b"3\r\nbye\r\n0\r\n\r\n"
    assert h1.encode_last_chunk() == b"0\r\n\r\n"
