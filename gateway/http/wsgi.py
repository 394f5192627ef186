"""One request through a WSGI application (PEP 3333), on one of the gateway's connections.

The environ comes from the parsed head. `wsgi.input` reads the body as the application asks
and never past its end; a chunked body is decoded, within the body limit, before the
application runs, so a malformed one is a 400 from the HTTP layer rather than an exception in
the application. The response goes out with the application's Content-Length, a computed one
for a list body, chunked framing, or (HTTP/1.0 without a length) until the close; its head
leaves in the same send as its first body bytes. A body that is a `seam.TakeOver` is handed
the connection instead, and a `seam.HELD` one leaves it to the event loop until answered. A
`seam.Deferred` body may be held back while the requests already received behind it run
(HTTP/1.1 pipelining); held answers leave in order, in one send.
"""

import logging
import sys
from time import monotonic
from typing import Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

from . import h1
from .redact import redact_target
from .seam import DIRECT, HELD, Deferred, Sent, TakeOver

log = logging.getLogger("gateway.http")
access_log = logging.getLogger("gateway.access")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL = h1.HttpError(500, "internal server error", "the gateway failed; see its log")
_KEYS_CACHED = 512
# Answers held back on one connection while the requests behind them run, and the most bytes
# of request bodies behind them (what their publishes keep until answered).
MAX_HELD = 64
MAX_HELD_BYTES = 256 * 1024
# Header name -> environ key; None for a name that is not passed on.
_ENVIRON_KEYS: Dict[str, Optional[str]] = {
    "content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_BASE_ENVIRON = {
    "SCRIPT_NAME": "",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def respond(conn, request: h1.Request) -> bool:
    """Run the application for `request` on `conn` (a connection.Connection) and send its
    response; True if the connection may carry another request. Raises HttpError before the
    application runs for a chunked body to refuse, and OSError when the client is gone."""
    server = conn.server
    if request.chunked:
        decoded = _read_chunked(conn, request, server.settings)
        body = Body(_Decoded(decoded), len(decoded))
    else:
        body = Body(conn, request.content_length or 0, request.expect_continue)
    response = _Response(conn, request, body)
    env = environ(conn, request, body)
    if direct_request(request) and not conn.buffer and not conn.pending:
        env[DIRECT] = conn.direct()
    try:
        result = server.app(env, response.start_response)
    except Exception:
        log.exception("the application failed on %s %s", request.method, request.path[:200])
        return conn.flush() and response.fail()
    if type(result) is Sent:
        return response.sent(result)
    if result is HELD:
        conn.direct().held(request)  # answered from the event loop, which has the connection
        return False
    if isinstance(result, Deferred) and _may_hold(conn, request, body):
        conn.pending.append((response, result))
        conn.held_bytes += request.content_length or 0
        return True
    if isinstance(result, TakeOver):
        if not conn.flush():
            result.close()
            return False
        return response.hand_over(result)
    conn.pending.append((response, result))
    return conn.flush()


def direct_request(request: h1.Request) -> bool:
    """Whether a request may be answered through a `seam.Direct`, as far as its head tells: a
    GET without a body that keeps the connection open."""
    return (request.method == "GET" and request.keep_alive and not request.content_length
            and not request.chunked)


def _may_hold(conn, request: h1.Request, body: "Body") -> bool:
    """Whether a Deferred answer may wait while the next request runs: that request's head is
    here already (a pipelining client), this one's body was read and the connection stays."""
    return (request.keep_alive and not body.left and len(conn.pending) < MAX_HELD
            and conn.held_bytes + (request.content_length or 0) <= MAX_HELD_BYTES
            and not conn.server.stopping and h1.head_end(conn.buffer) >= 0)


def send_result(response: "_Response", result: Iterable[bytes]) -> bool:
    """Send an application's result as `response`; True if the connection may carry another
    request. Raises OSError when the client is gone."""
    try:
        return response.send(result)
    except OSError:
        raise
    except Exception:
        log.exception("the application's response to %s %s failed", response.request.method,
                      response.request.path[:200])
        return response.fail()
    finally:
        close_result(result)


def close_result(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)  # PEP 3333: call it if the body has one
    if close is not None:
        close()


def environ(conn, request: h1.Request, body: "Body") -> dict:
    """The WSGI environ of a request (PEP 3333): CGI variables, wsgi.* keys, HTTP_* headers."""
    server = conn.server
    path = request.path
    if "%" in path:
        # PEP 3333: PATH_INFO is decoded, as bytes in a latin-1 string.
        path = unquote_to_bytes(path).decode("latin-1")
    env = _BASE_ENVIRON.copy()
    env["REQUEST_METHOD"] = request.method
    env["PATH_INFO"] = path
    env["QUERY_STRING"] = request.query
    env["SERVER_NAME"] = server.server_name
    env["SERVER_PORT"] = server.server_port
    env["SERVER_PROTOCOL"] = request.version
    env["REMOTE_ADDR"] = conn.address[0]
    env["REMOTE_PORT"] = str(conn.address[1])
    env["wsgi.input"] = body
    for name, value in request.fields:
        key = _ENVIRON_KEYS.get(name, "")
        if key == "":
            key = _environ_key(name)
        if key is None:
            continue
        if key in env:
            # RFC 9110 section 5.3: field lines of one name combine into one comma list.
            env[key] += "," + value
        else:
            env[key] = value
    if request.host:  # the target's authority wins over the Host header (h1._host)
        env["HTTP_HOST"] = request.host
    if request.chunked:
        # The application reads the body decoded, so it is no longer chunked for it.
        del env["HTTP_TRANSFER_ENCODING"]
        env["CONTENT_LENGTH"] = str(body.left)
    elif request.content_length is not None:
        env["CONTENT_LENGTH"] = str(request.content_length)  # one value, however many lines
    return env


def _environ_key(name: str) -> Optional[str]:
    # "X_Forwarded_For" and "X-Forwarded-For" would be the same environ key: a name with "_" is
    # dropped (as nginx and gunicorn do), so that no client can pass one off as a header that
    # a proxy in front sets, or slip the other past it.
    key = None if "_" in name else "HTTP_" + name.upper().replace("-", "_")
    if len(_ENVIRON_KEYS) < _KEYS_CACHED:
        _ENVIRON_KEYS[name] = key
    return key


def _read_chunked(conn, request: h1.Request, settings) -> bytes:
    if request.expect_continue:
        conn.send_all(CONTINUE)
    decoder = h1.ChunkedDecoder()
    limit = settings.max_body
    parts: List[bytes] = []
    size = 0
    data, conn.buffer = conn.buffer, b""
    deadline = monotonic() + settings.header_timeout
    while True:
        part = decoder.feed(data)
        size += len(part)
        if size > limit:
            raise h1.HttpError(413, "request entity too large",
                               f"the body is larger than {limit} bytes")
        parts.append(part)
        if decoder.done:
            conn.buffer = decoder.unused
            return b"".join(parts)
        try:
            data = conn.recv(deadline)
        except OSError:
            raise h1.HttpError(408, "request timeout",
                               "the chunked body did not arrive in time") from None
        if not data:
            raise ConnectionError("the client closed before the end of its chunked body")


class Body:
    """wsgi.input: the request body, read from the connection as the application asks.

    `read(n)` returns n bytes unless the body ends first, as a file does. A client that stops
    sending (the header timeout, counted from the first read) or leaves makes it raise OSError,
    which werkzeug turns into a 400.
    """

    __slots__ = ("_source", "left", "expect_continue", "_deadline")

    def __init__(self, source, length: int, expect_continue: bool = False) -> None:
        self._source = source  # the connection, whose `buffer` holds what came with the head
        self.left = length  # body bytes not read yet
        self.expect_continue = expect_continue and length > 0
        self._deadline = 0.0

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0 or size > self.left:
            size = self.left
        if not size:
            return b""
        conn = self._source
        while len(conn.buffer) < size:
            more = self._receive()
            conn.buffer += more
        data, conn.buffer = conn.buffer[:size], conn.buffer[size:]
        self.left -= len(data)
        return data

    def readline(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0 or size > self.left:
            size = self.left
        conn = self._source
        while True:
            end = conn.buffer.find(b"\n", 0, size)
            if end >= 0:
                return self.read(end + 1)
            if len(conn.buffer) >= size:
                return self.read(size)
            conn.buffer += self._receive()

    def readlines(self, hint: int = -1) -> List[bytes]:
        lines = []
        total = 0
        while self.left and (hint <= 0 or total < hint):
            line = self.readline()
            lines.append(line)
            total += len(line)
        return lines

    def __iter__(self):
        while self.left:
            yield self.readline()

    def _receive(self) -> bytes:
        conn = self._source
        if self.expect_continue:
            # RFC 9110 section 10.1.1: the client waits for this before it sends the body.
            self.expect_continue = False
            conn.send_all(CONTINUE)
        if not self._deadline:
            self._deadline = monotonic() + conn.server.settings.header_timeout
        data = conn.recv(self._deadline)
        if not data:
            raise ConnectionError("the client closed before the end of its body")
        return data


class _Decoded:
    """A chunked body, decoded already: a `Body` source that never needs to receive."""

    __slots__ = ("buffer",)

    def __init__(self, data: bytes) -> None:
        self.buffer = data


class _Response:
    """start_response, write, and the framing of one response."""

    __slots__ = ("conn", "request", "body", "status", "headers", "head_sent", "chunked",
                 "left", "close", "no_body", "length")

    def __init__(self, conn, request: h1.Request, body: Body) -> None:
        self.conn = conn
        self.request = request
        self.body = body
        self.status: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []
        self.head_sent = False
        self.chunked = False
        self.left: Optional[int] = None  # bytes the Content-Length still allows
        self.close = False
        self.no_body = False
        self.length = 0  # body bytes sent

    def start_response(self, status: str, headers: List[Tuple[str, str]],
                       exc_info=None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response was called twice without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        if not self.head_sent:
            self._send_head(data, None)
        elif data:
            self._send_data(data)

    def send(self, result: Iterable[bytes]) -> bool:
        total = sum(map(len, result)) if type(result) in (list, tuple) else None
        for data in result:
            if not data:
                continue
            if not self.head_sent:
                self._send_head(data, total)
            else:
                self._send_data(data)
        if not self.head_sent:
            self._send_head(b"", 0 if total is None else total)
        elif self.chunked:
            self.conn.send_all(h1.LAST_CHUNK)
        if self.left:
            log.warning("the application sent %d bytes less than its Content-Length for %s",
                        self.left, self.request.path[:200])
            self.close = True
        self._log()
        return not self.close

    def sent(self, result: Sent) -> bool:
        """The application sent the response through the request's Direct: send the rest."""
        self.status, self.length, self.head_sent = result.status, result.length, True
        if result.rest:
            self.conn.send_all(result.rest)
        self._log()
        return True

    def hand_over(self, result: TakeOver) -> bool:
        """Give the connection to the response, with its head."""
        conn, request = self.conn, self.request
        chunked = not request.http_10
        try:
            head = self._head([("Transfer-Encoding", "chunked")] if chunked else [],
                              close=request.http_10 or not request.keep_alive)
        except Exception:
            log.exception("the response head for %s is invalid", request.path[:200])
            result.close()
            return self.fail()
        conn.taken = True
        self._log()
        try:
            result.take_over(conn.sock, chunked, head)
        except Exception:
            log.exception("the response for %s could not take its connection over",
                          request.path[:200])
            conn.sock.close()
        return False

    def fail(self) -> bool:
        """The application failed: a 500 if nothing was sent yet; the connection closes."""
        if not self.head_sent:
            self.head_sent = True
            self.conn.send_all(h1.error_response(_INTERNAL, self.conn.server.date()))
        return False

    def _send_head(self, data: bytes, total: Optional[int]) -> None:
        if self.status is None:
            raise AssertionError("the application sent a body before calling start_response")
        request = self.request
        code = int(self.status[:3])
        # RFC 9112 section 6.3: these responses never have a body, whatever their headers say.
        self.no_body = request.method == "HEAD" or code < 200 or code in (204, 304)
        extra: List[Tuple[str, str]] = []
        length = None
        for name, value in self.headers:
            if name.lower() == "content-length":
                length = int(value)
        if length is None and not self.no_body:
            if total is not None:
                length = total
                extra.append(("Content-Length", str(total)))
            elif request.http_10:
                self.close = True  # the body ends when the connection does
            else:
                self.chunked = True
                extra.append(("Transfer-Encoding", "chunked"))
        self.left = None if self.no_body else length
        # What is left of an unread body would be read as the next request: close instead.
        if self.body.left or not request.keep_alive or self.conn.server.stopping:
            self.close = True
        self.body.expect_continue = False
        head = self._head(extra, self.close)
        self.head_sent = True
        if self.no_body or not data:
            self.conn.send_all(head)
        else:
            self.conn.send_all(head + self._framed(data))

    def _send_data(self, data: bytes) -> None:
        if not self.no_body:
            self.conn.send_all(self._framed(data))

    def _framed(self, data: bytes) -> bytes:
        self.length += len(data)
        if self.chunked:
            return h1.encode_chunk(data)
        if self.left is not None:
            if len(data) > self.left:
                log.warning("the application sent more than its Content-Length for %s",
                            self.request.path[:200])
                data = data[:self.left]
                self.close = True
            self.left -= len(data)
        return data

    def _head(self, extra: List[Tuple[str, str]], close: bool) -> bytes:
        """The response head: the application's headers, `extra`, Date unless the application
        set one, and Connection: close if `close` (or the application's own)."""
        status = self.status
        if status is None or len(status) < 4 or status[3] != " " or not status[:3].isdigit():
            raise ValueError(f"invalid WSGI status {status!r}")
        headers = self.headers + extra
        dated = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == "date":
                dated = True
            elif lower == "connection":
                close = False  # said already
                if "close" in value.lower():
                    self.close = True
        if not dated:
            headers.append(("Date", self.conn.server.date()))
        if close:
            headers.append(("Connection", "close"))
        return h1.response_head(status, headers)

    def _log(self) -> None:
        log_access(self.conn.address, self.request, self.status, self.length)


def log_access(address: tuple, request: h1.Request, status: Optional[str], length: int) -> None:
    """The access log's line for a response of `length` body bytes, if it is on."""
    if access_log.isEnabledFor(logging.DEBUG):
        # No credential in a log: token parameters are redacted, and no header is logged.
        access_log.debug('%s "%s %s %s" %s %d', address[0], request.method,
                         redact_target(request.target)[:200], request.version,
                         (status or "")[:3], length)
