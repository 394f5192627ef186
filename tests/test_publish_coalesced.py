"""Events that come back from Redis together (the publishes of one batch, pipelined ones) are
fanned out together: each caught-up one-channel stream takes a channel's run of them in one
write (one HTTP chunk), and every subscriber still gets every event once, in order, whatever
kind of stream it is; a stream that cannot keep up is still dropped by the budget.

Against real gateways and Redis, and in process for the one case whose timing Redis cannot be
made to give on demand: a stream that attaches while a run is held, and whose replay from
history covers part of it."""

from __future__ import annotations

import json
import socket
import time
from typing import List

import pytest
import redis
import requests
from conftest import health, wait_until
from redis._parsers import _HiredisParser, _RESP2Parser
from sse_client import Stream, StreamClosed, subscribed

from gateway.brokers.embedded import EmbeddedBroker
from gateway.brokers.streams import received_check
from gateway.hub import Hub
from gateway.ids import format_id
from gateway.message import build_message
from gateway.redis_schema import live_channel
from gateway.transports import EventStream, Session, StreamOptions
from gateway.wire import EventStreamParser

NDJSON = {"Content-Type": "application/x-ndjson"}


def events_per_chunk(stream: Stream) -> List[int]:
    """How many events each chunk the gateway wrote to `stream` carried (one write, one chunk)."""
    return [chunk.count(b"data: ") for chunk in chunks_of(stream.raw_body)]


def chunks_of(raw: bytes) -> List[bytes]:
    """The chunks of a chunked body, as sent."""
    chunks, rest = [], raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    return chunks


class RawStream(Stream):
    """A stream that keeps the raw chunked body too, to see how the gateway wrote it."""

    def __init__(self, url: str, **kwargs) -> None:
        self.raw_body = b""
        self._head_done = False
        super().__init__(url, **kwargs)

    def _read_head(self, deadline: float):
        head = super()._read_head(deadline)
        self._head_done = True
        self.raw_body = self._raw  # body bytes that came with the head
        return head

    def _recv(self, deadline: float) -> bytes:
        data = super()._recv(deadline)
        if self._head_done:
            self.raw_body += data
        return data


