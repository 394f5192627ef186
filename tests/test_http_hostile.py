"""Hostile clients against a real gateway process, over raw sockets: request smuggling shapes,
malformed chunked bodies, oversized heads, slow and silent clients, and more connections than
the gateway may hold. Each is refused with a JSON body (or cut off) while others are served.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import time

import pytest
from conftest import Gateway, health, wait_until
from sse_client import Stream, StreamClosed, subscribed

HOST = b"Host: gw\r\n"


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the gateway sends until it closes the connection; fails on the deadline."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the connection is still open; received {received[:300]!r}")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with connect(port, timeout) as sock:
        sock.sendall(request)
        return read_until_closed(sock, timeout)


def split_response(data: bytes) -> tuple[int, dict, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, rest


def assert_json_refusal(data: bytes, status: int) -> dict:
    """One response, the given status, a JSON error body, Connection: close; nothing after."""
    code, headers, body = split_response(data)
    assert code == status, data[:600]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body), "nothing follows the refusal"
    document = json.loads(body)
    assert set(document) == {"error", "detail"} and document["detail"], document
    return document


@pytest.fixture(scope="module")
def gw():
    """One gateway for the refusal tests: they leave it as they found it."""
    started = Gateway(["--header-timeout", "3"])
    yield started
    started.cleanup()


def assert_not_run(gateway, stream) -> None:
    """The smuggled publish did not happen: the next event on its channel is a probe."""
    gateway.publish("smuggled", {"data": "probe"})
    [event] = stream.wait_events(1)
    assert event.data == "probe"


# A smuggled request that must never run: it would publish to this channel.
SMUGGLED = (b"POST /publish/smuggled HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5\r\n\r\nboom!")

SMUGGLING = {
    "content-length and chunked": b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain"
                                  b"\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"0\r\n\r\n" + SMUGGLED,
    "two differing content-lengths": b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nContent-Type: "
                                     b"text/plain\r\nContent-Length: 2\r\nContent-Length: "
                                     + str(2 + len(SMUGGLED)).encode() + b"\r\n\r\nok" + SMUGGLED,
    "a signed content-length": b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain"
                               b"\r\nContent-Length: +14\r\n\r\n" + SMUGGLED,
    "transfer-encoding on http/1.0": b"POST /publish/x HTTP/1.0\r\nContent-Type: text/plain\r\n"
                                     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                                     b"0\r\n\r\n" + SMUGGLED,
    "a nul in a header value": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Id: a\x00b\r\n\r\n" + SMUGGLED,
    "a bare cr in a header value": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Id: a\rb\r\n\r\n" + SMUGGLED,
    "http/1.1 without host": b"GET /healthz HTTP/1.1\r\nAccept: */*\r\n\r\n" + SMUGGLED,
    "two hosts": b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED,
    "space before the colon": b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n"
                              b"Content-Length : 5\r\n\r\n" + SMUGGLED,
    "obsolete line folding": b"GET /events/x HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n"
                             b"  folded\r\n\r\n" + SMUGGLED,
    "chunked not the final coding": b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: "
                                    b"chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "a double space in the request line": b"GET  /healthz HTTP/1.1\r\nHost: gw\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("name", SMUGGLING)
def test_smuggling_shapes_are_400_with_json_and_the_connection_closes(gw, open_stream, name):
    stream = open_stream(f"{gw.url}/events/smuggled")
    document = assert_json_refusal(exchange(gw.port, SMUGGLING[name]), 400)
    assert document["error"] == "bad request"
    assert_not_run(gw, stream)  # what followed the refused head never ran as a request


CHUNKED_ERRORS = {
    "a size that is not hexadecimal": b"zz\r\nhello\r\n0\r\n\r\n",
    "a 20-digit size": b"1" * 20 + b"\r\n" + b"x" * 10,
    "a 100 KB chunk extension": b"5;" + b"e" * 100_000 + b"\r\nhello\r\n0\r\n\r\n",
    "data not followed by crlf": b"5\r\nhelloXX0\r\n\r\n",
    "a bare lf ending a size": b"5\nhello\r\n0\r\n\r\n",
    "a malformed trailer": b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
}


@pytest.mark.parametrize("name", CHUNKED_ERRORS)
def test_malformed_chunked_bodies_are_400_and_what_follows_is_not_a_request(gw, open_stream,
                                                                           name):
    stream = open_stream(f"{gw.url}/events/smuggled")
    request = (b"POST /publish/chunky HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_ERRORS[name] + SMUGGLED)
    document = assert_json_refusal(exchange(gw.port, request), 400)
    assert document["error"] == "bad request" and "chunk" in document["detail"]
    assert "Traceback" not in gw.log()
    assert_not_run(gw, stream)


def test_a_refused_client_that_goes_on_sending_is_read_and_not_reset(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                     b"Content-Length: 6\r\n\r\n")
        answer = b""
        while b'"}' not in answer:  # the whole JSON answer, before sending on
            data = sock.recv(65536)
            assert data, answer
            answer += data
        assert answer.startswith(b"HTTP/1.1 400 ")
        # A client that sends its body anyway (a reset could make it lose the answer above,
        # or fail its send before it reads it): the gateway reads and drops it, then closes.
        sock.sendall(b"x" * 30_000)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        assert sock.recv(65536) == b""  # a clean close, not ECONNRESET


def test_a_chunked_body_over_the_message_limit_is_413(start_gateway):
    gateway = start_gateway("--max-message-size", "1024")
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    request = (b"POST /publish/big HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n")
    assert_json_refusal(exchange(gateway.port, request), 413)


def test_a_valid_chunked_publish_is_delivered_and_the_connection_stays_open(gw, open_stream):
    stream = open_stream(f"{gw.url}/events/chunked-ok")
    body = b'{"data":"chunked"}'
    request = (b"POST /publish/chunked-ok HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n"
               % (len(body), body) + b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    data = exchange(gw.port, request)
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and second.startswith(b"200 ")
    [event] = stream.wait_events(1)
    assert event.data == "chunked"


def test_a_head_over_the_limit_is_431_without_reading_it_all(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"GET /events/x HTTP/1.1\r\nHost: gw\r\n")
        line = b"X-Big: " + b"y" * 65536 + b"\r\n"
        try:
            for _ in range(100):  # 6.4 MB if the gateway read it all
                sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_until_closed(sock)
    assert_json_refusal(data, 431)
    assert health(gw)["subscribers"] == 0


def test_a_request_line_over_the_limit_is_414(gw):
    data = exchange(gw.port, b"GET /events/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert_json_refusal(data, 414)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101))
     + b"\r\n", 431),
    (b"GET /healthz HTTP/2.0\r\nHost: gw\r\n\r\n", 505),
    (b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nExpect: something\r\nContent-Length: 2\r\n\r\nab",
     417),
    (b"GET /healthz\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to the HTTP port
])
def test_every_http_layer_refusal_has_a_json_body(gw, request_bytes, status):
    assert_json_refusal(exchange(gw.port, request_bytes), status)


def test_slowloris_clients_are_cut_at_the_header_timeout_while_others_are_served(start_gateway):
    gateway = start_gateway("--header-timeout", "1")
    count = 200
    slow = [connect(gateway.port) for _ in range(count)]
    opened = time.monotonic()
    head = b"GET /events/slow HTTP/1.1\r\nHost: gw\r\n" + b"X-Slow: " + b"z" * 1000
    open_ = set(range(count))
    closed_after = []
    sent = 0
    with Stream(f"{gateway.url}/events/served") as stream:
        deadline = opened + 15
        while open_ and time.monotonic() < deadline:
            for index in list(open_):
                try:
                    slow[index].send(head[sent:sent + 1])  # one byte each, every 0.3 s
                except OSError:
                    pass
            sent += 1
            readable, _, _ = select.select([slow[i] for i in open_], [], [], 0.3)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data or b"408" in data:
                    open_.discard(slow.index(sock))
                    closed_after.append(time.monotonic() - opened)
            if sent == 3:
                # Meanwhile, a subscriber and a publisher are served as ever.
                stream.wait_for(subscribed)
                event_id = gateway.publish("served", {"data": "hello"}).json()["id"]
                [event] = stream.wait_events(1)
                assert event.last_event_id == event_id
        assert not open_, f"{len(open_)} slow clients still connected after 15 s"
        assert max(closed_after) < 8, "each is cut near the 1 s header timeout"
        assert stream.events  # the served stream got its event while the slow ones waited
    for sock in slow:
        sock.close()
    wait_until(lambda: health(gateway)["subscribers"] == 0, 10,
               message="no slow client ever subscribed, and the served stream left")


def test_a_half_sent_head_gets_408_and_a_silent_connection_is_closed(start_gateway):
    gateway = start_gateway("--header-timeout", "1")
    with connect(gateway.port) as half, connect(gateway.port) as silent:
        half.sendall(b"GET /events/x HTTP/1.1\r\nHost: gw\r\n")
        assert_json_refusal(read_until_closed(half, 10), 408)
        assert read_until_closed(silent, 10) == b""


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(start_gateway):
    gateway = start_gateway("--idle-timeout", "1")
    with connect(gateway.port) as sock:
        for _ in range(2):  # kept alive between requests that come in time
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            code, headers, _ = split_response(sock.recv(65536))
            assert code == 200 and "connection" not in headers
        assert read_until_closed(sock, 10) == b""


def open_subscribed(url: str, tries: int = 20) -> Stream:
    """A stream, retried while the gateway is still closing connections of earlier requests."""
    for _ in range(tries):
        stream = Stream(url)
        try:
            stream.wait_for(subscribed)
            return stream
        except StreamClosed:
            stream.close()
        time.sleep(0.1)
    raise AssertionError(f"no room for a stream at {url}")


def refuse_healthz(port: int) -> bytes:
    return exchange(port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n", 5)


def test_over_the_connection_cap_clients_are_answered_at_once(start_gateway):
    gateway = start_gateway("--max-connections", "10", "--heartbeat", "30")
    streams = []
    try:
        for _ in range(10):
            streams.append(open_subscribed(f"{gateway.url}/events/full"))
        started = time.monotonic()
        for _ in range(30):
            refused = refuse_healthz(gateway.port)
            document = assert_json_refusal(refused, 503)
            assert "connection limit" in document["detail"]
            assert int(split_response(refused)[1]["retry-after"]) >= 5
        # An event stream is not given a status EventSource would take as final: it gets a
        # stream that only says when to come back, and ends.
        answer = exchange(gateway.port, b"GET /events/full HTTP/1.1\r\nHost: gw\r\n"
                                        b"Origin: https://site.example\r\n\r\n", 5)
        elapsed = time.monotonic() - started
        code, headers, body = split_response(answer)
        assert code == 200 and headers["content-type"].startswith("text/event-stream")
        assert headers["access-control-allow-origin"] == "*"
        assert body.startswith(b"retry: ") and int(body.split(b"\n")[0][7:]) >= 5000
        assert len(body) == int(headers["content-length"])
        streams.pop().close()
        state = wait_until(lambda: health_or_none(gateway), 10, message="room for /healthz")
        assert state["subscribers"] == 9
        log = gateway.log()
        assert "Traceback" not in log
        # One warning, not one per refusal: at most one every 10 s.
        assert 1 <= log.count("(--max-connections)") <= 1 + int(elapsed // 10)
    finally:
        for stream in streams:
            stream.close()


def health_or_none(gateway):
    """/healthz's body, or None while the gateway refuses or cannot answer."""
    try:
        data = exchange(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
                                      b"Connection: close\r\n\r\n", 5)
        code, _, body = split_response(data)
        return json.loads(body) if code == 200 else None
    except (OSError, ValueError, IndexError, AssertionError):
        return None


