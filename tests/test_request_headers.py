"""Request heads: the parser pywsgi uses in the gateway, alone and behind a real gateway."""

from __future__ import annotations

import io
import socket

import pytest
from conftest import health
from sse_client import Stream, subscribed

from gateway.request_headers import MAX_HEADERS, MAX_LINE, RequestHeaders


def parse(head: bytes) -> RequestHeaders:
    return RequestHeaders(io.BufferedReader(io.BytesIO(head), 1024))


def test_values_by_case_insensitive_name_first_one_wins_and_lines_are_kept():
    headers = parse(b"Host: a\r\nLast-Event-ID:  42 \r\nX-Twice: 1\r\nx-twice: 2\r\n\r\nbody")
    assert headers.status == ""
    assert headers.get("last-event-id") == "42"
    assert headers.getheader("LAST-EVENT-ID") == "42"
    assert headers.get("x-twice") == "1"
    assert headers.get("missing", "default") == "default"
    assert headers.typeheader is None
    assert headers.headers == ["Host: a\r\n", "Last-Event-ID:  42 \r\n", "X-Twice: 1\r\n",
                               "x-twice: 2\r\n"]


def test_head_ends_at_a_bare_lf_or_at_end_of_input():
    assert parse(b"A: 1\n\nB: 2\n").headers == ["A: 1\n"]
    assert parse(b"A: 1\r\n").headers == ["A: 1\r\n"]


def test_deleting_a_header_removes_every_line_of_it():
    headers = parse(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n")
    del headers["content-length"]
    assert headers.get("Content-Length") is None
    assert headers.headers == ["Transfer-Encoding: chunked\r\n"]
    with pytest.raises(KeyError):
        del headers["content-length"]


def test_content_type_is_the_typeheader():
    assert parse(b"Content-Type: application/json\r\n\r\n").typeheader == "application/json"


@pytest.mark.parametrize("head, problem", [
    (b"Name : value\r\n\r\n", "Invalid header line"),
    (b"A: 1\r\n folded\r\n\r\n", "Invalid header line"),
    (b"no colon here\r\n\r\n", "Invalid header line"),
    (b": no name\r\n\r\n", "Invalid header line"),
    (b"A: " + b"x" * MAX_LINE + b"\r\n\r\n", "Line too long"),
    (b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n",
     f"More than {MAX_HEADERS} headers"),
])
def test_malformed_heads_name_their_problem(head, problem):
    assert parse(head).status == problem


def test_exactly_the_maximum_number_of_headers_is_accepted():
    headers = parse(b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n")
    assert headers.status == "" and len(headers.headers) == MAX_HEADERS


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received


@pytest.mark.parametrize("bad_header", [
    b"Last-Event-ID : 1\r\n",
    b"Accept: text/event-stream\r\n  folded-continuation\r\n",
    b"X-Long: " + b"y" * (MAX_LINE + 10) + b"\r\n",
    b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)),
])
def test_gateway_answers_a_malformed_head_with_400_and_keeps_serving(start_gateway, bad_header):
    gateway = start_gateway()
    answer = raw_request(gateway.port, b"GET /events/x HTTP/1.1\r\nHost: t\r\n" + bad_header
                         + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert health(gateway)["subscribers"] == 0


def test_resume_header_is_read_whatever_its_case(start_gateway):
    gateway = start_gateway()
    first = gateway.publish("cased", {"data": "one"}).json()["id"]
    second = gateway.publish("cased", {"data": "two"}).json()["id"]
    with Stream(f"{gateway.url}/events/cased", headers={"last-event-id": first}) as stream:
        [event] = stream.wait_events(1)
        assert (event.data, event.last_event_id) == ("two", second)


def test_chunked_publish_with_a_content_length_too_is_read_as_chunked(start_gateway):
    gateway = start_gateway()
    body = b'{"data":"chunked"}'
    request = (b"POST /publish/te HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    with Stream(f"{gateway.url}/events/te") as stream:
        stream.wait_for(subscribed)
        answer = raw_request(gateway.port, request)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        [event] = stream.wait_events(1)
        assert event.data == "chunked"
