"""The request-head parser's one-pass path for common heads gives what the full parser gives.

`h1.parse_request_head` first tries one regular expression for the common head (an origin-form
GET with plain fields and no body) and falls back to the full, line-by-line parser for anything
else. Both must agree on every head: the same Request, or the same refusal. Heads are built
from valid and hostile pieces alike (whitespace before a colon, bare CR, NUL, folding, framing
fields, duplicate or missing Host, long lines of spaces). No sockets.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.http import h1
from gateway.http.h1 import HttpError

NAMES = ["Host", "host", "HOST", "Connection", "Content-Length", "Transfer-Encoding", "Expect",
         "Last-Event-ID", "Origin", "User-Agent", "X_Under", "X Space", "", "Bad\x00", "Ä"]
VALUES = ["gw", "gw:8080", "[::1]:80", "a b", " padded \t", "", "close", "keep-alive, Close",
          "chunked", "12", "+12", "100-continue", "\x00", "a\rb", "\x80\xff", "\t", "   ", "x\x7f",
          "a@b", "é"]
LINE_ENDS = ["\r\n", "\n"]
REQUEST_LINES = ["GET /poll/c?timeout=20&lastEventId=1-2 HTTP/1.1", "GET / HTTP/1.0",
                 "HEAD /events/a HTTP/1.9", "OPTIONS * HTTP/1.1", "POST /publish/c HTTP/1.1",
                 "GET http://gw/x HTTP/1.1", "GET /x HTTP/2.0", "GET  /x HTTP/1.1",
                 "GET /\x7fx HTTP/1.1", "G@T /x HTTP/1.1", "GET /x HTTP/1.1 ", "get /x?y HTTP/1.1"]

PLAIN_NAMES = ["Last-Event-ID", "Origin", "User-Agent", "Accept", "Cookie", "X_Under"]
PLAIN_VALUES = ["gw", "a b", " padded \t", "", "keep-alive", "\x80\xff", "   ", "a@b", "é"]

any_field = st.tuples(st.sampled_from(NAMES), st.sampled_from([":", ": ", " :", ":\t"]),
                      st.sampled_from(VALUES), st.sampled_from(LINE_ENDS))
plain_field = st.tuples(st.sampled_from(PLAIN_NAMES), st.sampled_from([":", ": ", ":\t", ":  "]),
                        st.sampled_from(PLAIN_VALUES), st.sampled_from(LINE_ENDS))
host_field = st.tuples(st.just("Host"), st.just(": "), st.sampled_from(VALUES[:3] + VALUES[4:6]),
                       st.sampled_from(LINE_ENDS))
folded = st.sampled_from([" folded\r\n", "\tfolded\r\n"])


@st.composite
def heads(draw) -> bytes:
    """Mostly heads the common path may take, each with a chance of one hostile piece."""
    lines = [draw(st.sampled_from(REQUEST_LINES[:3] * 3 + REQUEST_LINES))
             + draw(st.sampled_from(LINE_ENDS))]
    fields = [draw(plain_field) for _ in range(draw(st.integers(0, 6)))]
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        fields.insert(draw(st.integers(0, len(fields))), draw(host_field))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), draw(any_field))
    lines += ["".join(parts) for parts in fields]
    if draw(st.integers(0, 9)) == 0:
        lines.insert(draw(st.integers(1, len(lines))), draw(folded))
    lines.append(draw(st.sampled_from(LINE_ENDS)))
    return "".join(lines).encode("latin-1")


def outcome(parse, head: bytes):
    try:
        request = parse(head)
    except HttpError as error:
        return ("refused", error.status, error.error, error.detail)
    return ("request", *(getattr(request, name) for name in h1.Request.__slots__))


def full(head: bytes) -> h1.Request:
    return h1._parse_any_head(head.decode("latin-1"))


@settings(max_examples=3000, deadline=None)
@given(heads())
@example(b"GET /poll/c HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n")
@example(b"GET /poll/c HTTP/1.0\r\n\r\n")
@example(b"GET /poll/c HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n")
@example(b"GET /poll/c HTTP/1.1\r\nHost: gw\r\nX: a\rb\r\n\r\n")
@example(b"GET /x HTTP/1.1\r\nHost: gw\r\nX: " + b" " * 15000 + b"\x01\r\n\r\n")
@example(b"GET /x HTTP/1.1\r\n" + b"a" * 15000 + b"\r\n\r\n")
@example(b"GET /x HTTP/1.1\r\nHost: gw\r\n" + b"X-N: 1\r\n" * 99 + b"\r\n")
@example(b"GET /x HTTP/1.1\r\nHost: gw\r\n" + b"X-N: 1\r\n" * 100 + b"\r\n")
def test_the_common_path_and_the_full_parser_agree_on_every_head(head):
    assert outcome(h1.parse_request_head, head) == outcome(full, head)


def test_a_plain_poll_head_takes_the_common_path():
    head = b"GET /poll/c?lastEventId=1-2 HTTP/1.1\r\nHost: gw:80\r\nOrigin: https://a\r\n\r\n"
    match = h1._COMMON_HEAD.fullmatch(head.decode("latin-1"))
    assert match is not None and h1._common_request(*match.groups()) is not None


def test_response_head_lines_kept_from_earlier_heads_never_let_a_split_one_through():
    good = [("X", "a"), ("Content-Length", "12")]
    first = h1.response_head("200 OK", good)
    assert h1.response_head("200 OK", good) == first  # the kept lines, the same bytes
    for bad in [("X", "a\r\nSet-Cookie: evil"), ("X\nY", "a"), ("X", "a\0")]:
        with pytest.raises(ValueError):
            h1.response_head("200 OK", [*good, bad])
        with pytest.raises(ValueError):  # and again, now that the good lines are kept
            h1.response_head("200 OK", [bad])
    # A header as a list (unhashable) is checked and written, not kept.
    assert h1.response_head("204 No Content", [["X", "b"]]) == (
        b"HTTP/1.1 204 No Content\r\nX: b\r\n\r\n")
    with pytest.raises(ValueError):
        h1.response_head("200 OK", [["X", "b\r\n"]])


def test_response_head_lines_kept_stay_within_their_bound():
    for n in range(3 * h1._HEAD_LINES_KEPT):
        h1.response_head("200 OK", [("Content-Length", str(n))])
    assert 0 < len(h1._HEAD_LINES) <= h1._HEAD_LINES_KEPT
