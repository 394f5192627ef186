"""A kept-alive connection between requests: the long-poll's path, with one timer per process.

A connection waiting for its next request has no timer of its own; a per-process sweep closes
it once it has been idle for the idle timeout. These tests pin what that must still do: close
an idle connection on time (not early, not much late), count idleness from the end of the last
answer (a client that keeps polling stays connected), and close idle ones at once when the
process stops. Real gateway processes, raw sockets.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from test_http_hostile import assert_json_refusal, connect, read_until_closed, split_response

IDLE = 1.0  # --idle-timeout in these tests
SLACK = 2.0  # how much later than due a loaded machine may close it


def poll_once(sock, channel: str = "keep") -> dict:
    sock.sendall(f"GET /poll/{channel}?timeout=0 HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    code, headers, body = split_response(data)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    assert code == 200 and "connection" not in headers, (code, headers)
    return json.loads(body)


def test_an_idle_kept_alive_poll_connection_closes_after_the_idle_timeout_not_before(
        start_gateway):
    gateway = start_gateway("--idle-timeout", str(IDLE))
    with connect(gateway.port) as sock:
        answer = poll_once(sock)
        assert answer["events"] == []
        answered = time.monotonic()
        assert read_until_closed(sock, IDLE + SLACK + 5) == b""
        idle_for = time.monotonic() - answered
    assert IDLE - 0.05 <= idle_for <= IDLE + SLACK, idle_for


def test_a_client_that_keeps_polling_is_never_cut_by_the_idle_timeout(start_gateway):
    gateway = start_gateway("--idle-timeout", str(IDLE))
    with connect(gateway.port) as sock:
        started = time.monotonic()
        polls = 0
        # Polls half a timeout apart, for three timeouts: each wait is shorter than the timeout.
        while time.monotonic() - started < 3 * IDLE:
            poll_once(sock)
            polls += 1
            time.sleep(IDLE / 2)
        assert polls >= 4
        poll_once(sock)  # still open: the answer comes on the same connection
        assert read_until_closed(sock, IDLE + SLACK + 5) == b""


def test_stopping_the_process_closes_idle_kept_alive_connections_at_once(start_gateway):
    gateway = start_gateway("--idle-timeout", "60")
    socks = [connect(gateway.port) for _ in range(5)]
    try:
        for sock in socks:
            poll_once(sock)
        stopped = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        for sock in socks:
            assert read_until_closed(sock, 10) == b""
        assert time.monotonic() - stopped < 10
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("head, status", [
    (b"GET /poll/keep HTTP/1.1\r\nHost: gw\r\nX-A : b\r\n\r\n", 400),
    (b"GET /poll/keep HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n", 400),
    (b"GET /poll/keep HTTP/1.1\r\nHost: gw\r\nX-A: b\x00c\r\n\r\n", 400),
    (b"GET /poll/keep HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /poll/keep HTTP/1.1\r\nHost: gw\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431),
], ids=["space-before-colon", "two-hosts", "nul", "length-and-chunked", "too-large"])
def test_a_hostile_head_after_a_poll_on_a_kept_alive_connection_gets_its_json_refusal(
        start_gateway, head, status):
    gateway = start_gateway("--max-head-size", "8192")
    with connect(gateway.port) as sock:
        poll_once(sock)
        sock.sendall(head)
        assert_json_refusal(read_until_closed(sock, 10), status)