def test_out_of_descriptors_every_client_still_gets_an_answer_and_one_warning(start_gateway):
    gateway = start_gateway("--max-connections", "5000", "--heartbeat", "30")
    # Lower the running process's descriptor limit far below its connection cap.
    resource.prlimit(gateway.proc.pid, resource.RLIMIT_NOFILE, (64, 64))
    held = []
    refused = {"stream": 0, "healthz": 0}
    started = time.monotonic()
    try:
        for number in range(100):
            sock = connect(gateway.port, 5)
            held.append(sock)
            path = b"/events/fd" if number % 2 else b"/healthz"
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
            readable, _, _ = select.select([sock], [], [], 5)
            assert readable, "every client gets an answer"
            code, headers, body = split_response(sock.recv(65536))
            if path == b"/healthz":
                assert code in (200, 503), code
                if code == 503:
                    refused["healthz"] += 1
                    assert json.loads(body)["error"] == "service unavailable"
            else:
                assert code == 200 and headers["content-type"].startswith("text/event-stream")
                if headers.get("connection") == "close":  # the retry hint, not a stream
                    refused["stream"] += 1
                    assert body.startswith(b"retry: ")
        elapsed = time.monotonic() - started
        assert refused["stream"] > 20 and refused["healthz"] > 20, refused
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: health_or_none(gateway), 10, message="the gateway to serve again")
    log = gateway.log()
    assert "Traceback" not in log
    assert 1 <= log.count("out of file descriptors") <= 1 + int(elapsed // 10)
