"""HTTP/1.1 without I/O (RFC 9112): request heads in; response heads, chunks and errors out.

Bytes in, values out, and `HttpError` for anything the gateway refuses: the server glue does the
reading and writing. Strict where request smuggling lives (the framing of the body: RFC 9112
section 6), since a proxy in front may read the same bytes differently: every ambiguous shape is
refused with 400 and the connection is closed, never guessed at.
"""

import json
import re
import time
from http import HTTPStatus
from typing import Dict, List, Optional, Tuple
from wsgiref.handlers import format_date_time

MAX_FIELDS = 100  # header lines in a request head, and trailer lines in a chunked body
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, in bytes
MAX_CHUNK_SIZE_DIGITS = 16  # hex digits of one chunk's size (with leading zeros)
MAX_CONTENT_LENGTH_DIGITS = 18

# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 section 3: request-line = method SP request-target SP HTTP-version, each element
# separated by exactly one SP. Lenient whitespace is allowed there but "can result in request
# smuggling security vulnerabilities", so it is not offered. The target is visible ASCII only
# (RFC 3986 has no raw octets above 0x7E); HTTP-version is "HTTP/" DIGIT "." DIGIT (section 2.3).
# The optional CR: a line may end in a bare LF (section 2.2, below).
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?")
# RFC 9112 section 5: field-line = field-name ":" OWS field-value OWS. The name is a token, so
# whitespace between it and the colon is refused (section 5.1: a server MUST reject it with
# 400). The value is visible characters, obs-text, and SP or HTAB between them (RFC 9110
# section 5.5): NUL, CR, LF and the other control characters, which RFC 9110 calls "invalid and
# dangerous", are refused. Plain character classes, searched once: a regular expression with
# optional whitespace around the value backtracks quadratically on a line of spaces.
_NAME = re.compile(_TOKEN)
_NOT_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110 section 7.2: Host = uri-host [ ":" port ]; uri-host is an IP literal in brackets or
# a reg-name of unreserved, pct-encoded and sub-delims characters (RFC 3986 section 3.2.2).
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# RFC 9112 section 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF, with
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ) and a value that
# is a token or a quoted-string (RFC 9110 section 5.6.4).
_CHUNK_LINE = re.compile(
    rf"([0-9A-Fa-f]{{1,{MAX_CHUNK_SIZE_DIGITS}}})"
    rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_TOKEN}|\"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]"
    rf"|\\[\t\x20-\x7e\x80-\xff])*\"))?)*")
_EXPECT_CONTINUE = "100-continue"


class HttpError(Exception):
    """A request refused at the HTTP layer: its status, and the JSON body's error and detail.

    After such an error the connection's framing cannot be trusted: it is closed.
    """

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


def _bad(detail: str) -> HttpError:
    return HttpError(400, "bad request", detail)


class Request:
    """One request head, validated. `fields` keeps every header line as (lower-case name,
    value) in order; the values are latin-1 text, as PEP 3333 has them."""

    __slots__ = ("method", "target", "path", "query", "http_10", "fields", "host",
                 "content_length", "chunked", "keep_alive", "expect_continue")

    def __init__(self, method: str, target: str, path: str, query: str, http_10: bool,
                 fields: List[Tuple[str, str]], host: str, content_length: Optional[int],
                 chunked: bool, keep_alive: bool, expect_continue: bool) -> None:
        self.method = method
        self.target = target
        self.path = path  # still percent-encoded
        self.query = query
        self.http_10 = http_10
        self.fields = fields
        self.host = host
        self.content_length = content_length  # None: no Content-Length (chunked, or no body)
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue

    @property
    def version(self) -> str:
        return "HTTP/1.0" if self.http_10 else "HTTP/1.1"

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def skip_empty_lines(data: bytes) -> bytes:
    """Drop the empty lines before a request line: RFC 9112 section 2.2, "a server that is
    expecting to receive and parse a request-line SHOULD ignore at least one empty line (CRLF)
    received prior to the request-line" (some clients send one after a POST body)."""
    return data.lstrip(b"\r\n")


