"""The gateway's own HTTP/1.1 server and WSGI adapter, over raw sockets against a real process:
keep-alive and pipelining, HEAD, Expect: 100-continue, HTTP/1.0, the environ's headers, and a
graceful shutdown that does not wait for idle connections."""

from __future__ import annotations

import collections
import json
import select
import signal
import socket
import time

import gevent
import gevent.event
from conftest import health
from sse_client import Stream, subscribed
from test_http_hostile import connect, read_until_closed, split_response

from gateway.http.connection import ADMIT_BATCH, Server, Settings


def read_response(sock: socket.socket, buffer: bytes = b"",
                  head_only: bool = False) -> tuple[int, dict, bytes, bytes]:
    """One response with a Content-Length body from `sock`: (status, headers, body, the rest)."""
    sock.settimeout(10)
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"closed before a whole head; got {buffer!r}"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status, headers, _ = split_response(head + b"\r\n\r\n")
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "closed before the whole body"
        rest += data
    return status, headers, rest[:length], rest[length:]


def test_pipelined_requests_are_answered_in_order_on_one_connection(start_gateway):
    gateway = start_gateway()
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
                     b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        rest = b""
        statuses = []
        for _ in range(3):
            status, headers, body, rest = read_response(sock, rest)
            statuses.append(status)
            assert headers["content-type"] == "application/json" and json.loads(body)
            assert "date" in headers and "connection" not in headers
        assert statuses == [200, 404, 200]


