"""The process-wide budget of bytes held for slow clients (--max-buffered-bytes).

Per-subscriber bounds do not bound the process: many clients that stop reading each hold up to
--max-pending events. The hub counts what event streams could not send yet and what long-polls
have queued; over the budget it drops those holding the most. In process, with the embedded
broker and real sockets, the accounting is checked byte for byte; against real gateway
processes, with clients that never read, the budget, the order of the drops, the reading
client's events and the process's memory.
"""

from __future__ import annotations

import socket
import time

import gevent.socket
import pytest
import requests
from child_processes import rss_kib
from conftest import health, wait_until
from sse_client import Stream, StreamClosed, subscribed

from gateway.brokers.embedded import EmbeddedBroker
from gateway.config import Config, from_environment
from gateway.hub import Hub
from gateway.message import build_message
from gateway.transports import EventStream, PollQueue, Session, StreamOptions

EVENT_BYTES = 60_000  # under the 64 KiB default --max-message-size, with the JSON around it
STALLED_BUFFER = 4096  # a never-reading client's receive buffer


def held_by(stream: EventStream) -> int:
    return len(stream.out) + sum(len(frame) for frame in stream.queue)


# -- the accounting, in process -----------------------------------------------------------------


def in_process_hub(limit: int) -> tuple[Hub, EmbeddedBroker]:
    broker = EmbeddedBroker(history_length=10)
    hub = Hub(broker, limit)
    broker.start(hub.dispatch)
    return hub, broker


def attached(hub: Hub, subscriber: PollQueue) -> Session:
    session = Session(hub, subscriber)
    assert session.open(None) == []
    return session


def frames_of(subscriber: PollQueue) -> int:
    return sum(len(message.frame) for message in subscriber.queue)