def head_end(data: bytes, start: int = 0) -> int:
    """Where the request head in `data` ends (just past its empty line), or -1 for not yet.

    `start` is how far an earlier call looked: a head that arrives a byte at a time is then
    searched once, not once per byte. A line may end in a bare LF: RFC 9112 section 2.2, "a
    recipient MAY recognize a single LF as a line terminator and ignore any preceding CR".
    """
    start = max(0, start - 3)
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(data))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def head_too_large(data: bytes, limit: int) -> HttpError:
    """The refusal of a head over `limit` bytes: 414 if the request line alone is, else 431."""
    if b"\n" not in data[:limit + 1]:
        return HttpError(414, "uri too long", f"the request line is longer than {limit} bytes")
    return HttpError(431, "request header fields too large",
                     f"the request head is larger than {limit} bytes")


# The common head, checked in one pass: an origin-form target, HTTP/1.x, field lines whose
# names are tokens right before the colon and whose values hold no control character (so each
# line splits at its first colon and strips as the full parser's would). A value starts with a
# visible character, so the whitespace before it and the value never match the same spaces:
# no backtracking.
_COMMON_HEAD = re.compile(
    rf"({_TOKEN}) (/[\x21-\x7e]*) HTTP/1\.([0-9])\r?\n"
    rf"((?:{_TOKEN}:[ \t]*(?:[\x21-\x7e\x80-\xff][^\x00-\x08\x0a-\x1f\x7f]*)?\r?\n)*)\r?\n")


def parse_request_head(head: bytes) -> Request:
    """Parse one request head (request line, header lines, the empty line) or raise HttpError."""
    text = head.decode("latin-1")
    common = _COMMON_HEAD.fullmatch(text)
    if common is not None:
        request = _common_request(*common.groups())
        if request is not None:
            return request
    return _parse_any_head(text)


def _common_request(method: str, target: str, minor: str, block: str) -> Optional[Request]:
    """The request of a common head without a body (a long-poll's, an event stream's), or
    None for `_parse_any_head` to parse: the same Request, found with less work. A field that
    frames a body, an expectation, a missing or second Host, too many lines: None."""
    fields: List[Tuple[str, str]] = []
    host = None
    connection = ""
    for line in block.split("\n")[:-1]:
        name, _, value = line.partition(":")
        name = name.lower()
        value = value.strip(" \t\r")
        fields.append((name, value))
        if name in _FRAMING:
            if name == "host" and host is None:
                host = value
            elif name == "connection":
                connection += "," + value
            else:
                return None
    if host is None or len(fields) > MAX_FIELDS or not _HOST.fullmatch(host):
        return None
    http_10 = minor == "0"
    path, _, query = target.partition("?")
    return Request(method, target, path, query, http_10, fields, host, None, False,
                   not http_10 and not (connection and "close" in _tokens(connection)), False)


def _parse_any_head(text: str) -> Request:
    lines = text.split("\n")
    del lines[-2:]  # the empty line and what follows its LF
    match = _REQUEST_LINE.fullmatch(lines[0]) if lines else None
    if match is None:
        raise _bad(_request_line_problem(lines[0] if lines else ""))
    method, target, major, minor = match.groups()
    if major != "1":
        raise HttpError(505, "http version not supported",
                        f"HTTP/{major}.{minor} is not supported; use HTTP/1.1")
    # RFC 9110 section 6.2: a higher minor version is processed as the highest one we know.
    http_10 = minor == "0"
    if len(lines) - 1 > MAX_FIELDS:
        raise HttpError(431, "request header fields too large",
                        f"more than {MAX_FIELDS} header lines")
    fields: List[Tuple[str, str]] = []
    hosts: List[str] = []
    lengths: List[str] = []
    codings: List[str] = []
    connection = expect = ""
    for line in lines[1:]:
        name, colon, value = (line[:-1] if line[-1:] == "\r" else line).partition(":")
        value = value.strip(" \t")
        if not colon or _NAME.fullmatch(name) is None or _NOT_IN_VALUE.search(value):
            raise _bad(_field_line_problem(line))
        name = name.lower()
        fields.append((name, value))
        if name in _FRAMING:
            if name == "host":
                hosts.append(value)
            elif name == "content-length":
                lengths.append(value)
            elif name == "transfer-encoding":
                codings.append(value)
            elif name == "connection":
                connection += "," + value
            else:
                expect += "," + value
    path, query, authority = _split_target(method, target)
    host = _host(hosts, authority, http_10)
    content_length, chunked = _framing(lengths, codings, http_10)
    expectations = _tokens(expect) if expect else frozenset()
    if expectations - {_EXPECT_CONTINUE}:
        raise HttpError(417, "expectation failed",
                        "the only expectation supported is Expect: 100-continue")
    return Request(
        method, target, path, query, http_10, fields, host, content_length, chunked,
        # RFC 9112 section 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 is not kept alive.
        keep_alive=not http_10 and not (connection and "close" in _tokens(connection)),
        # RFC 9110 section 10.1.1: "A server that receives a 100-continue expectation in an
        # HTTP/1.0 request MUST ignore that expectation."
        expect_continue=bool(expectations) and not http_10,
    )


