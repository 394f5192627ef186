"""The gateway core end to end: real gateway processes, a real redis-server, real sockets.

publish -> broker -> hub -> event stream -> socket, on both brokers where the behaviour is
the broker's business too.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
import requests
from child_processes import die_with_parent, rss_kib
from conftest import ROOT, RedisServer, free_port, health, wait_until
from sse_client import Stream, subscribed

FDS_NEEDED = 2048


def post_json(gateway, channel: str, body) -> requests.Response:
    """POST a message as compact UTF-8 JSON (requests' `json=` would escape non-ASCII)."""
    return requests.post(
        f"{gateway.url}/publish/{channel}", timeout=10,
        data=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )


def publish_ok(gateway, channel: str, body) -> str:
    """Publish a JSON message; return the event id the gateway assigned."""
    response = post_json(gateway, channel, body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def assert_json_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("detail"), str) and body["detail"]
    return body


class RawSubscriber:
    """A bare socket that sends one GET and reads only when told to."""

    def __init__(self, port: int, path: str, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connect, so the advertised window stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   "Accept: text/event-stream\r\n\r\n")
        self.sock.sendall(request.encode("ascii"))
        self.received = b""
        self.eof = False

    def read_until(self, condition: Callable[[bytes], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.received):
            if self.eof:
                raise AssertionError(f"connection closed; got {self.received[-300:]!r}")
            self._recv(deadline)

    def read_to_eof(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._recv(deadline)

    def _recv(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"deadline passed; got {self.received[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise AssertionError(f"deadline passed; got {self.received[-300:]!r}") from None
        except ConnectionResetError:
            data = b""
        if data:
            self.received += data
        else:
            self.eof = True

    def close(self) -> None:
        self.sock.close()


def first_chunk_arrived(received: bytes) -> bool:
    return re.search(rb"\nid: [^\n]*\n\n\r\n", received) is not None


# -- what arrives, on both brokers ------------------------------------------------------------

SIXTY_KIB = "".join(f"{i:07d}é" for i in range(60 * 1024 // 9))  # é is 2 bytes: 9 bytes a block

PAYLOADS = {
    "multi_line": ("one\ntwo\r\nthree\rfour\n\nfive", "one\ntwo\nthree\nfour\n\nfive"),
    "unicode": ("héllo wörld ✓ 日本語 🎉 \u2028 \u0085 end", "héllo wörld ✓ 日本語 🎉 \u2028 \u0085 end"),
    "60_kib": (SIXTY_KIB, SIXTY_KIB),
    "empty_string": ("", ""),
    "leading_space_and_colon": ("  : not a comment", "  : not a comment"),
    "json_object": ({"q": "x", "n": [1, 2.5, None], "nested": {"é": True}},
                    '{"q":"x","n":[1,2.5,null],"nested":{"é":true}}'),
    "json_number": (42, "42"),
}


@pytest.mark.parametrize("kind", PAYLOADS)
def test_published_data_arrives_intact(gateway, open_stream, kind):
    sent, expected = PAYLOADS[kind]
    stream = open_stream(gateway.url + "/events/chat")
    event_id = publish_ok(gateway, "chat", {"data": sent, "event": "payload"})
    [event] = stream.wait_events(1)
    assert event.type == "payload"
    assert event.data == expected
    assert event.last_event_id == event_id


def test_text_plain_publish_arrives_as_plain_data(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/chat")
    text = 'not {"json": at all} ünïcode\nsecond line'
    response = requests.post(
        gateway.url + "/publish/chat", data=text.encode("utf-8"),
        params={"event": "note", "id": "src-1"},
        headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=10,
    )
    assert response.status_code == 200, response.text
    [event] = stream.wait_events(1)
    assert (event.type, event.data) == ("note", text)
    assert event.last_event_id == f"{response.json()['id']} src-1"


def test_stream_response_has_event_stream_headers_and_starts_with_retry_and_a_comment(
        gateway, open_stream):
    stream = open_stream(gateway.url + "/events/chat")
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    cache_directives = [d.strip() for d in stream.headers["cache-control"].split(",")]
    assert "no-cache" in cache_directives
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert re.match(rb"retry: \d+\n\n:[^\n]*\n\n", stream.body), stream.body[:100]
    assert stream.parser.retry == 3000  # the documented default
    assert stream.parser.comments >= 1
    assert stream.events == []


def test_one_request_receives_every_channel_it_names(gateway, open_stream):
    both = open_stream(gateway.url + "/events?channel=alpha&channel=beta")
    alpha_only = open_stream(gateway.url + "/events/alpha")
    assert both.parser.last_event_id == "alpha=0-0,beta=0-0"
    first = publish_ok(gateway, "alpha", {"data": "a1"})
    second = publish_ok(gateway, "beta", {"data": "b1", "event": "b"})
    third = publish_ok(gateway, "alpha", {"data": "a2"})
    events = both.wait_events(3)
    assert [(e.type, e.data) for e in events] == [("message", "a1"), ("b", "b1"), ("message", "a2")]
    assert [e.last_event_id for e in events] == [
        f"alpha={first},beta=0-0", f"alpha={first},beta={second}", f"alpha={third},beta={second}"]
    # A one-channel stream gets only its channel: "b1" would have come between the two.
    assert [e.data for e in alpha_only.wait_events(2)] == ["a1", "a2"]


def test_publisher_id_follows_the_event_id_after_one_space(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/orders")
    event_id = publish_ok(gateway, "orders", {"data": "x", "id": "order-42"})
    assert re.fullmatch(r"\d+-\d+", event_id)
    [event] = stream.wait_events(1)
    assert event.last_event_id == f"{event_id} order-42"
    assert event.last_event_id.split(" ", 1)[1] == "order-42"


def test_retry_field_reaches_the_client_with_its_event(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/chat")
    assert stream.parser.retry == 3000
    publish_ok(gateway, "chat", {"data": "slow down", "retry": 45000})
    [event] = stream.wait_events(1)
    assert event.data == "slow down"
    assert stream.parser.retry == 45000


BAD_FIELDS = [
    ("event", "new\nline"), ("event", "carriage\rreturn"), ("event", "nul\0byte"),
    ("id", "new\nline"), ("id", "carriage\rreturn"), ("id", "nul\0byte"), ("type", "a\r\nb"),
]


def test_event_type_or_id_with_cr_lf_or_nul_is_refused_and_nothing_is_sent(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/chat")
    for field, value in BAD_FIELDS:
        response = gateway.publish("chat", {"data": f"bad {field}", field: value})
        body = assert_json_error(response, 400)
        assert field.replace("type", "event") in body["detail"]
    for field, value in [("event", "x\ny"), ("id", "x\0y")]:
        response = requests.post(gateway.url + "/publish/chat", data=b"bad text",
                                 params={field: value},
                                 headers={"Content-Type": "text/plain"}, timeout=10)
        assert_json_error(response, 400)
    publish_ok(gateway, "chat", {"data": "good", "event": "fine", "id": "ok-1"})
    [event] = stream.wait_events(1)
    assert (event.type, event.data) == ("fine", "good")
    assert b"bad" not in stream.body


def test_idle_stream_gets_keepalive_comments(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/quiet")
    stream.wait_for(lambda s: s.body.count(b"\n: keepalive\n\n") >= 2, timeout=15)
    assert stream.events == []


# -- Redis: one pub/sub connection per process, and raw PUBLISH --------------------------------


def pubsub_connections(redis_client) -> int:
    return sum(1 for client in redis_client.client_list()
               if int(client.get("sub", 0)) > 0 or client.get("cmd") == "subscribe")


def numsub(redis_client, channel: str) -> int:
    [(_, count)] = redis_client.pubsub_numsub(channel)
    return count


def test_500_subscribers_share_one_redis_connection_and_all_receive(start_gateway, redis_db):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FDS_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(FDS_NEEDED, hard), hard))
    client = redis_db.client
    gateway = start_gateway("--redis-url", redis_db.url, "--heartbeat", "1")
    streams: list[Stream] = []
    try:
        for _ in range(500):
            stream = Stream(gateway.url + "/events/crowd")
            streams.append(stream)
            assert stream.status == 200
        for stream in streams:
            stream.wait_for(subscribed, 10)
        assert health(gateway)["subscribers"] == 500
        assert pubsub_connections(client) == 1
        assert numsub(client, "crowd") == 1
        event_id = publish_ok(gateway, "crowd", {"data": {"to": "everyone"}, "event": "hello"})
        for stream in streams:
            [event] = stream.wait_events(1)
            assert (event.type, event.data, event.last_event_id) == (
                "hello", '{"to":"everyone"}', event_id)
        assert pubsub_connections(client) == 1
    finally:
        for stream in streams:
            stream.close()
    wait_until(lambda: numsub(client, "crowd") == 0, 30,
               message="the gateway to UNSUBSCRIBE once every subscriber left")
    wait_until(lambda: health(gateway)["subscribers"] == 0, 10, message="the hub to be empty")
    assert health(gateway)["channels"] == 0


def test_two_gateway_processes_on_one_redis_both_deliver_every_event(
        start_gateway, redis_db, open_stream):
    first = start_gateway("--redis-url", redis_db.url)
    second = start_gateway("--redis-url", redis_db.url)
    on_first = open_stream(first.url + "/events/news")
    on_second = open_stream(second.url + "/events/news")
    response = first.publish("news", {"data": "via first"})
    assert response.status_code == 200
    assert response.json()["receivers"] == 2
    via_second = publish_ok(second, "news", {"data": "via second"})
    expected = [("via first", response.json()["id"]), ("via second", via_second)]
    for stream in (on_first, on_second):
        assert [(e.data, e.last_event_id) for e in stream.wait_events(2)] == expected


def test_flask_sse_style_redis_cli_publish_reaches_a_stream(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(gateway.url + "/events/chat")
    cursor = stream.parser.last_event_id
    result = subprocess.run(
        ["redis-cli", "-p", str(redis_db.port), "PUBLISH", "chat",
         '{"type": "new_answer", "data": {"q": "x"}}'],
        capture_output=True, text=True, timeout=30, check=True, preexec_fn=die_with_parent(),
    )
    assert result.stdout.strip() == "1"  # one gateway process had the channel subscribed
    [event] = stream.wait_events(1)
    assert (event.type, event.data) == ("new_answer", '{"q":"x"}')
    # A raw PUBLISH has no history entry, so it does not move the cursor.
    assert event.last_event_id == cursor


def test_raw_publish_of_non_json_text_arrives_as_plain_data(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(gateway.url + "/events/chat")
    redis_db.client.publish("chat", "just text, {not json")
    redis_db.client.publish("chat", "[1, 2]")
    events = stream.wait_events(2)
    assert [(e.type, e.data) for e in events] == [
        ("message", "just text, {not json"), ("message", "[1, 2]")]


def test_malformed_raw_message_is_skipped_and_logged_and_the_next_one_arrives(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(gateway.url + "/events/chat")
    redis_db.client.publish("chat", '{"type": "no_data_here"}')
    redis_db.client.publish("chat", json.dumps({"data": "x", "type": "bad\ntype"}))
    redis_db.client.publish("chat", json.dumps({"data": "after", "type": "good"}))
    [event] = stream.wait_events(1)
    assert (event.type, event.data) == ("good", "after")
    log = wait_until(lambda: gateway.log() if gateway.log().count("malformed") >= 2 else "", 10,
                     message="two 'malformed' warnings in the gateway log")
    assert "'chat'" in log and "'data' is required" in log
    assert b"no_data_here" not in stream.body and b"bad" not in stream.body


# -- a subscriber that does not read ------------------------------------------------------------

EVENT_BYTES = 64 * 1024
BATCH = 20  # below --max-pending: the reading subscriber can never be the one dropped
MAX_EVENTS = 2000
AFTER_DROP_EVENTS = 600
RSS_BOUND_KIB = 32 * 1024


def test_subscriber_that_stops_reading_is_dropped_and_others_get_every_event_in_order(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url, "--max-pending", "50",
                            "--max-message-size", str(2 * EVENT_BYTES), "--history-length", "10",
                            "--heartbeat", "30")
    reader = open_stream(gateway.url + "/events/firehose")
    stuck = RawSubscriber(gateway.port, "/events/firehose", receive_buffer=4096)
    try:
        stuck.read_until(first_chunk_arrived)
        assert health(gateway)["subscribers"] == 2
        baseline = peak = rss_kib(gateway.proc.pid)
        session = requests.Session()
        filler = "x" * (EVENT_BYTES - 8)
        published = 0
        dropped_at = None
        # Bounded: stop a fixed number of events after the drop (or fail at MAX_EVENTS).
        while published < MAX_EVENTS and (dropped_at is None
                                          or published < dropped_at + AFTER_DROP_EVENTS):
            for _ in range(BATCH):
                response = session.post(f"{gateway.url}/publish/firehose", timeout=10,
                                        json={"data": f"{published:08d}{filler}"})
                assert response.status_code == 200, response.text
                published += 1
            reader.wait_events(BATCH, timeout=30)
            for offset, event in enumerate(reader.events):
                assert event.data[:8] == f"{published - BATCH + offset:08d}"
                assert len(event.data) == EVENT_BYTES
            assert len(reader.events) == BATCH
            reader.events.clear()  # keep the test's own memory flat
            reader.body = b""
            peak = max(peak, rss_kib(gateway.proc.pid))
            if dropped_at is None and health(gateway)["dropped_slow"] >= 1:
                dropped_at = published
        assert dropped_at is not None, f"no subscriber dropped after {published} events"
        state = health(gateway)
        assert state["dropped_slow"] == 1
        assert state["subscribers"] == 1
        # Had the stuck subscriber's queue been unbounded, it would hold at least the
        # AFTER_DROP_EVENTS events of 64 KiB published after the drop, ~2 x 64 KiB each.
        assert peak - baseline < RSS_BOUND_KIB, f"RSS grew by {peak - baseline} KiB"
        # The gateway closed the stuck connection: what was buffered, then the end.
        stuck.read_to_eof(30)
    finally:
        stuck.close()
    event_id = publish_ok(gateway, "firehose", {"data": "still here"})
    [event] = reader.wait_events(1)
    assert (event.data, event.last_event_id) == ("still here", event_id)


# -- shutdown ---------------------------------------------------------------------------------


def test_sigterm_ends_open_streams_cleanly_and_exits_zero(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--shutdown-timeout", "3")
    clients = [RawSubscriber(gateway.port, "/events/chat"),
               RawSubscriber(gateway.port, "/events?channel=chat&channel=news")]
    try:
        for client in clients:
            client.read_until(first_chunk_arrived)
        gateway.proc.send_signal(signal.SIGTERM)
        for client in clients:
            client.read_to_eof(15)
            # The chunked body's last-chunk: the response ended, it was not cut off.
            assert client.received.endswith(b"\r\n0\r\n\r\n"), client.received[-200:]
        assert gateway.proc.wait(10) == 0
    finally:
        for client in clients:
            client.close()
    assert "stopped" in gateway.log()


def test_sigterm_exits_zero_even_when_a_client_stopped_reading(start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--shutdown-timeout", "3",
                            "--max-message-size", str(2 * EVENT_BYTES))
    stuck = RawSubscriber(gateway.port, "/events/chat", receive_buffer=4096)
    reading = RawSubscriber(gateway.port, "/events/other")
    try:
        stuck.read_until(first_chunk_arrived)
        reading.read_until(first_chunk_arrived)
        session = requests.Session()
        for number in range(100):  # several MB: more than the stuck socket's buffers hold
            response = session.post(f"{gateway.url}/publish/chat", timeout=10,
                                    json={"data": f"{number:04d}" + "y" * (EVENT_BYTES - 4)})
            assert response.status_code == 200
        gateway.proc.send_signal(signal.SIGTERM)
        reading.read_to_eof(15)
        assert reading.received.endswith(b"\r\n0\r\n\r\n")
        assert gateway.proc.wait(15) == 0
    finally:
        stuck.close()
        reading.close()


def test_sigterm_answers_a_waiting_long_poll_before_exiting(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--shutdown-timeout", "5")
    result: dict = {}

    def poll() -> None:
        result["response"] = requests.get(f"{gateway.url}/poll/waiting?timeout=20", timeout=30)

    poller = threading.Thread(target=poll)
    poller.start()
    wait_until(lambda: health(gateway)["subscribers"] == 1, 10, message="the poll to wait")
    gateway.proc.send_signal(signal.SIGTERM)
    poller.join(30)
    assert not poller.is_alive()
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.json()["events"] == []
    assert gateway.proc.wait(10) == 0


def test_sigterm_gives_up_on_a_stalled_request_after_the_shutdown_timeout(start_gateway):
    gateway = start_gateway("--shutdown-timeout", "1")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as stalled:
        # Half a request head: its handler waits for the rest, which never comes.
        stalled.sendall(b"GET /events/x HTTP/1.1\r\nHost: t\r\n")
        # Connections are accepted in order: once a later one is answered, this one is in hand.
        health(gateway)
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    assert "1 request(s) still running after 1s" in gateway.log()


def test_sigterm_lets_a_publish_in_flight_finish_within_the_shutdown_timeout(start_gateway,
                                                                          redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--shutdown-timeout", "5")
    body = json.dumps({"data": "last words"}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
        client.sendall(b"POST /publish/late HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                       b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5])
        health(gateway)  # accepted in order: the publish's handler is reading its body
        gateway.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "shutting down" in gateway.log(), 10)
        client.sendall(body[5:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = client.recv(65536)
            assert data, f"connection closed; got {answer!r}"
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert gateway.proc.wait(10) == 0
    entries = redis_db.client.xrange("sse-gateway:history:late")
    assert [json.loads(fields[b"m"])["data"] for _, fields in entries] == ["last words"]


def test_gateway_started_while_redis_is_down_is_unhealthy_turns_subscribers_away_then_recovers(tmp_path):
    redis_server = RedisServer()  # not started yet: its port refuses connections
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port),
                                 "--redis-url", redis_server.url], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    try:
        def status(path: str) -> int | None:
            try:
                return requests.get(url + path, timeout=2).status_code
            except requests.RequestException:  # refused, or queued while it waits for Redis
                return None

        # It waits a while for Redis, then serves anyway: unhealthy, and subscribers are told
        # to come back later.
        wait_until(lambda: status("/healthz") == 503, 20, message="a 503 from /healthz")
        early = requests.get(url + "/events/early", timeout=5)
        assert early.status_code == 200 and early.text.startswith("retry: ")
        assert "serving anyway" in (tmp_path / "gateway.log").read_text()
        redis_server.start()
        wait_until(lambda: status("/healthz") == 200, 20, message="recovery once Redis is up")
        with Stream(url + "/events/late") as stream:
            stream.wait_for(subscribed)
            reply = requests.post(url + "/publish/late", json={"data": "up"}, timeout=5)
            [event] = stream.wait_events(1)
            assert (event.data, event.last_event_id) == ("up", reply.json()["id"])
    finally:
        proc.kill()
        proc.wait(10)
        redis_server.cleanup()
