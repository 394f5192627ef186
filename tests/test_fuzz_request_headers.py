"""Property-based fuzzing of the request-head parser (gateway/http/h1.py), fed from memory as the
connection feeds it from a socket: it raises nothing but HttpError, never keeps more than its
limits, reads well-formed heads exactly, and accepts nothing RFC 9110/9112 tells a server to
refuse."""

from __future__ import annotations

import re

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.http import h1
from gateway.http.h1 import MAX_FIELDS, HttpError

REQUEST_LINE = b"GET /events/x HTTP/1.1\r\n"
HOST = b"Host: gw\r\n"
# RFC 9110, section 5.6.2: a field name is a token.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
NAME = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,16}", fullmatch=True).filter(
    lambda name: name.lower() not in h1._FRAMING) | st.sampled_from(
    ["Content-Type", "Last-Event-ID", "X", "Origin"])
# A field value without its surrounding whitespace: VCHAR and obs-text, with SP/HTAB inside.
VALUE = st.text(st.sampled_from([chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0x80, 0x100)]
                                + [" ", "\t"]), max_size=30).filter(lambda v: v == v.strip())
OWS = st.sampled_from(["", " ", "  ", "\t", " \t "])
EOL = st.sampled_from([b"\r\n", b"\n"])
_PIECES = [b"Host", b"Content-Length", b"X", b":", b": ", b" ", b"\t", b"\r", b"\n", b"\r\n",
           b"\0", b"\x0b", b"\x0c", b"(", b"@", b"\xe9", b"\x85", b"\xa0", b"1", b"value", b"\x7f"]
_ODD = [b" ", b"\t", b"\0", b"\r", b"\n", b"\x0b", b"(", b"@", b"\xe9", b"\x7f", b":"]
_SPOTS = ["before the name", "in the name", "before the colon", "in the value", "at the end"]


def near_line(name: bytes, value: bytes, eol: bytes, fault) -> bytes:
    """A valid header line, or one with one odd byte in one spot."""
    spot, odd = fault or (None, b"")
    half = len(name) // 2
    return b"".join([
        odd if spot == "before the name" else b"",
        name[:half], odd if spot == "in the name" else b"", name[half:],
        odd if spot == "before the colon" else b"", b":", value[:2],
        odd if spot == "in the value" else b"", value[2:],
        odd if spot == "at the end" else b"", eol,
    ])


FAULT = st.tuples(st.sampled_from(_SPOTS), st.sampled_from(_ODD))


def near_lines(fault: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return st.builds(near_line, st.sampled_from([b"X", b"Accept", b"Origin", b"last-event-id"]),
                     st.sampled_from([b" v", b"", b" a b", b"\tx\t"]), EOL, fault)


# A head of valid lines but one, which has one odd byte somewhere.
ONE_FAULT_HEAD = st.builds(
    lambda before, odd, after: REQUEST_LINE + HOST + b"".join(before) + odd + b"".join(after)
    + b"\r\n",
    st.lists(near_lines(st.none()), max_size=3), near_lines(FAULT),
    st.lists(near_lines(st.none()), max_size=2))
HEAD_LIKE = (st.binary(max_size=300)
             | st.lists(st.sampled_from(_PIECES), max_size=40).map(lambda p: REQUEST_LINE + b"".join(p))
             | ONE_FAULT_HEAD)


def parse(raw: bytes):
    """What the connection does with what it received: find the head's end, then parse it.
    None while no head is complete; the HttpError if it is refused."""
    data = h1.skip_empty_lines(raw)
    end = h1.head_end(data)
    if end < 0:
        return None
    try:
        return h1.parse_request_head(data[:end])
    except HttpError as error:
        return error


def line_content(line: bytes) -> str:
    return line.decode("latin-1").rstrip("\n").removesuffix("\r")


@given(raw=HEAD_LIKE)
@example(raw=b"GET / HTTP/1.1\r\nA: 1\r\n\r\n")
@example(raw=b"")
@example(raw=b"\r\n")
def test_any_bytes_parse_to_a_request_or_an_http_error_within_the_limits(raw):
    result = parse(raw)
    if isinstance(result, HttpError):
        assert result.status in (400, 414, 417, 431, 501, 505) and result.detail
    elif result is not None:
        assert len(result.fields) <= MAX_FIELDS
        assert result.method and result.path


@given(raw=ONE_FAULT_HEAD | HEAD_LIKE)
@example(raw=REQUEST_LINE + HOST + b"A: 1\0\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"A: x\ry\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"A: x\r\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"Content-Length\x0b: 5\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"Two Words: x\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"\xe9t\xe9: x\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"(comment): x\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"A\0: x\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"Name : value\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"Name\t: value\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"A: 1\r\n folded\r\n\r\n")
@example(raw=REQUEST_LINE + HOST + b"!:\r\r\n\r\n")  # a CR before the line's own CRLF is bare
def test_an_accepted_head_is_one_rfc_9112_lets_a_server_accept(raw):
    result = parse(raw)
    if not isinstance(result, h1.Request):
        return
    data = h1.skip_empty_lines(raw)
    lines = data[:h1.head_end(data)].split(b"\n")[1:-2]
    assert len(lines) == len(result.fields)
    for line, (name, value) in zip(lines, result.fields):
        raw_name, colon, raw_value = line_content(line).partition(":")
        assert colon and TOKEN.fullmatch(raw_name), line
        assert name == raw_name.lower() and value == raw_value.strip(" \t")
        # RFC 9110, section 5.5: CR, LF, NUL and the other controls in a value are refused.
        assert not re.search("[\x00-\x08\x0a-\x1f\x7f]", value), line


@given(fields=st.lists(st.tuples(NAME, OWS, VALUE, OWS, EOL), max_size=12), end=EOL,
       body=st.binary(max_size=30))
@example(fields=[("Content-Type", " ", "text/plain", "", b"\r\n"),
                 ("content-type", "", "application/json", " ", b"\n")],
         end=b"\r\n", body=b"A: not a header")
def test_a_well_formed_head_reads_back_exactly_and_leaves_the_body(fields, end, body):
    lines = [f"{name}:{before}{value}{after}".encode("latin-1") + eol
             for name, before, value, after, eol in fields]
    raw = REQUEST_LINE + HOST + b"".join(lines) + end + body
    end_of_head = h1.head_end(raw)
    assert raw[end_of_head:] == body
    request = h1.parse_request_head(raw[:end_of_head])
    assert request.fields == [("host", "gw")] + [(name.lower(), value)
                                                 for name, _, value, _, _ in fields]


@settings(max_examples=40)
@given(count=st.integers(MAX_FIELDS - 2, MAX_FIELDS + 3))
def test_more_than_the_maximum_number_of_header_lines_is_refused(count):
    raw = REQUEST_LINE + HOST + b"".join(b"H%d: v\r\n" % i for i in range(count - 1)) + b"\r\n"
    result = parse(raw)
    if count > MAX_FIELDS:
        assert isinstance(result, HttpError) and result.status == 431
    else:
        assert isinstance(result, h1.Request) and len(result.fields) == count


@settings(max_examples=40)
@given(length=st.integers(1000, 3000), limit=st.integers(1024, 2048), line_first=st.booleans())
def test_a_head_over_the_limit_is_414_for_its_request_line_else_431(length, limit, line_first):
    data = (b"GET /" + b"a" * length if line_first
            else REQUEST_LINE + b"X: " + b"v" * length)
    if len(data) > limit:
        error = h1.head_too_large(data, limit)
        assert error.status == (414 if line_first else 431)