_FRAMING = frozenset(("host", "content-length", "transfer-encoding", "connection", "expect"))


def _tokens(value: str) -> frozenset:
    # RFC 9110 section 5.6.1: a list, with empty elements ignored; tokens are case-insensitive.
    return frozenset(part.strip(" \t").lower() for part in value.split(",")) - {""}


def _split_target(method: str, target: str) -> Tuple[str, str, Optional[str]]:
    """(path, query, authority) from a request target (RFC 9112 section 3.2)."""
    if target[0] == "/":  # origin-form
        path, _, query = target.partition("?")
        return path, query, None
    if target == "*" and method == "OPTIONS":  # asterisk-form
        return "*", "", None
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        # absolute-form: "a server MUST accept the absolute-form in requests" (section 3.2.2).
        authority, slash, path_query = rest.partition("/")
        path, _, query = ("/" + path_query if slash else "/").partition("?")
        if "?" in authority:
            authority, _, query = authority.partition("?")
        if "@" in authority:
            # RFC 9110 section 4.2.4: "A sender MUST NOT generate the userinfo subcomponent".
            raise _bad("the request target has user information")
        return path, query, authority
    raise _bad("the request target must be a path (origin-form), an absolute http URL, or * "
               "for OPTIONS")


def _host(hosts: List[str], authority: Optional[str], http_10: bool) -> str:
    # RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    # HTTP/1.1 request message that lacks a Host header field and to any request message that
    # contains more than one Host header field line or a Host header field with an invalid
    # field value."
    if len(hosts) > 1:
        raise _bad("more than one Host header")
    if not hosts and not http_10:
        raise _bad("an HTTP/1.1 request needs a Host header")
    host = hosts[0] if hosts else ""
    if not _HOST.fullmatch(host):
        raise _bad("the Host header is not a valid host[:port]")
    if authority is not None:
        # Section 3.2.2: with an absolute-form target the server "MUST ignore the received Host
        # header field (if any) and instead use the host information of the request-target".
        if not _HOST.fullmatch(authority):
            raise _bad("the request target's host is not a valid host[:port]")
        return authority
    return host


