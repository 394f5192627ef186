"""Single publishes pipelined on one keep-alive connection: answered in order, each as if alone
(a bad one refused in its place, the others published), sharing Redis round trips, and
published even when the client leaves before reading the answers."""

from __future__ import annotations

import json
import socket
import time

import redis
from test_http_hostile import connect
from test_http_server import read_response
from test_operations import scrape, value


def publish_request(channel: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (b"POST /publish/%s HTTP/1.1\r\nHost: gw\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (channel.encode(), content_type.encode(),
                                               len(body), body))


def message(text: str) -> bytes:
    return json.dumps({"data": text}).encode()


def published(gateway) -> float:
    return value(scrape(gateway), "sse_gateway_events_published_total")


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict, dict]]:
    rest, answers = b"", []
    for _ in range(count):
        status, headers, body, rest = read_response(sock, rest)
        answers.append((status, headers, json.loads(body)))
    return answers


def test_pipelined_publishes_are_answered_in_order_a_bad_one_in_its_place(
        start_gateway, broker_args, open_stream):
    gateway = start_gateway(*broker_args)
    streams = {name: open_stream(f"{gateway.url}/events/{name}") for name in ("left", "right")}
    # Good publishes to two channels, interleaved, with refusals among them (a body that is not
    # JSON, a message the rule refuses, a bad channel name) and a request of another kind.
    plan: list[tuple[bytes, int, str | None]] = []
    for i in range(40):
        channel = ("left", "right")[i % 2]
        plan.append((publish_request(channel, message(f"{channel} {i}")), 200, channel))
        if i == 7:
            plan.append((publish_request("left", b'{"data": '), 400, None))
        if i == 15:
            plan.append((publish_request("right", b'{"data": "x", "retry": "soon"}'), 400, None))
        if i == 23:
            plan.append((b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n", 200, None))
        if i == 31:
            # Refused before its body is read: an empty one, so that the connection stays.
            plan.append((publish_request("bad%20name", b""), 400, None))
    with connect(gateway.port) as sock:
        sock.sendall(b"".join(request for request, _, _ in plan))
        answers = read_answers(sock, len(plan))
    assert [status for status, _, _ in answers] == [status for _, status, _ in plan]
    ids: dict[str, list[str]] = {"left": [], "right": []}
    for (status, headers, body), (_, _, channel) in zip(answers, plan):
        assert headers["content-type"] == "application/json"
        assert "connection" not in headers  # the connection stays open throughout
        if channel is not None:
            assert body["channel"] == channel, body
            ids[channel].append(body["id"])
        elif status == 400:
            assert body["error"] and body["detail"], body
        else:
            assert body["status"] == "ok", body
    for channel, stream in streams.items():
        events = stream.wait_events(20)
        wanted = [f"{channel} {i}" for i in range(40) if ("left", "right")[i % 2] == channel]
        assert [event.data for event in events] == wanted
        assert [event.last_event_id for event in events] == ids[channel]
    assert published(gateway) == 40
    assert gateway.publish("left", {"data": "after"}).status_code == 200
    assert streams["left"].wait_events(21)[-1].data == "after"


def test_pipelined_publishes_share_redis_round_trips(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(f"{gateway.url}/events/shared")
    client = redis.Redis.from_url(redis_db.url)
    count = 50
    burst = b"".join(publish_request("shared", message(str(i))) for i in range(count))
    with connect(gateway.port) as sock:
        reads_before = client.info("stats")["total_reads_processed"]
        sock.sendall(burst)
        answers = read_answers(sock, count)
        reads = client.info("stats")["total_reads_processed"] - reads_before
    assert [status for status, _, _ in answers] == [200] * count
    assert [event.data for event in stream.wait_events(count)] == [str(i) for i in range(count)]
    # One at a time, each publish is a read of its own for Redis; pipelined, the requests that
    # arrived together leave together (the burst comes in a few reads of the socket).
    assert reads < count // 3, f"{reads} reads by Redis for {count} pipelined publishes"


def test_publishes_pipelined_before_the_client_left_are_all_published(
        start_gateway, broker_args, open_stream):
    gateway = start_gateway(*broker_args)
    stream = open_stream(f"{gateway.url}/events/left")
    complete = b"".join(publish_request("left", message(f"sent {i}")) for i in range(10))
    # The last request's head is whole but its chunked body never ends: the connection is
    # dropped with the answers held back for the ten before it unsent, and their publishes
    # must happen all the same.
    cut = (b"POST /publish/left HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"data\": ")
    with connect(gateway.port) as sock:
        sock.sendall(complete + cut)
        sock.shutdown(socket.SHUT_WR)
    events = stream.wait_events(10)
    assert [event.data for event in events] == [f"sent {i}" for i in range(10)]
    assert published(gateway) == 10
    # A publish after them, from another client, comes after them.
    assert gateway.publish("left", {"data": "next"}).status_code == 200
    assert [event.data for event in stream.wait_events(11)][10:] == ["next"]


def test_a_publish_is_made_while_the_long_poll_pipelined_behind_it_waits(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(f"{gateway.url}/events/first")
    with connect(gateway.port) as sock:
        sock.sendall(publish_request("first", message("before the poll"))
                     + b"GET /poll/quiet?timeout=20 HTTP/1.1\r\nHost: gw\r\n\r\n")
        # The poll holds the connection, and the publish's answer with it; not the publish.
        [event] = stream.wait_events(1, timeout=10)
        assert event.data == "before the poll"
        assert gateway.publish("quiet", {"data": "wake"}).status_code == 200
        [(first, _, answer), (second, _, poll)] = read_answers(sock, 2)
    assert first == 200 and answer["channel"] == "first" and answer["id"] == event.last_event_id
    assert second == 200 and [e["data"] for e in poll["events"]] == ["wake"], poll


def test_large_pipelined_publishes_are_all_answered_and_published_in_order(
        start_gateway, redis_db, open_stream):
    # 12 bodies of 40 KB: more than the bytes of bodies whose answers may be held at once.
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(f"{gateway.url}/events/large")
    texts = [f"{i:02d}" * 20_000 for i in range(12)]
    with connect(gateway.port) as sock:
        sock.sendall(b"".join(publish_request("large", message(text)) for text in texts))
        answers = read_answers(sock, len(texts))
    assert [(status, body["channel"]) for status, _, body in answers] == [(200, "large")] * 12
    events = stream.wait_events(12)
    assert [event.data for event in events] == texts
    assert [event.last_event_id for event in events] == [body["id"] for _, _, body in answers]


def test_a_stream_pipelined_behind_publishes_starts_after_their_answers(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    with connect(gateway.port) as sock:
        sock.sendall(publish_request("news", message("one")) + publish_request("news", message("two"))
                     + b"GET /events/news HTTP/1.1\r\nHost: gw\r\n\r\n")
        rest = b""
        for _ in range(2):
            status, _, body, rest = read_response(sock, rest)
            assert status == 200 and json.loads(body)["channel"] == "news"
        while b"\r\n\r\n" not in rest:
            data = sock.recv(65536)
            assert data, rest
            rest += data
        head = rest.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200") and b"text/event-stream" in head, head
        # The connection is the stream's now: its first chunk ends with an `id:` line (the
        # subscription is live), and live events follow.
        rest = rest.partition(b"\r\n\r\n")[2]
        deadline = time.monotonic() + 10
        while b"\nid: " not in rest and time.monotonic() < deadline:
            rest += sock.recv(65536)
        assert gateway.publish("news", {"data": "three"}).status_code == 200
        while b"data: three" not in rest and time.monotonic() < deadline:
            rest += sock.recv(65536)
        assert b"data: three" in rest, rest
