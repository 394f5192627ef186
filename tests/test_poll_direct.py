"""Long-polls held and answered in the event loop: the bytes the request's greenlet would send.

A held poll (no expiry, its request a kept-alive GET) is answered by its wake-up in the event
loop, with a response made once for every poll answered with the same events, and its
connection then waits there for the next request, which the loop serves too when it is a plain
poll; a poll answered at once from history shares those responses. A poll whose request closes
the connection takes the greenlet's path all the way: they must all be the same bytes (the
Date aside, which is the second it was sent, and the `Connection: close`), for JSON and JSONP,
per Origin, on both brokers. The connection carries on as any other: the next requests are
served in order, whatever they are (another path, a private channel, a split head, pipelined
ones, a hostile one with its JSON 4xx), a socket that cannot take the whole answer still gets
all of it, an idle one closes after the idle timeout, and a server that stops ends it at once.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests
from conftest import publish_all, wait_until
from test_http_server import assert_first_come_first_served, order_served

ORIGIN = "https://app.example"
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def connect(gateway, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", gateway.port))
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> bytes:
    """The next whole response on `sock` (a Content-Length one); what follows stays in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"the connection closed; received {bytes(buffer)!r}"
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    length = int(re.search(rb"\r\nContent-Length: ([0-9]+)\r\n", buffer[:end]).group(1))
    while len(buffer) < end + length:
        data = sock.recv(65536)
        assert data, "the connection closed in a body"
        buffer += data
    response = bytes(buffer[:end + length])
    del buffer[:end + length]
    return response


def undated(response: bytes) -> bytes:
    """The response without its Date line (checked to be there, once) and without the
    `Connection: close` that the greenlet's path adds when the client asks for it."""
    assert len(_DATE.findall(response)) == 1, response
    return _DATE.sub(b"\r\n", response).replace(b"\r\nConnection: close\r\n", b"\r\n")


def greenlets_answer(gateway, channel: str, query: str, headers: str = "") -> bytes:
    """A poll's answer on the greenlet's path all the way: a request that closes its
    connection is never answered from the event loop, nor through its shared responses."""
    with connect(gateway) as sock:
        sock.sendall(poll_request(channel, query, headers + "Connection: close\r\n"))
        response = read_response(sock, bytearray())
    assert b"\r\nConnection: close\r\n" in response
    return response


