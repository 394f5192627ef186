"""Property-based fuzzing of the request-head parser (gateway/request_headers.py), fed from memory
as pywsgi feeds it from a socket: it never raises, never reads past its limits, reads well-formed
heads exactly, and accepts nothing RFC 9110/9112 tells a server to refuse."""

from __future__ import annotations

import io
import re

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.request_headers import MAX_HEADERS, MAX_LINE, RequestHeaders

PROBLEMS = {"", "Line too long", f"More than {MAX_HEADERS} headers", "Invalid header line"}
# RFC 9110, section 5.6.2: a field name is a token.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
NAME = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,16}", fullmatch=True) | st.sampled_from(
    ["Host", "Content-Length", "content-type", "Last-Event-ID", "Transfer-Encoding", "X"])
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
    return st.builds(near_line, st.sampled_from([b"Host", b"X", b"Content-Length", b"last-event-id"]),
                     st.sampled_from([b" v", b"", b" a b", b"\tx\t"]), EOL, fault)


# A head of valid lines but one, which has one odd byte somewhere.
ONE_FAULT_HEAD = st.builds(
    lambda before, odd, after: b"".join(before) + odd + b"".join(after) + b"\r\n",
    st.lists(near_lines(st.none()), max_size=3), near_lines(FAULT),
    st.lists(near_lines(st.none()), max_size=2))
HEAD_LIKE = (st.binary(max_size=300)
             | st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)
             | ONE_FAULT_HEAD)


def reader(raw: bytes) -> io.BufferedReader:
    """What pywsgi hands the parser: a buffered reader, here over memory instead of a socket."""
    return io.BufferedReader(io.BytesIO(raw), 1024)


def line_content(line: str) -> str:
    """A header line without its line end (CRLF, or a bare LF, or none at the end of input)."""
    if line.endswith("\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith("\n") else line


@given(raw=HEAD_LIKE)
@example(raw=b"A: 1\r\n\r\n")
@example(raw=b"")
@example(raw=b"\r\n")
def test_any_bytes_parse_without_raising_and_within_the_limits(raw):
    fp = reader(raw)
    headers = RequestHeaders(fp)
    assert headers.status in PROBLEMS
    assert len(headers.headers) <= MAX_HEADERS
    assert all(len(line.encode("latin-1")) <= MAX_LINE for line in headers.headers)
    assert fp.tell() <= (MAX_HEADERS + 1) * (MAX_LINE + 1)
    if headers.status == "":
        # It read exactly the head: the lines it kept, and the empty line that ends it, if any.
        head = "".join(headers.headers).encode("latin-1")
        assert raw.startswith(head)
        assert raw[len(head):fp.tell()] in (b"\r\n", b"\n", b"")


@given(raw=ONE_FAULT_HEAD | HEAD_LIKE)
@example(raw=b"A: 1\0\r\n\r\n")
@example(raw=b"A: x\ry\r\n\r\n")
@example(raw=b"A: x\r\r\n\r\n")
@example(raw=b"Content-Length\x0b: 5\r\n\r\n")
@example(raw=b"Two Words: x\r\n\r\n")
@example(raw=b"\xe9t\xe9: x\r\n\r\n")
@example(raw=b"(comment): x\r\n\r\n")
@example(raw=b"A\0: x\r\n\r\n")
@example(raw=b"Name : value\r\n\r\n")
@example(raw=b"Name\t: value\r\n\r\n")
@example(raw=b"A: 1\r\n folded\r\n\r\n")
@example(raw=b"!:\r")  # a CR that the input's end leaves without its LF is a bare CR too
def test_an_accepted_head_is_one_rfc_9112_lets_a_server_accept(raw):
    headers = RequestHeaders(reader(raw))
    if headers.status:
        return
    for line in headers.headers:
        name, colon, value = line_content(line).partition(":")
        assert colon and TOKEN.fullmatch(name), line
        # RFC 9110, section 5.5: CR, LF and NUL in a value are refused (or replaced).
        assert not re.search("[\r\n\0]", value), line


@given(fields=st.lists(st.tuples(NAME, OWS, VALUE, OWS, EOL), max_size=12), end=EOL,
       body=st.binary(max_size=30), case=st.sampled_from([str.lower, str.upper, str.title]))
@example(fields=[("Content-Type", " ", "text/plain", "", b"\r\n"),
                 ("content-type", "", "application/json", " ", b"\n")],
         end=b"\r\n", body=b"A: not a header", case=str.upper)
def test_a_well_formed_head_reads_back_exactly_and_leaves_the_body(fields, end, body, case):
    lines = [f"{name}:{before}{value}{after}".encode("latin-1") + eol
             for name, before, value, after, eol in fields]
    fp = reader(b"".join(lines) + end + body)
    headers = RequestHeaders(fp)
    assert headers.status == ""
    assert headers.headers == [line.decode("latin-1") for line in lines]
    assert fp.read() == body
    first: dict[str, str] = {}
    for name, _, value, _, _ in fields:
        first.setdefault(name.lower(), value)
    for name, value in first.items():
        assert headers.get(case(name)) == headers.getheader(name) == value
    assert headers.typeheader == first.get("content-type")
    for name in first:
        del headers[case(name)]
        assert headers.get(name) is None
        assert all(line.partition(":")[0].lower() != name for line in headers.headers)
    assert headers.headers == []


@settings(max_examples=40)
@given(length=st.integers(MAX_LINE - 3, MAX_LINE + 3), eol=st.sampled_from([b"\r\n", b"\n", b""]),
       at=st.integers(0, 3))
def test_a_line_over_the_limit_is_refused_and_no_more_than_it_is_read(length, eol, at):
    # A line of `length` bytes with its line end; with none, it is the last thing sent.
    fill = b"X-Long: " + b"v" * (length - 8 - len(eol))
    rest = b"B: 2\r\n\r\n" + b"x" * 100_000 if eol else b""
    fp = reader(b"A: 1\r\n" * at + fill + eol + rest)
    headers = RequestHeaders(fp)
    if length > MAX_LINE:
        assert headers.status == "Line too long"
        assert fp.tell() <= 6 * at + MAX_LINE + 1
    else:
        assert headers.status == ""
        assert headers.get("x-long") == fill[8:].decode()
        assert headers.get("b") == ("2" if eol else None)


@settings(max_examples=40)
@given(count=st.integers(MAX_HEADERS - 2, MAX_HEADERS + 3), end=st.booleans())
def test_more_than_the_maximum_number_of_headers_is_refused(count, end):
    # The head ends with an empty line, or with the input.
    raw = b"".join(b"H%d: v\r\n" % i for i in range(count))
    headers = RequestHeaders(reader(raw + b"\r\nH: body\r\n" if end else raw))
    if count > MAX_HEADERS:
        assert headers.status == f"More than {MAX_HEADERS} headers"
    else:
        assert headers.status == "" and len(headers.headers) == count
