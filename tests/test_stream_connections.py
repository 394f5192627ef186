"""An event stream's connection after its head: written from the fan-out, watched by the loop.

The gateway keeps no greenlet per open stream: a client leaving, a socket that cannot take more
for a while, rotation and the end of the response are all handled by event-loop watchers.
These tests drive those paths with real sockets whose receive side the test controls.
"""

from __future__ import annotations

import json
import socket

import pytest
import requests
from conftest import health, wait_until
from sse_client import Stream, subscribed

EVENT_BYTES = 64 * 1024


def kernel_send_buffer_max() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def publish_many(gateway, channel: str, count: int, first: int = 0) -> list[str]:
    """Publish `count` events of EVENT_BYTES, numbered from `first`; return their ids."""
    session = requests.Session()
    filler = "z" * (EVENT_BYTES - 8)
    ids = []
    for number in range(first, first + count):
        response = session.post(f"{gateway.url}/publish/{channel}", timeout=10,
                                json={"data": f"{number:08d}{filler}"})
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def test_client_that_disconnects_leaves_at_once_not_at_the_next_heartbeat(
        start_gateway, broker_args):
    # A 40 s heartbeat: without watching the socket, the gateway would notice only then.
    gateway = start_gateway(*broker_args, "--heartbeat", "40")
    streams = [Stream(f"{gateway.url}/events/leaving") for _ in range(3)]
    for stream in streams:
        stream.wait_for(subscribed)
    wait_until(lambda: health(gateway)["subscribers"] == 3, 5)
    for stream in streams:
        stream.close()
    wait_until(lambda: health(gateway)["subscribers"] == 0, 5,
               message="the closed streams to leave the hub")
    assert health(gateway)["channels"] == 0