def body(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def poll_request(channel: str, query: str, headers: str = "") -> bytes:
    return f"GET /poll/{channel}?{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()


def subscribers(gateway) -> int:
    return requests.get(gateway.url + "/healthz", timeout=5).json()["subscribers"]


def hold(gateway, sock: socket.socket, request: bytes, held: int) -> None:
    """Send a poll and wait until the gateway holds it (`held` subscribers in all)."""
    sock.sendall(request)
    wait_until(lambda: subscribers(gateway) >= held, 10, message="the poll to be held")


REFERER = f"Referer: {ORIGIN}/page\r\n"  # JSONP, with an allowlist, from a listed page only
VARIANTS = [
    pytest.param("", "", id="json"),
    pytest.param("&callback=onEvents", REFERER, id="jsonp"),
    pytest.param("", f"Origin: {ORIGIN}\r\n", id="json-origin"),
    pytest.param("&callback=cb2", f"Origin: {ORIGIN}\r\n{REFERER}", id="jsonp-origin"),
]


@pytest.mark.parametrize("query, headers", VARIANTS)
def test_an_answer_from_the_event_loop_is_the_greenlets_bytes(start_gateway, broker_args,
                                                               query, headers):
    gateway = start_gateway(*broker_args, "--cors-origin", ORIGIN)
    [first] = publish_all(gateway, "c", ["before"])
    held = [connect(gateway) for _ in range(3)]
    try:
        for count, sock in enumerate(held, 1):
            hold(gateway, sock, poll_request("c", f"timeout=20&lastEventId={first}{query}",
                                             headers), count)
        [event] = publish_all(gateway, "c", ['{"n": "ü\u2028"}'])
        answers = [read_response(sock, bytearray()) for sock in held]
        # The same event from history, answered at once: through the shared responses, and
        # on the greenlet's path all the way.
        with connect(gateway) as sock:
            sock.sendall(poll_request("c", f"timeout=20&lastEventId={first}{query}", headers))
            shared = read_response(sock, bytearray())
        expected = greenlets_answer(gateway, "c", f"timeout=20&lastEventId={first}{query}",
                                    headers)
    finally:
        for sock in held:
            sock.close()
    assert [undated(answer) for answer in answers + [shared]] == [undated(expected)] * 4
    text = body(expected).decode()
    if query:
        assert text.startswith("/**/" + query.split("=")[1] + "(")
        text = text[text.index("(") + 1:-2]
    assert json.loads(text)["events"] == [{"event": "message", "data": '{"n": "ü\u2028"}',
                                           "id": event}]
    assert (f"Access-Control-Allow-Origin: {ORIGIN}".encode() in expected) == ("Origin" in headers)


def test_the_events_of_one_turn_are_answered_together_in_order(start_gateway):
    """A batch published in one step reaches the held poll in one dispatch: its answer holds
    every event of it, as the greenlet would have taken them (embedded broker: deterministic)."""
    gateway = start_gateway()
    [first] = publish_all(gateway, "b", ["0"])
    with connect(gateway) as sock:
        hold(gateway, sock, poll_request("b", f"timeout=20&lastEventId={first}&batch=3"), 1)
        lines = "".join(json.dumps({"channel": "b", "data": str(n)}) + "\n" for n in range(1, 6))
        response = requests.post(gateway.url + "/publish/", data=lines, timeout=10,
                                 headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 200, response.text
        ids = response.json()["ids"]
        answer = read_response(sock, bytearray())
    expected = greenlets_answer(gateway, "b", f"timeout=20&lastEventId={first}&batch=3")
    assert undated(answer) == undated(expected)
    parsed = json.loads(body(answer))
    assert [(e["data"], e["id"]) for e in parsed["events"]] == [("1", ids[0]), ("2", ids[1]),
                                                                 ("3", ids[2])]
    assert parsed["lastEventId"] == ids[2]


def test_a_connection_answered_so_carries_on_in_order(start_gateway, broker_args):
    """Poll after poll on one connection, each held then answered from the event loop: every
    event once, in order; then a pipelined pair, answered in order."""
    gateway = start_gateway(*broker_args)
    [cursor] = publish_all(gateway, "k", ["start"])
    buffer = bytearray()
    seen = []
    with connect(gateway) as sock:
        for n in range(15):
            hold(gateway, sock, poll_request("k", f"timeout=20&lastEventId={cursor}"), 1)
            publish_all(gateway, "k", [str(n)])
            answer = json.loads(body(read_response(sock, buffer)))
            seen += [e["data"] for e in answer["events"]]
            cursor = answer["lastEventId"]
            wait_until(lambda: subscribers(gateway) == 0, 10,
                       message="the answered poll to leave the hub")
        # Two polls at once (the first held with the second behind it, on the greenlet's path):
        # the second is read only after the first is answered.
        sock.sendall(poll_request("k", f"timeout=20&lastEventId={cursor}") * 2)
        wait_until(lambda: subscribers(gateway) == 1, 10, message="the poll to be held")
        [last] = publish_all(gateway, "k", ["last"])
        first = json.loads(body(read_response(sock, buffer)))
        second = json.loads(body(read_response(sock, buffer)))
    assert seen == [str(n) for n in range(15)]
    # Both from the same cursor: the second is answered from history with the same event.
    assert first == second and [e["data"] for e in first["events"]] == ["last"]
    assert first["lastEventId"] == last


def test_next_polls_that_arrive_while_the_process_is_busy_are_served_in_the_order_they_came(
        start_gateway):
    """Connections whose polls were answered from the event loop, their greenlets asleep: their
    next polls, which arrive together while the process is busy, are served first come, first
    served."""
    gateway = start_gateway()
    [first] = publish_all(gateway, "q", ["0"])
    socks = [connect(gateway) for _ in range(16)]
    try:
        for count, sock in enumerate(socks, 1):
            hold(gateway, sock, poll_request("q", f"timeout=20&lastEventId={first}"), count)
        [event] = publish_all(gateway, "q", ["1"])
        for sock in socks:
            assert json.loads(body(read_response(sock, bytearray())))["lastEventId"] == event
        wait_until(lambda: subscribers(gateway) == 0, 10, message="the answered polls to leave")
        order = order_served(gateway, socks, [poll_request("q", f"timeout=0&lastEventId={event}")]
                             * len(socks))
        assert_first_come_first_served(order)
    finally:
        for sock in socks:
            sock.close()


def test_a_socket_that_takes_part_of_the_answer_gets_all_of_it(start_gateway):
    """The client reads nothing until the answer is sent: more than its socket and the
    gateway's (at most 4 MiB, net.ipv4.tcp_wmem) can take."""
    gateway = start_gateway("--max-message-size", "1100000", "--max-publish-batch-size",
                            "8000000")
    [first] = publish_all(gateway, "big", ["0"])
    values = [f"{n:02d}" + "x" * 1000000 for n in range(7)]  # in one batch: 7 MB
    with connect(gateway, rcvbuf=4096) as sock:
        hold(gateway, sock, poll_request("big", f"timeout=20&lastEventId={first}&batch=7"), 1)
        lines = "".join(json.dumps({"channel": "big", "data": v}) + "\n" for v in values)
        response = requests.post(gateway.url + "/publish/", data=lines, timeout=10,
                                 headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 200, response.text
        time.sleep(0.5)  # not a synchronisation: the socket fills while the client does not read
        buffer = bytearray()
        answer = json.loads(body(read_response(sock, buffer)))
        assert [e["data"] for e in answer["events"]] == values
        # The connection goes on.
        sock.sendall(poll_request("big", f"timeout=0&lastEventId={answer['lastEventId']}"))
        assert json.loads(body(read_response(sock, buffer)))["events"] == []


@pytest.mark.parametrize("hostile, status", [
    pytest.param(b"GET /poll/h HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, id="bad-line"),
    pytest.param(b"GET /poll/h HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431,
                 id="too-large"),
])
@pytest.mark.parametrize("when", ["while-held", "after-answer"])
def test_a_hostile_request_after_an_answer_gets_its_json_error(start_gateway, hostile, status,
                                                               when):
    gateway = start_gateway()
    with connect(gateway) as sock:
        hold(gateway, sock, poll_request("h", "timeout=20"), 1)
        if when == "while-held":
            sock.sendall(hostile)
        [event] = publish_all(gateway, "h", ["x"])
        buffer = bytearray()
        answer = json.loads(body(read_response(sock, buffer)))
        assert [e["id"] for e in answer["events"]] == [event]
        if when == "after-answer":
            sock.sendall(hostile)
        refusal = read_response(sock, buffer)
    assert refusal.startswith(b"HTTP/1.1 %d " % status), refusal
    assert set(json.loads(body(refusal))) == {"error", "detail"}


def test_stopping_ends_a_connection_sleeping_after_its_answer(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    with connect(gateway) as sock:
        hold(gateway, sock, poll_request("s", "timeout=25"), 1)
        publish_all(gateway, "s", ["x"])
        read_response(sock, bytearray())
        started = time.monotonic()
        assert gateway.stop(timeout=20) == 0, gateway.log()
        assert sock.recv(100) == b""
    # Not after the hold (25 s), nor after the shutdown timeout (5 s) that would kill it.
    assert time.monotonic() - started < 4, gateway.log()


def loop_holds(gateway, sock: socket.socket, buffer: bytearray, channel: str,
               cursor: str = "") -> str:
    """A poll held then answered from the event loop (the connection is the loop's after it);
    the event's id."""
    query = f"timeout=20&lastEventId={cursor}" if cursor else "timeout=20"
    held = subscribers(gateway) + 1
    hold(gateway, sock, poll_request(channel, query), held)
    [event] = publish_all(gateway, channel, ["x"])
    answer = json.loads(body(read_response(sock, buffer)))
    assert [e["id"] for e in answer["events"]] == [event]
    return event


def test_what_follows_an_answer_from_the_event_loop_is_served_whatever_it_is(start_gateway,
                                                                            broker_args):
    """After each poll answered from the event loop, the connection's next request is one the
    loop does not serve itself: another path, a private channel, a head in two parts, two
    pipelined polls, a cursor of another stream. A greenlet gets each with the bytes received,
    and answers it as any request."""
    gateway = start_gateway(*broker_args, "--private-channel", "secret",
                            "--subscribe-key", "test-only-hs256-secret-of-32-bytes!")
    buffer = bytearray()
    with connect(gateway) as sock:
        event = loop_holds(gateway, sock, buffer, "f")

        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        health = read_response(sock, buffer)
        assert health.startswith(b"HTTP/1.1 200 ") and json.loads(body(health))["status"] == "ok"
        event = loop_holds(gateway, sock, buffer, "f", event)

        sock.sendall(poll_request("secret", "timeout=0"))
        refusal = read_response(sock, buffer)
        assert refusal.startswith(b"HTTP/1.1 401 "), refusal
        event = loop_holds(gateway, sock, buffer, "f", event)

        [later] = publish_all(gateway, "f", ["split"])
        request = poll_request("f", f"lastEventId={event}")
        sock.sendall(request[:20])
        time.sleep(0.3)  # read in the loop alone: not a whole head
        sock.sendall(request[20:])
        answer = json.loads(body(read_response(sock, buffer)))
        assert [(e["data"], e["id"]) for e in answer["events"]] == [("split", later)]
        event = loop_holds(gateway, sock, buffer, "f", later)

        [last] = publish_all(gateway, "f", ["pipelined"])
        sock.sendall(poll_request("f", f"lastEventId={event}") +
                     poll_request("f", f"lastEventId={last}&timeout=0"))
        first = json.loads(body(read_response(sock, buffer)))
        second = json.loads(body(read_response(sock, buffer)))
        assert [e["data"] for e in first["events"]] == ["pipelined"]
        assert (second["events"], second["lastEventId"]) == ([], last)
        loop_holds(gateway, sock, buffer, "f", last)

        sock.sendall(poll_request("f", "lastEventId=not-an-id&timeout=0"))
        reset = json.loads(body(read_response(sock, buffer)))
        assert reset["events"][0]["event"] == "gateway-reset", reset
    assert "Traceback" not in gateway.log()


def test_a_connection_the_event_loop_holds_between_polls_closes_after_the_idle_timeout(
        start_gateway):
    gateway = start_gateway("--idle-timeout", "1")
    with connect(gateway) as sock:
        loop_holds(gateway, sock, bytearray(), "i")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the gateway, idle
    assert 0.9 < time.monotonic() - started < 5