def test_long_poll_queues_are_counted_exactly_and_the_largest_holder_is_dropped_first():
    data = "x" * 1000
    frame = len(build_message("a", data).with_id((int(time.time() * 1000), 0)).frame)
    hub, broker = in_process_hub(limit=frame * 13 // 2)  # six and a half events
    big, small = PollQueue(["a", "b"], 100), PollQueue(["a"], 100)
    big_session, small_session = attached(hub, big), attached(hub, small)
    for channel in ("a", "b", "a"):
        broker.publish(build_message(channel, data))
    assert (len(big.queue), len(small.queue)) == (3, 2)
    assert (big.held, small.held) == (frames_of(big), frames_of(small))
    assert hub.buffered_bytes == big.held + small.held

    assert len(small.drain()) == 2
    assert (small.held, hub.buffered_bytes) == (0, big.held)
    broker.publish(build_message("a", data))
    assert hub.dropped_memory == 0  # four and one
    broker.publish(build_message("a", data))
    # Five and two is over six and a half: big, holding the most, is dropped, and only big.
    assert (hub.dropped_memory, hub.dropped_slow) == (1, 0)
    assert big.closed and (big.queue, big.held) == ([], 0)
    assert not small.closed and len(small.queue) == 2
    assert hub.buffered_bytes == small.held == frames_of(small)
    assert hub.subscriber_count == 1
    big_session.close()

    # A long-poll that ends with events still queued (the next poll reads them from history).
    small_session.close()
    assert (small.held, hub.buffered_bytes, hub.channel_count) == (0, 0, 0)


def live_stream(hub: Hub, broker: EmbeddedBroker) -> tuple[EventStream, gevent.socket.socket]:
    """An event stream gone live on one end of a socket pair, and the other end, unread: a
    gevent socket, so that reading it lets the stream's write watcher run."""
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STALLED_BUFFER)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_BUFFER)
    ours.setblocking(False)
    stream = EventStream(["big"], 1000, StreamOptions(retry_ms=1000, heartbeat=30))
    session = Session(hub, stream)
    stream.start(session, session.open(None))
    broker.publish(build_message("big", "before the response starts"))
    [early] = stream.queue  # held until the stream goes live, and counted
    assert hub.buffered_bytes == stream.held == len(early.frame)
    stream.take_over(ours, True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (stream.closed, stream.out, hub.buffered_bytes) == (False, b"", 0)
    reader = gevent.socket.socket(peer.family, peer.type, fileno=peer.detach())
    reader.settimeout(10)
    return stream, reader


def publish_big(broker: EmbeddedBroker, numbers: range) -> None:
    for number in numbers:
        broker.publish(build_message("big", f"{number:04d}" + "y" * EVENT_BYTES))


def read_while_held(hub: Hub, stream: EventStream, reader: gevent.socket.socket) -> bytes:
    """Read until the stream holds nothing, checking the count at every step."""
    received = []
    deadline = time.monotonic() + 10
    while hub.buffered_bytes and time.monotonic() < deadline:
        received.append(reader.recv(1 << 20))  # the write watcher sends as the peer reads
        assert hub.buffered_bytes == stream.held == held_by(stream)
    return b"".join(received)


def test_event_stream_counts_what_its_socket_has_not_taken_and_a_drop_frees_it_at_once():
    hub, broker = in_process_hub(limit=40 * EVENT_BYTES)
    stream, reader = live_stream(hub, broker)
    try:
        for number in range(10):
            publish_big(broker, range(number, number + 1))
            assert hub.buffered_bytes == stream.held == held_by(stream)
        assert stream.queue and hub.buffered_bytes > 9 * EVENT_BYTES
        received = read_while_held(hub, stream, reader)
        assert (hub.buffered_bytes, stream.out, stream.queue) == (0, b"", [])
        assert b"0009yyy" in received and not stream.closed

        for number in range(10, 60):  # bounded: the stream holds 40 events at most
            publish_big(broker, range(number, number + 1))
            if stream.closed:
                break
            assert hub.buffered_bytes == stream.held == held_by(stream)
        assert stream.closed, "the stream was not dropped over the budget"
        assert (hub.dropped_memory, hub.dropped_slow) == (1, 0)
        # Freed at once: no bytes, no watchers, no socket, not in the hub.
        assert (hub.buffered_bytes, stream.held, stream.out, stream.queue) == (0, 0, b"", [])
        assert (stream.sock, stream._reader, stream._writable, stream._heartbeat) == (None,) * 4
        assert (hub.subscriber_count, hub.channel_count) == (0, 0)
        while reader.recv(1 << 20):  # what the kernel held, then the end
            pass
    finally:
        reader.close()


def test_an_ending_stream_counts_its_bytes_until_its_socket_takes_them():
    hub, broker = in_process_hub(limit=40 * EVENT_BYTES)
    stream, reader = live_stream(hub, broker)
    try:
        publish_big(broker, range(5))
        assert stream.queue
        stream.end(b": bye\n\n")  # out of the hub; the queue joins what is to be sent
        assert (hub.subscriber_count, stream.queue) == (0, [])
        assert hub.buffered_bytes == stream.held == len(stream.out) > 4 * EVENT_BYTES
        received = read_while_held(hub, stream, reader)
        assert received.endswith(b": bye\n\n\r\n0\r\n\r\n")
        assert stream.closed and stream.sock is None and hub.buffered_bytes == 0
    finally:
        reader.close()


# -- real gateways, clients that never read ----------------------------------------------------


def stalled(url: str) -> Stream:
    """A stream whose client reads its first chunk and then nothing more."""
    stream = Stream(url, receive_buffer=STALLED_BUFFER)
    stream.wait_for(subscribed)
    return stream


def multi(channels) -> str:
    return "/events?" + "&".join(f"channel={channel}" for channel in channels)


class Publisher:
    """Publishes numbered EVENT_BYTES events; a reading client on every channel checks each."""

    def __init__(self, gateway, reader: Stream) -> None:
        self.gateway = gateway
        self.reader = reader
        self.session = requests.Session()
        self.published = 0

    def round(self, channels) -> None:
        first = self.published
        for channel in channels:
            response = self.session.post(
                f"{self.gateway.url}/publish/{channel}", timeout=10,
                json={"data": f"{self.published:06d}" + "x" * (EVENT_BYTES - 6)})
            assert response.status_code == 200, response.text
            self.published += 1
        events = self.reader.wait_events(len(channels), timeout=30)
        assert [event.data[:6] for event in events] == [f"{n:06d}" for n in
                                                       range(first, self.published)]
        assert all(len(event.data) == EVENT_BYTES for event in events)
        assert len(self.reader.events) == len(channels)
        self.reader.events.clear()  # keep the test's own memory flat
        self.reader.body = b""


def read_to_the_end(stream: Stream) -> None:
    """What the gateway had sent, then the end of the connection (not a timeout)."""
    try:
        while True:
            stream.pump(time.monotonic() + 30)
            stream.body = b""
            stream.events.clear()
    except StreamClosed:
        return


BUDGET = 4 * 1024 * 1024
HEAVY, LIGHT = 4, 2
CHANNELS = ["c0", "c1", "c2", "c3"]


def test_over_the_budget_the_streams_holding_most_are_dropped_and_the_others_get_everything(
        start_gateway, broker_args, open_stream):
    gateway = start_gateway(*broker_args, "--max-buffered-bytes", str(BUDGET),
                            "--heartbeat", "30", "--history-length", "10")
    reader = open_stream(gateway.url + multi(CHANNELS))
    heavy, light = [], []
    try:
        heavy = [stalled(gateway.url + multi(CHANNELS)) for _ in range(HEAVY)]
        light = [stalled(f"{gateway.url}/events/c0") for _ in range(LIGHT)]
        publisher = Publisher(gateway, reader)
        # First every stalled client gets the same events, until the kernel's buffers for
        # each are full and the gateway holds some for each: the light ones hold bytes too.
        for _ in range(200):  # bounded: the kernel buffers at most a few MB per connection
            publisher.round(["c0"])
            state = health(gateway)
            if state["buffered_bytes"] >= (HEAVY + LIGHT) * 400 * 1024:
                break
        else:
            raise AssertionError(f"the gateway holds too little: {state}")
        assert state["buffered_bytes"] <= BUDGET and state["dropped_memory"] == 0
        # Then events for the heavy ones only, until one alone would be over the budget.
        for _ in range(BUDGET // (3 * EVENT_BYTES) + 4):
            publisher.round(CHANNELS[1:])
            state = health(gateway)
            assert state["buffered_bytes"] <= BUDGET, state
        assert (state["dropped_memory"], state["dropped_slow"]) == (HEAVY, 0), state
        assert state["subscribers"] == 1 + LIGHT
        assert state["buffered_bytes"] > 0  # the light ones still hold theirs
        for stream in heavy:
            read_to_the_end(stream)  # the gateway closed each heavy one
        assert "over --max-buffered-bytes" in gateway.log()
        assert "freeing" in gateway.log()
    finally:
        for stream in heavy + light:
            stream.close()
    # The light ones leave: every byte they held leaves the total.
    wait_until(lambda: health(gateway)["subscribers"] == 1, 10,
               message="the light streams to be gone")
    wait_until(lambda: health(gateway)["buffered_bytes"] == 0, 10,
               message="buffered_bytes back to 0")
    publisher.round(CHANNELS)
    reader.close()
    wait_until(lambda: health(gateway)["subscribers"] == 0, 10)
    assert health(gateway)["buffered_bytes"] == 0


SLOW_CLIENTS = 20
RSS_BUDGET = 16 * 1024 * 1024
ROUNDS = 50  # unbounded, the slow clients would cost the gateway ~190 MB


def test_many_clients_that_never_read_cost_the_gateway_no_more_than_the_budget(
        start_gateway, broker_args, open_stream):
    gateway = start_gateway(*broker_args, "--max-buffered-bytes", str(RSS_BUDGET),
                            "--heartbeat", "30", "--history-length", "10")
    reader = open_stream(gateway.url + multi(CHANNELS))
    slow = []
    try:
        slow = [stalled(gateway.url + multi(CHANNELS)) for _ in range(SLOW_CLIENTS)]
        assert health(gateway)["subscribers"] == SLOW_CLIENTS + 1
        publisher = Publisher(gateway, reader)
        baseline = peak = rss_kib(gateway.proc.pid)
        for _ in range(ROUNDS):
            publisher.round(CHANNELS)
            peak = max(peak, rss_kib(gateway.proc.pid))
            assert health(gateway)["buffered_bytes"] <= RSS_BUDGET
        state = health(gateway)
        assert state["dropped_memory"] >= SLOW_CLIENTS - 1, state
        assert state["dropped_slow"] == 0
        growth_mib = (peak - baseline) / 1024
        assert growth_mib < RSS_BUDGET / 2**20 + 100, f"RSS grew by {growth_mib:.0f} MiB"
    finally:
        for stream in slow:
            stream.close()
    wait_until(lambda: health(gateway)["subscribers"] == 1, 10,
               message="the slow streams to be gone")
    assert health(gateway)["buffered_bytes"] == 0
    publisher.round(CHANNELS)


@pytest.mark.parametrize("value", [0, -1])
def test_a_budget_below_one_byte_is_refused(value):
    with pytest.raises(ValueError, match="max-buffered-bytes must be at least 1"):
        Config(max_buffered_bytes=value)


def test_the_budget_is_set_from_the_environment():
    assert from_environment({"SSE_GATEWAY_MAX_BUFFERED_BYTES": "1048576"}) == {
        "max_buffered_bytes": 1048576}
    assert Config().max_buffered_bytes == 64 * 1024 * 1024