def test_reader_that_stalls_past_the_socket_buffers_then_resumes_gets_every_event_in_order(
        start_gateway, redis_db):
    # More than the kernel can buffer for the stalled client: the gateway must hold the rest
    # and finish the writes when the socket drains, and drop nobody under --max-pending.
    count = (kernel_send_buffer_max() * 3 // 2) // EVENT_BYTES + 1
    gateway = start_gateway("--redis-url", redis_db.url, "--max-pending", str(count + 10),
                            "--max-message-size", str(2 * EVENT_BYTES),
                            "--history-length", str(count + 10))
    stalled = Stream(f"{gateway.url}/events/stall", receive_buffer=4096)
    reading = Stream(f"{gateway.url}/events/stall")
    try:
        stalled.wait_for(subscribed)
        reading.wait_for(subscribed)
        ids = []
        for _ in range(count // 10 + 1):
            batch = min(10, count - len(ids))
            if batch <= 0:
                break
            ids += publish_many(gateway, "stall", batch, first=len(ids))
            # The other subscriber keeps getting events while one socket is full.
            reading.wait_events(len(ids), timeout=30)
        stalled.wait_events(count, timeout=60)
        for stream in (stalled, reading):
            assert [int(e.data[:8]) for e in stream.events] == list(range(count))
            assert [e.last_event_id for e in stream.events] == ids
            assert all(len(e.data) == EVENT_BYTES for e in stream.events)
        assert health(gateway)["dropped_slow"] == 0
    finally:
        stalled.close()
        reading.close()


def test_client_that_stops_reading_on_a_quiet_channel_is_dropped_after_two_heartbeats(
        start_gateway):
    # Far fewer events than --max-pending, then silence: only the stalled socket tells.
    gateway = start_gateway("--heartbeat", "1", "--max-message-size", str(2 * EVENT_BYTES))
    stalled = Stream(f"{gateway.url}/events/quiet", receive_buffer=4096)
    reading = Stream(f"{gateway.url}/events/quiet")
    try:
        stalled.wait_for(subscribed)
        reading.wait_for(subscribed)
        count = kernel_send_buffer_max() // EVENT_BYTES + 8
        published = 0
        while published < count:  # bounded: count events in batches of 8
            publish_many(gateway, "quiet", 8, first=published)
            published += 8
            reading.wait_events(published, timeout=30)  # this client keeps up
        wait_until(lambda: health(gateway)["dropped_slow"] >= 1, 15,
                   message="the stalled stream to be dropped")
        assert "its socket took nothing for 2 heartbeats" in gateway.log()
        # The reading client, quiet channel and all, stays: heartbeats keep it going.
        reading.wait_for(lambda s: s.body.count(b": keepalive\n\n") >= 3, 10)
        state = health(gateway)
        assert (state["dropped_slow"], state["subscribers"]) == (1, 1)
    finally:
        stalled.close()
        reading.close()


def test_padded_stream_rotating_while_its_socket_is_full_ends_cleanly_and_resumes(
        start_gateway, redis_db):
    rotate = kernel_send_buffer_max() + 1024 * 1024
    count = rotate // EVENT_BYTES + 20
    gateway = start_gateway("--redis-url", redis_db.url, "--max-pending", str(count + 10),
                            "--max-message-size", str(2 * EVENT_BYTES),
                            "--history-length", str(count + 10), "--rotate-bytes", str(rotate))
    url = f"{gateway.url}/events/rotating?transport=stream"
    stalled = Stream(url, receive_buffer=4096)
    stalled.wait_for(subscribed)
    assert stalled.headers.get("connection") == "close"
    ids = publish_many(gateway, "rotating", count)
    stalled.read_to_end(60)
    assert stalled.ended, "the rotated response ends with the chunked terminator"
    assert stalled.body.endswith(b"\n: rotate\n\n")
    first = [int(e.data[:8]) for e in stalled.events]
    assert first == list(range(len(first))) and 0 < len(first) < count
    # Rotation closes the connection after the response.
    stalled.sock.settimeout(10)
    assert stalled.sock.recv(1) == b""
    stalled.close()
    with Stream(f"{url}&lastEventId={stalled.parser.last_event_id}") as resumed:
        resumed.wait_events(count - len(first), timeout=30)
        rest = [int(e.data[:8]) for e in resumed.events[:count - len(first)]]
        assert rest == list(range(len(first), count))
        assert resumed.events[-1].last_event_id == ids[-1]


def test_http_1_0_client_gets_an_unchunked_stream_that_ends_at_shutdown(start_gateway):
    gateway = start_gateway("--shutdown-timeout", "3")
    stream = Stream(f"{gateway.url}/events/old", version="HTTP/1.0")
    try:
        assert stream.status == 200
        assert "transfer-encoding" not in stream.headers
        assert stream.headers.get("connection") == "close"
        stream.wait_for(subscribed)
        event_id = gateway.publish("old", {"data": "one"}).json()["id"]
        [event] = stream.wait_events(1)
        assert (event.data, event.last_event_id) == ("one", event_id)
        gateway.stop()
        stream.read_to_end(10)
        assert stream.body.endswith(b"data: one\nid: " + event_id.encode() + b"\n\n")
    finally:
        stream.close()


def test_request_bytes_after_the_head_are_read_and_ignored(start_gateway):
    gateway = start_gateway()
    with Stream(f"{gateway.url}/events/chatty") as stream:
        stream.wait_for(subscribed)
        # A client has nothing to say after its request; what it says anyway changes nothing.
        stream.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        event_id = gateway.publish("chatty", {"data": "still streaming"}).json()["id"]
        [event] = stream.wait_events(1)
        assert (event.data, event.last_event_id) == ("still streaming", event_id)
    assert health(gateway)["dropped_slow"] == 0


@pytest.mark.parametrize("leaving", ["close", "shutdown_write"])
def test_client_that_goes_away_while_its_socket_is_full_is_forgotten(start_gateway, leaving):
    gateway = start_gateway("--max-message-size", str(2 * EVENT_BYTES), "--heartbeat", "40")
    stalled = Stream(f"{gateway.url}/events/gone", receive_buffer=4096)
    stalled.wait_for(subscribed)
    publish_many(gateway, "gone", kernel_send_buffer_max() // EVENT_BYTES + 8)
    if leaving == "close":
        stalled.close()  # with unread data: the client's kernel resets the connection
    else:
        stalled.sock.shutdown(socket.SHUT_WR)  # the client says it is done, still open
    wait_until(lambda: health(gateway)["subscribers"] == 0, 10,
               message="the closed stream to leave the hub")
    with Stream(f"{gateway.url}/events/gone") as fresh:
        fresh.wait_for(subscribed)
        response = gateway.publish("gone", {"data": json.dumps({"after": True})})
        [event] = fresh.wait_events(1)
        assert event.last_event_id == response.json()["id"]
    stalled.close()