def post_batch(gateway, items) -> List[str]:
    body = b"".join(json.dumps(item).encode() + b"\n" for item in items)
    response = requests.post(f"{gateway.url}/publish/", data=body, headers=NDJSON, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["ids"]


def open_raw(url: str, **kwargs) -> RawStream:
    stream = RawStream(url, **kwargs)
    assert stream.status == 200, stream.body
    stream.wait_for(subscribed, 10)
    return stream


# Runs of one channel, then of the other, then the first again: [a x 5, b x 3, a x 4, b, a x 2].
PLAN = ["a"] * 5 + ["b"] * 3 + ["a"] * 4 + ["b"] + ["a"] * 2


def test_a_run_of_events_reaches_each_stream_in_one_write_in_order_and_once(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url, "--heartbeat", "30")
    fast = [open_raw(f"{gateway.url}/events/a") for _ in range(3)]
    other = open_raw(f"{gateway.url}/events/b")
    both = open_stream(f"{gateway.url}/events?channel=a&channel=b")  # cursors per stream
    resumed = None
    try:
        items = [{"channel": channel, "data": f"{channel}{i}"} for i, channel in enumerate(PLAN)]
        ids = post_batch(gateway, items)
        expected_a = [item["data"] for item in items if item["channel"] == "a"]
        for stream in fast:
            events = stream.wait_events(len(expected_a))
            assert [event.data for event in events] == expected_a
            # Each run of "a" in one chunk: the three runs, not eleven writes.
            assert [n for n in events_per_chunk(stream) if n] == [5, 4, 2]
            # The last event's id line is its own, as if it had come alone.
            assert events[-1].last_event_id == ids[len(PLAN) - 1]
        assert [event.data for event in other.wait_events(4)] == ["b5", "b6", "b7", "b12"]
        assert [n for n in events_per_chunk(other) if n] == [3, 1]
        # A stream of two channels takes each event on its own, in publish order.
        assert [event.data for event in both.wait_events(len(PLAN))] == \
            [item["data"] for item in items]
        # A stream resuming from the middle of the first run: the rest of the channel from
        # history, then the next batch live, each event once.
        resumed = open_raw(f"{gateway.url}/events/a", headers={"Last-Event-ID": ids[2]})
        more = [{"channel": "a", "data": f"more{i}"} for i in range(6)]
        post_batch(gateway, more)
        wanted = expected_a[3:] + [item["data"] for item in more]
        assert [event.data for event in resumed.wait_events(len(wanted))] == wanted
        for stream in fast:
            events = stream.wait_events(len(expected_a) + len(more))
            assert [event.data for event in events] == expected_a + [i["data"] for i in more]
            assert events_per_chunk(stream)[-1] == len(more)
        assert health(gateway)["dropped_slow"] == 0
    finally:
        for stream in [*fast, other, resumed]:
            if stream is not None:
                stream.close()


EVENT_BYTES = 4096
BUDGET = 1024 * 1024
RUN = 20


def test_a_stream_that_takes_nothing_is_still_dropped_by_the_budget_while_runs_come(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--heartbeat", "30",
                            "--max-buffered-bytes", str(BUDGET), "--max-pending", "1000",
                            "--history-length", "10")
    reader = open_raw(f"{gateway.url}/events/slow")
    stalled = Stream(f"{gateway.url}/events/slow", receive_buffer=4096)
    try:
        stalled.wait_for(subscribed)
        published = 0
        # Bounded: the kernel's buffers for the stalled client fill within a few MB.
        for _ in range(4 * (BUDGET + 8 * 1024 * 1024) // (RUN * EVENT_BYTES)):
            items = [{"channel": "slow",
                      "data": f"{published + i:06d}" + "x" * (EVENT_BYTES - 6)}
                     for i in range(RUN)]
            post_batch(gateway, items)
            events = reader.wait_events(RUN, timeout=30)
            assert [event.data[:6] for event in events] == \
                [f"{n:06d}" for n in range(published, published + RUN)]
            published += RUN
            reader.events.clear()
            state = health(gateway)
            assert state["buffered_bytes"] <= BUDGET, state
            if state["dropped_memory"]:
                break
        else:
            raise AssertionError(f"the stalled stream was never dropped: {state}")
        assert (state["dropped_memory"], state["dropped_slow"]) == (1, 0), state
        assert state["subscribers"] == 1
        # The reader went on getting runs in one write each.
        assert max(events_per_chunk(reader)) == RUN
        try:
            stalled.read_to_end(30)
        except StreamClosed:
            pass
        assert stalled.ended  # the gateway closed it
    finally:
        reader.close()
        stalled.close()
    wait_until(lambda: health(gateway)["buffered_bytes"] == 0, 10,
               message="the dropped stream's bytes to leave the budget")


def test_events_held_for_a_burst_that_ends_on_a_refused_message_still_arrive(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--heartbeat", "30")
    stream = open_raw(f"{gateway.url}/events/tail")
    try:
        # Live copies as the publish script sends them, then one that is not (no id), all in
        # one write from Redis: the last reply of the read dispatches nothing.
        ms = int(time.time() * 1000) + 60_000
        live = live_channel("", "tail")
        with redis_db.client.pipeline(transaction=False) as pipe:
            for seq in range(3):
                pipe.publish(live, f'{ms}-{seq} {{"data":"held{seq}"}}')
            pipe.publish(live, "no id here")
            pipe.execute()
        events = stream.wait_events(3)
        assert [(event.data, event.last_event_id) for event in events] == \
            [(f"held{seq}", f"{ms}-{seq}") for seq in range(3)]
        assert [n for n in events_per_chunk(stream) if n] == [3]
        wait_until(lambda: health(gateway)["refused"] == 1, 10,
                   message="the message without an id to be refused")
    finally:
        stream.close()


# -- in process: a stream whose replay went past part of a run ------------------------------


class BurstBroker(EmbeddedBroker):
    """The embedded broker, saying "more received" while `burst` is set: the hub then holds
    what it publishes, as it holds the Redis listener's messages read together."""

    burst = False

    def more_received(self) -> bool:
        return self.burst


def live_stream(hub: Hub, last_event_id) -> tuple[EventStream, socket.socket]:
    """A one-channel event stream gone live on one end of a socket pair; the other end."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    stream = EventStream(["c"], 1000, StreamOptions(retry_ms=1000, heartbeat=30))
    session = Session(hub, stream)
    stream.start(session, session.open(last_event_id))
    stream.take_over(ours, False, b"")
    peer.settimeout(10)
    return stream, peer


def read_events(peer: socket.socket, count: int) -> list:
    parser, events = EventStreamParser(), []
    for _ in range(100):  # bounded: a few reads carry them all
        if len(events) >= count:
            break
        events += parser.feed(peer.recv(65536))
    return events


def test_a_stream_whose_replay_covered_part_of_a_run_gets_each_event_once():
    broker = BurstBroker(history_length=100)
    hub = Hub(broker, 1 << 20)
    broker.start(hub.dispatch)
    first = broker.publish(build_message("c", "m0"))
    early, early_peer = live_stream(hub, None)  # caught up: it takes the run in one write
    broker.burst = True  # m1..m3 are in history, and held by the hub, not dispatched yet
    for n in (1, 2, 3):
        broker.publish(build_message("c", f"m{n}"))
    # From m0: its replay reads m1..m3 from history, so the live m1..m3 are not new to it.
    late, late_peer = live_stream(hub, format_id(first.event_id))
    assert (early.fast, late.fast) == (True, False)
    broker.burst = False
    broker.publish(build_message("c", "m4"))  # the last of the burst: all four fan out
    try:
        assert [e.data for e in read_events(late_peer, 4)] == ["m1", "m2", "m3", "m4"]
        assert [e.data for e in read_events(early_peer, 4)] == ["m1", "m2", "m3", "m4"]
        late_peer.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing more: no event twice
            late_peer.recv(65536)
        assert late.fast  # once at the tail, it takes the shared bytes too
    finally:
        for stream, peer in ((early, early_peer), (late, late_peer)):
            stream.close()
            peer.close()


@pytest.mark.parametrize("parser", [_HiredisParser, _RESP2Parser], ids=["hiredis", "python"])
def test_the_listener_tells_when_more_replies_wait_in_its_reader(redis_db, parser):
    connection = redis.Connection(port=redis_db.port, protocol=2, parser_class=parser,
                                  socket_timeout=10)
    connection.connect()
    try:
        more = received_check(connection)
        assert not more()
        connection.send_command("SUBSCRIBE", "told")
        assert connection.read_response()[0] == b"subscribe"
        assert not more()
        with redis_db.client.pipeline(transaction=False) as pipe:
            for n in range(3):
                pipe.publish("told", f"m{n}")
            pipe.execute()  # one write from Redis to the subscriber: one read takes all three
        replies = [connection.read_response()]
        while more():
            replies.append(connection.read_response())
        assert [reply[2] for reply in replies] == [b"m0", b"m1", b"m2"]
        assert not more()
    finally:
        connection.disconnect()