def test_head_gets_the_headers_without_the_body_and_the_connection_goes_on(start_gateway):
    gateway = start_gateway()
    with connect(gateway.port) as sock:
        sock.sendall(b"HEAD /static/eventsource.js HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, headers, _, rest = read_response(sock, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 1000 and rest == b""
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        # Had the HEAD response carried its body, those bytes would come first here.
        sock.settimeout(10)
        assert sock.recv(12) == b"HTTP/1.1 200"


def test_expect_100_continue_is_answered_before_the_body_is_sent(start_gateway, open_stream):
    gateway = start_gateway()
    stream = open_stream(f"{gateway.url}/events/continued")
    body = b'{"data": "after continue"}'
    with connect(gateway.port) as sock:
        sock.sendall(b"POST /publish/continued HTTP/1.1\r\nHost: gw\r\nContent-Type: "
                     b"application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                     % len(body))
        sock.settimeout(10)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, answer, _ = read_response(sock)
        assert status == 200 and json.loads(answer)["channel"] == "continued"
    [event] = stream.wait_events(1)
    assert event.data == "after continue"


def test_a_publish_refused_before_its_body_is_read_closes_after_the_answer(start_gateway):
    gateway = start_gateway()
    with connect(gateway.port) as sock:
        sock.sendall(b"POST /publish/x HTTP/1.1\r\nHost: gw\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
        status, headers, body, _ = read_response(sock)
        assert status == 415 and json.loads(body)["error"] == "unsupported media type"
        # The rest of the body would otherwise be read as the next request.
        assert headers["connection"] == "close"
        read_until_closed(sock)


def test_http_1_0_gets_its_answer_and_the_connection_closes(start_gateway):
    gateway = start_gateway()
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        data = read_until_closed(sock)
    status, headers, body = split_response(data)
    assert data.startswith(b"HTTP/1.1 200 ")  # RFC 9110 section 2.5: our own version
    assert headers["connection"] == "close" and json.loads(body)["status"] == "ok"


def test_an_absolute_url_target_is_served_like_its_path(start_gateway):
    gateway = start_gateway()
    with connect(gateway.port) as sock:
        sock.sendall(b"GET http://gw.example/healthz HTTP/1.1\r\nHost: other\r\n\r\n")
        status, _, body, _ = read_response(sock)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_resume_header_is_read_whatever_its_case(start_gateway):
    gateway = start_gateway()
    first = gateway.publish("cased", {"data": "one"}).json()["id"]
    second = gateway.publish("cased", {"data": "two"}).json()["id"]
    with Stream(f"{gateway.url}/events/cased", headers={"last-event-id": first}) as stream:
        [event] = stream.wait_events(1)
        assert (event.data, event.last_event_id) == ("two", second)


def test_a_header_name_with_an_underscore_does_not_reach_the_application(start_gateway):
    # Last_Event_ID and Last-Event-ID would be the same WSGI key; the first is dropped.
    gateway = start_gateway()
    first = gateway.publish("underscored", {"data": "one"}).json()["id"]
    gateway.publish("underscored", {"data": "two"})
    with Stream(f"{gateway.url}/events/underscored", headers={"Last_Event_ID": first}) as stream:
        stream.wait_for(subscribed)
        gateway.publish("underscored", {"data": "three"})
        [event] = stream.wait_events(1)
        assert event.data == "three", "the header was not taken as a resume point"


def test_responses_and_stream_heads_carry_a_date(start_gateway):
    gateway = start_gateway()
    with Stream(f"{gateway.url}/events/dated") as stream:
        assert stream.headers["transfer-encoding"] == "chunked"
        assert stream.headers["date"].endswith(" GMT")
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_response(sock)[1]["date"].endswith(" GMT")


def test_shutdown_does_not_wait_for_idle_keep_alive_connections(start_gateway):
    gateway = start_gateway("--shutdown-timeout", "20", "--idle-timeout", "60")
    idle = []
    for _ in range(5):
        sock = connect(gateway.port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_response(sock)[0] == 200  # and then it waits for a next request
        idle.append(sock)
    silent = connect(gateway.port)  # connected, nothing sent yet
    stream = Stream(f"{gateway.url}/events/bye")
    stream.wait_for(subscribed)
    assert health(gateway)["subscribers"] == 1
    started = time.monotonic()
    try:
        assert gateway.stop(signal.SIGTERM, timeout=20) == 0
        assert time.monotonic() - started < 10, "well within the 20 s shutdown timeout"
        assert "still running" not in gateway.log()
        for sock in [*idle, silent]:
            assert read_until_closed(sock, 5) == b""
        stream.read_to_end(5)
        assert stream.ended
    finally:
        for sock in [*idle, silent]:
            sock.close()
        stream.close()


def test_requests_that_arrive_while_the_process_is_busy_are_served_in_the_order_they_came(
        start_gateway):
    gateway = start_gateway()
    socks = [connect(gateway.port) for _ in range(16)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert read_response(sock)[0] == 200
        order = order_served(gateway, socks, [b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"]
                             * len(socks))
        assert_first_come_first_served(order)
    finally:
        for sock in socks:
            sock.close()


def assert_first_come_first_served(order: list[int]) -> None:
    """`order` (of `order_served`) is first come, first served, but for a straggler or two that
    a loaded machine delays (a client's request, or the process's stop, a little late): the
    order they are served in when a turn's watchers run last-ready first is the reverse, in
    which no two follow in order."""
    assert sorted(order) == list(range(len(order))), order
    ascending = sum(1 for a, b in zip(order, order[1:]) if b > a)
    assert ascending >= len(order) - 3, order


def order_served(gateway, socks: list[socket.socket], requests: list[bytes]) -> list[int]:
    """Send each kept-alive connection its request, in turn, while the process is stopped (as
    a saturated one is busy); once it runs again, one turn of its loop finds them all. The
    order in which they were answered, by index in `socks`: first come, first served is
    0, 1, 2...

    This kernel's epoll lists ready sockets in the order they became ready: registered before
    the answers come, and asked once they all have, it tells the order they came in."""
    poller = select.epoll()
    try:
        for sock in socks:
            poller.register(sock.fileno(), select.EPOLLIN)
        gateway.proc.send_signal(signal.SIGSTOP)
        try:
            for sock, request in zip(socks, requests):
                sock.sendall(request)
                time.sleep(0.005)  # not a wait for anything: the order the requests arrive in
        finally:
            gateway.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while len(select.select(socks, [], [], 0.05)[0]) < len(socks):  # leaves epoll's list be
            assert time.monotonic() < deadline, "every request answered"
        index = {sock.fileno(): i for i, sock in enumerate(socks)}
        return [index[fd] for fd, _ in poller.poll(0, len(socks))]
    finally:
        poller.close()


def test_a_turn_of_the_loop_serves_a_batch_of_arrivals_at_most_the_rest_next_in_order():
    """Driven in this process's gevent loop: 5 batches' worth of connections whose requests
    arrived in one turn are served in arrival order over at least 5 turns, a batch at most
    each, so the I/O ready meanwhile gets its turn between them."""
    server = Server(None, Settings(8192, 10.0, 75.0, 1 << 20), ("127.0.0.1", 0),
                    lambda request: b"", lambda *job: None)
    loop = server.hub.loop
    turns = collections.Counter()
    turn = [0]
    counter = loop.prepare()  # once a turn, before the loop waits for I/O
    counter.start(lambda: turn.__setitem__(0, turn[0] + 1))
    served = []
    done = gevent.event.Event()
    count = 5 * ADMIT_BATCH

    def serve(n: int) -> None:
        served.append(n)
        turns[turn[0]] += 1
        if n == count - 1:
            done.set()

    def arrive() -> None:  # as the read watchers of one turn do: last-ready first
        for n in reversed(range(count)):
            server.arrived(serve, n)

    loop.run_callback(arrive)
    try:
        assert done.wait(10)
    finally:
        counter.stop()
    assert served == list(range(count))
    assert max(turns.values()) <= ADMIT_BATCH and len(turns) >= 5, turns