def _framing(lengths: List[str], codings: List[str], http_10: bool) -> Tuple[Optional[int], bool]:
    """(Content-Length, chunked) of a request body, by RFC 9112 section 6."""
    if codings:
        # Section 6.1: "A server or client that receives an HTTP/1.0 message containing a
        # Transfer-Encoding header field MUST treat the message as if the framing is faulty".
        if http_10:
            raise _bad("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        # Section 6.1: "A server MAY reject a request that contains both Content-Length and
        # Transfer-Encoding ... Regardless, the server MUST close the connection after
        # responding"; the ambiguity is the classic request-smuggling shape, so it is refused.
        if lengths:
            raise _bad("a request must not have both Content-Length and Transfer-Encoding")
        names = [part.strip(" \t").lower() for part in ",".join(codings).split(",")]
        names = [name for name in names if name]
        # Section 6.3, item 4: if "the chunked transfer coding is not the final encoding, the
        # message body length cannot be determined reliably; the server MUST respond with the
        # 400 (Bad Request) status code and then close the connection".
        if not names or names[-1] != "chunked":
            raise _bad("the final transfer coding must be chunked")
        # Section 7: "A sender MUST NOT apply the chunked transfer coding more than once".
        if names.count("chunked") > 1:
            raise _bad("chunked is applied more than once")
        if len(names) > 1:
            # Section 6.1: a coding the server does not understand "SHOULD" get 501.
            raise HttpError(501, "not implemented",
                            "the only transfer coding supported is chunked alone")
        return None, True
    if not lengths:
        return None, False
    # RFC 9110 section 8.6: Content-Length = 1*DIGIT (no sign, no space inside). A list of
    # identical values (from a repeated field) "MAY" be taken as one; differing values, never.
    values = {part.strip(" \t") for part in ",".join(lengths).split(",")}
    if len(values) > 1:
        raise _bad("the request has differing Content-Length values")
    (value,) = values
    # Section 6.3, item 5: an invalid Content-Length is an unrecoverable framing error: 400.
    if not (value.isdigit() and value.isascii()) or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise _bad("Content-Length must be a number of bytes (digits only)")
    return int(value), False


def _request_line_problem(line: str) -> str:
    if not line.strip("\r"):
        return "the request line is empty"
    parts = line.rstrip("\r").split(" ")
    if len(parts) != 3 or not all(parts):
        return "the request line must be METHOD SP TARGET SP HTTP/1.1, with single spaces"
    if "\r" in line.rstrip("\r"):
        return "the request line has a bare CR"
    if not parts[2].startswith("HTTP/") or not re.fullmatch(r"HTTP/[0-9]\.[0-9]\r?", parts[2]):
        return "the request line's version must be HTTP/1.1 or HTTP/1.0"
    if not re.fullmatch(_TOKEN, parts[0]):
        return "the request method is not a token"
    return "the request target has characters that are not allowed (space, control, non-ASCII)"


def _field_line_problem(line: str) -> str:
    if line[:1] in (" ", "\t"):
        # RFC 9112 section 5.2: obs-fold is refused rather than unfolded.
        return "obsolete line folding (a header line starting with whitespace)"
    name, colon, value = line.partition(":")
    if not colon:
        return "a header line without a colon"
    if name[-1:] in (" ", "\t"):
        return "whitespace between a header name and its colon"
    if not re.fullmatch(_TOKEN, name):
        return "a header name that is not a token"
    value = value[:-1] if value.endswith("\r") else value
    if "\0" in value:
        return f"a NUL in the value of the {name[:64]} header"
    if "\r" in value:
        return f"a bare CR in the value of the {name[:64]} header"
    return f"a control character in the value of the {name[:64]} header"


# -------------------------------------------------------------------------------- responses


def response_head(status: str, headers: List[Tuple[str, str]]) -> bytes:
    """The status line and header lines of a response, with the empty line that ends them.

    `status` is as WSGI has it ("200 OK"). Raises ValueError if a name or value holds CR, LF or
    NUL: the response must not be split by what an application echoes into a header.
    """
    known = _HEAD_LINES
    parts = [known.get(status) or _head_line(status, "HTTP/1.1 " + status + "\r\n")]
    for header in headers:
        line = known.get(header) if type(header) is tuple else None
        if line is None:
            name, value = header
            line = _head_line(header, f"{name}: {value}\r\n")
        parts.append(line)
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


# Status and header lines already checked, by status or (name, value): most responses repeat
# the lines of the ones before (a Date changes once a second, a length takes a few values).
_HEAD_LINES: Dict[object, str] = {}
_HEAD_LINES_KEPT = 4096


def _head_line(key: object, line: str) -> str:
    """`line` (a status or header line, with its CRLF), checked; kept under `key` if that is
    a status or a header tuple (a header given as a list is not hashable)."""
    if line.count("\n") != 1 or line.count("\r") != 1 or "\0" in line:
        raise ValueError("a response status or header holds CR, LF or NUL")
    if type(key) is str or type(key) is tuple:
        if len(_HEAD_LINES) >= _HEAD_LINES_KEPT:
            _HEAD_LINES.clear()
        _HEAD_LINES[key] = line
    return line


def encode_chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (RFC 9112 section 7.1).

    No data makes no bytes: a chunk of size zero is the last chunk, and would end the body.
    """
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"  # last-chunk and an empty trailer section


def encode_last_chunk(data: bytes = b"") -> bytes:
    """The end of a chunked body: `data` as its last chunk of data, then the last chunk."""
    return encode_chunk(data) + LAST_CHUNK


def json_error_body(error: str, detail: str) -> bytes:
    """The gateway's error body: {"error": ..., "detail": ...}."""
    return json.dumps({"error": error, "detail": detail}).encode("utf-8")


def error_response(error: HttpError, date: str, extra: Tuple[Tuple[str, str], ...] = ()) -> bytes:
    """A whole response for an HttpError: JSON body, and the connection closes after it."""
    body = json_error_body(error.error, error.detail)
    head = response_head(_status_line(error.status), [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        ("Date", date), ("Connection", "close"), *extra])
    return head + body


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


class HttpDate:
    """The Date header's value (RFC 9110 section 6.6.1), formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, format_date_time(now)
        return self.value


# ----------------------------------------------------------------------------- chunked bodies


class ChunkedDecoder:
    """A chunked request body, decoded incrementally and strictly (RFC 9112 section 7.1).

    `feed` takes bytes as they arrive and returns the body bytes they complete; `done` is set
    after the last chunk and its trailer section, and `unused` then holds what followed (the
    next request of a pipelining client). Trailer fields are checked and dropped (section 7.1.2
    lets a recipient discard them). Every line is bounded, so no input costs unbounded memory,
    and every malformation raises HttpError(400). Chunk lines must end in CRLF: the bare-LF
    leniency of section 2.2 covers the start-line and fields only, and framing that parsers
    read differently is what request smuggling is made of.
    """

    __slots__ = ("_buffer", "_left", "_state", "_trailers", "done", "unused")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0
        self._state = self._SIZE
        self._trailers = 0
        self.done = False
        self.unused = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.unused += data
            return b""
        buffer = self._buffer + data if self._buffer else data
        out: List[bytes] = []
        position = 0
        while position < len(buffer):
            state = self._state
            if state == self._DATA:
                take = buffer[position:position + self._left]
                out.append(take)
                position += len(take)
                self._left -= len(take)
                if not self._left:
                    self._state = self._DATA_END
                continue
            if state == self._DATA_END:
                if len(buffer) - position < 2:
                    break
                if buffer[position:position + 2] != b"\r\n":
                    raise _bad("a chunk's data is not followed by CRLF")
                position += 2
                self._state = self._SIZE
                continue
            end = buffer.find(b"\r\n", position, position + MAX_CHUNK_LINE + 2)
            if end < 0:
                if len(buffer) - position > MAX_CHUNK_LINE + 1 or (
                        b"\n" in buffer[position:position + MAX_CHUNK_LINE + 2]):
                    raise _bad(self._long_line_problem(buffer[position:]))
                break
            line = buffer[position:end]
            position = end + 2
            if state == self._SIZE:
                self._size_line(line)
            else:
                self._trailer_line(line)
                if self.done:
                    self.unused = buffer[position:]
                    position = len(buffer)
        self._buffer = buffer[position:]
        return b"".join(out)

    def _size_line(self, line: bytes) -> None:
        text = line.decode("latin-1")
        match = _CHUNK_LINE.fullmatch(text)
        if match is None:
            digits = len(text) - len(text.lstrip("0123456789abcdefABCDEF"))
            if digits > MAX_CHUNK_SIZE_DIGITS:
                raise _bad(f"a chunk size longer than {MAX_CHUNK_SIZE_DIGITS} hex digits")
            if not digits:
                raise _bad("a chunk size that is not hexadecimal")
            raise _bad("a malformed chunk extension")
        size = int(match.group(1), 16)
        if size:
            self._left = size
            self._state = self._DATA
        else:
            self._state = self._TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailers += 1
        if self._trailers > MAX_FIELDS:
            raise _bad(f"more than {MAX_FIELDS} trailer fields after the last chunk")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or _NAME.fullmatch(name) is None or _NOT_IN_VALUE.search(value):
            raise _bad("a malformed trailer field after the last chunk")

    def _long_line_problem(self, rest: bytes) -> str:
        if self._state == self._TRAILER:
            return f"a trailer field longer than {MAX_CHUNK_LINE} bytes or not ended by CRLF"
        return f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes or not ended by CRLF"
