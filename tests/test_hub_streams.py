"""The hub and its subscribers in process: event streams over socket pairs, long-poll queues.

The embedded broker feeds a real hub; each event stream goes live on one end of a socket pair
and the test reads the other end as a browser would (HTTP chunks, then the event stream).
gevent's loop runs in this process, so the streams' watchers (writes the socket could not take
at once, heartbeats) run whenever the test waits. Covered here: replay then live with no gap
and no duplicate when events arrive during the replay; the slow-consumer rules; subscribers
that leave while the hub dispatches; the long-poll queue; the budget, byte for byte.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable, List, Optional

import gevent
import pytest

from gateway.brokers.embedded import EmbeddedBroker
from gateway.hub import Hub, Seat
from gateway.ids import EventId, HistoryBounds, format_cursor, format_id
from gateway.message import HistoryLost, Message, build_message
from gateway.transports import EventStream, PollQueue, Session, StreamOptions, poll
from gateway.wire import EventStreamParser, ParsedEvent

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
SMALL_BUFFER = 4096  # a client that stops reading fills this much of the kernel's buffers
UNLIMITED = 1 << 40


def run_until(condition: Callable[[], object], timeout: float = 10.0, message: str = "") -> None:
    """Let gevent's loop run (the streams' watchers) until `condition` holds, or fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {message or condition}")
        gevent.sleep(0.005)


class LaggingBroker(EmbeddedBroker):
    """The embedded broker, whose live delivery can lag behind its history as Redis pub/sub
    does: while `lagging`, a published event is in history at once and reaches the hub only
    at `catch_up`."""

    def __init__(self) -> None:
        super().__init__(history_length=100)
        self.lagging = False
        self._in_flight: List[Message] = []
        self._live: Optional[Callable[[Message], None]] = None

    def start(self, sink: Callable[[Message], None]) -> None:
        self._live = sink
        super().start(self._deliver)

    def _deliver(self, message: Message) -> None:
        if self.lagging:
            self._in_flight.append(message)
        else:
            self._live(message)

    def catch_up(self) -> None:
        self.lagging = False
        in_flight, self._in_flight = self._in_flight, []
        for message in in_flight:
            self._live(message)


def in_process_hub(limit: int = UNLIMITED, broker: Optional[EmbeddedBroker] = None):
    broker = broker or EmbeddedBroker(history_length=100)
    hub = Hub(broker, limit)
    broker.start(hub.dispatch)
    return hub, broker


def publish(broker: EmbeddedBroker, channel: str, data: str) -> EventId:
    return broker.publish(build_message(channel, data)).event_id


class Client:
    """The browser's end of a stream's socket pair: reads the response head, the HTTP chunks,
    and the events in them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.raw = b""
        self.parser = EventStreamParser()
        self.events: List[ParsedEvent] = []
        self.ended = False  # the last chunk came
        self.closed = False  # the connection ended
        self._body_at = 0

    def read(self) -> None:
        """Whatever the socket holds now."""
        while not self.closed:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            self.raw += data
        self._parse()

    def read_until(self, condition: Callable[[], object], timeout: float = 10.0) -> None:
        def done() -> object:
            self.read()
            return condition()
        run_until(done, timeout)

    def _parse(self) -> None:
        if not self._body_at:
            head_end = self.raw.find(b"\r\n\r\n")
            if head_end < 0:
                return
            assert self.raw[:head_end + 4] == HEAD
            self._body_at = head_end + 4
        while not self.ended:
            line_end = self.raw.find(b"\r\n", self._body_at)
            if line_end < 0:
                return
            size = int(self.raw[self._body_at:line_end], 16)
            chunk_end = line_end + 2 + size
            if len(self.raw) < chunk_end + 2:
                return
            assert self.raw[chunk_end:chunk_end + 2] == b"\r\n", "a chunk's data overran its size"
            self._body_at = chunk_end + 2
            if size == 0:
                self.ended = True
            else:
                self.events.extend(self.parser.feed(self.raw[line_end + 2:chunk_end]))

    def close(self) -> None:
        self.sock.close()


def opened(hub: Hub, channels: List[str], cursor: Optional[str] = None, max_pending: int = 100,
           heartbeat: float = 30.0) -> EventStream:
    """An event stream attached and started, its response not yet begun."""
    stream = EventStream(channels, max_pending, StreamOptions(retry_ms=1000, heartbeat=heartbeat))
    session = Session(hub, stream)
    stream.start(session, session.open(cursor))
    return stream


def go_live(stream: EventStream, small_buffers: bool = False) -> Client:
    ours, peer = socket.socketpair()
    if small_buffers:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    ours.setblocking(False)
    stream.take_over(ours, True, HEAD)
    return Client(peer)


def held_by(stream: EventStream) -> int:
    if stream.sock is None and not stream.closed:  # not live: messages, counted by their frames
        return sum(len(message.frame) for message in stream.queue)
    return len(stream.out) + sum(len(frame) for frame in stream.queue)


def queued_bytes(queue: PollQueue) -> int:
    return sum(len(message.frame) for message in queue.queue)


def fill(broker: EmbeddedBroker, channel: str, stream: EventStream, size: int = 2000) -> int:
    """Publish until the stream's socket cannot take an event whole; how many it took."""
    for number in range(200):  # bounded: the kernel buffers a few KB for such a socket
        publish(broker, channel, f"{number:04d}" + "f" * size)
        if stream.out:
            return number + 1
    raise AssertionError("the socket took everything")


class Recorder:
    """A hub.Subscriber of the test's own: records what it gets, and can leave the hub from
    inside `deliver` or refuse the message, as a stream whose client is gone or too slow does."""

    def __init__(self, hub: Hub, channels: List[str], on_deliver: str = "take") -> None:
        self.hub = hub
        self.channels = tuple(channels)
        self.fast = False
        self.on_deliver = on_deliver  # "take", "leave" or "refuse"
        self.seat: Optional[Seat] = None
        self.received: List[Message] = []
        self.counts_seen: List[int] = []  # the hub's subscriber count at each delivery
        self.closed = False

    def attached(self, seat: Seat) -> None:
        self.seat = seat

    def deliver(self, message: Message) -> bool:
        assert not self.closed, "a subscriber that left got a message"
        self.received.append(message)
        self.counts_seen.append(self.hub.subscriber_count)
        if self.on_deliver == "leave":
            self.close()
        return self.on_deliver != "refuse"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.seat.leave()

    def end(self) -> None:
        self.close()


# -- replay, then live ---------------------------------------------------------------------


@pytest.mark.parametrize("live_before_catch_up", [False, True], ids=["held", "live"])
def test_replay_then_live_has_no_gap_and_no_duplicate_when_events_arrive_during_the_replay(
        live_before_catch_up):
    broker = LaggingBroker()
    hub, _ = in_process_hub(broker=broker)
    other = Recorder(hub, ["chat"])  # the channel is subscribed and dispatched before
    Session(hub, other).open(None)
    ids = [publish(broker, "chat", f"e{n}") for n in range(1, 4)]
    # In history, not yet dispatched: the replay reads them, then live delivery brings them.
    broker.lagging = True
    ids += [publish(broker, "chat", f"e{n}") for n in range(4, 6)]

    stream = opened(hub, ["chat"], cursor=format_id(ids[0]))
    client = None
    if live_before_catch_up:
        client = go_live(stream)
        assert not stream.fast, "the replay is ahead of the hub: live events must be filtered"
    broker.catch_up()
    if client is None:
        client = go_live(stream)
    assert stream.fast  # the hub has dispatched past the replay
    ids += [publish(broker, "chat", f"e{n}") for n in range(6, 8)]
    # A raw message (no gateway id, a publisher's id) on the fast path: its cursor is the
    # channel's last event id, which the stream did not track while it wrote shared bytes.
    hub.dispatch(build_message("chat", "raw", source_id="p-1"))

    client.read_until(lambda: len(client.events) == 7)
    assert [(event.data, event.last_event_id) for event in client.events] == [
        *((f"e{n}", format_id(ids[n - 1])) for n in range(2, 8)),
        ("raw", format_cursor(("chat",), {"chat": ids[-1]}, "p-1"))]
    assert [message.data for message in other.received] == [f"e{n}" for n in range(1, 8)] + ["raw"]
    assert hub.buffered_bytes == 0
    stream.close()
    client.close()


def test_a_multi_channel_stream_gets_each_event_once_with_its_own_cursor():
    hub, broker = in_process_hub()
    before = publish(broker, "a", "a1")
    stream = opened(hub, ["a", "b"], cursor=format_cursor(("a", "b"), {"a": before}))
    b1 = publish(broker, "b", "b1")  # held until the stream goes live
    client = go_live(stream)
    a2 = publish(broker, "a", "a2")
    client.read_until(lambda: len(client.events) == 2)
    assert [(event.data, event.last_event_id) for event in client.events] == [
        ("b1", format_cursor(("a", "b"), {"a": before, "b": b1})),
        ("a2", format_cursor(("a", "b"), {"a": a2, "b": b1}))]
    stream.close()
    client.close()


# -- slow consumers ------------------------------------------------------------------------


def test_a_stream_whose_socket_is_full_queues_then_is_dropped_past_max_pending():
    hub, broker = in_process_hub()
    reader = opened(hub, ["chat"])
    reading = go_live(reader)
    stuck = opened(hub, ["chat"], max_pending=5)
    stuck_client = go_live(stuck, small_buffers=True)
    sent = fill(broker, "chat", stuck)
    assert stuck.queue == [] and hub.buffered_bytes == stuck.held == len(stuck.out)
    for queued in range(1, 6):
        publish(broker, "chat", f"q{queued}")
        assert not stuck.closed and len(stuck.queue) == queued
        assert hub.buffered_bytes == stuck.held == held_by(stuck)
    publish(broker, "chat", "one too many")
    assert stuck.closed and hub.dropped_slow == 1 and hub.dropped_memory == 0
    assert (stuck.held, stuck.queue, stuck.out, stuck.sock) == (0, [], b"", None)
    assert (hub.subscriber_count, hub.buffered_bytes) == (1, 0)
    # The reading client got everything, the drop changed nothing for it.
    reading.read_until(lambda: len(reading.events) == sent + 6)
    assert [event.data[:4] for event in reading.events[:sent]] == [f"{n:04d}" for n in range(sent)]
    assert [event.data for event in reading.events[sent:]] == [
        "q1", "q2", "q3", "q4", "q5", "one too many"]
    reader.close()
    reading.close()
    stuck_client.close()


def test_a_stalled_stream_on_a_quiet_channel_is_dropped_after_two_heartbeats(caplog):
    caplog.set_level(logging.INFO, logger="gateway.hub")
    hub, broker = in_process_hub()
    heartbeat = 0.1
    stuck = opened(hub, ["chat"], heartbeat=heartbeat)
    stuck_client = go_live(stuck, small_buffers=True)
    quiet = opened(hub, ["quiet"], heartbeat=heartbeat)
    reading = go_live(quiet)
    fill(broker, "chat", stuck)  # then the channel is quiet: --max-pending never overflows
    reading.read_until(lambda: stuck.closed)
    assert stuck.stalls == 2 and hub.dropped_slow == 1  # not at the first heartbeat
    assert "its socket took nothing for 2 heartbeats" in caplog.text
    assert (hub.subscriber_count, hub.buffered_bytes) == (1, 0)
    # The reading client on its quiet channel stays: heartbeats keep it going.
    reading.read_until(lambda: reading.parser.comments >= 4)
    assert not quiet.closed and reading.events == []
    quiet.close()
    reading.close()
    stuck_client.close()


# -- leaving while the hub dispatches ------------------------------------------------------


def test_subscribers_that_leave_during_dispatch_are_removed_after_it_and_the_others_get_it():
    hub, broker = in_process_hub()
    streams = [opened(hub, ["chat"]) for _ in range(3)]
    clients = [go_live(stream) for stream in streams]
    clients[1].close()  # this client is gone: the stream learns it as it writes
    leaver = Recorder(hub, ["chat"], on_deliver="leave")
    refuser = Recorder(hub, ["chat"], on_deliver="refuse")
    takers = [Recorder(hub, ["chat"]) for _ in range(2)]
    for recorder in (leaver, refuser, *takers):
        Session(hub, recorder).open(None)
    assert hub.subscriber_count == 7

    publish(broker, "chat", "first")
    # Nobody left the channel's set while the hub walked it: every delivery saw all seven.
    assert {count for r in (leaver, refuser, *takers) for count in r.counts_seen} == {7}
    assert streams[1].closed and leaver.closed and refuser.closed
    assert (hub.subscriber_count, hub.dropped_slow) == (4, 1)
    for client in (clients[0], clients[2]):
        client.read_until(lambda c=client: len(c.events) == 1)
        assert [event.data for event in client.events] == ["first"]

    publish(broker, "chat", "second")
    assert [m.data for m in leaver.received] == [m.data for m in refuser.received] == ["first"]
    assert all([m.data for m in r.received] == ["first", "second"] for r in takers)
    for client in (clients[0], clients[2]):
        client.read_until(lambda c=client: len(c.events) == 2)
    for stream in streams:
        stream.close()
    for client in clients:
        client.close()
    for recorder in takers:
        recorder.close()
    assert (hub.subscriber_count, hub.channel_count, hub.buffered_bytes) == (0, 0, 0)


def test_the_hub_counts_each_delivery_and_each_history_lost_reset_as_it_dispatches():
    hub, broker = in_process_hub()
    chat = [Recorder(hub, ["chat"]) for _ in range(3)]
    leaver = Recorder(hub, ["chat"], on_deliver="leave")
    quiet = Recorder(hub, ["quiet"])
    for recorder in (*chat, leaver, quiet):
        Session(hub, recorder).open(None)
    publish(broker, "chat", "one")  # all four: the leaver is in the set while the hub walks it
    publish(broker, "quiet", "two")
    publish(broker, "nobody", "three")  # a channel with no local subscriber
    assert (hub.deliveries, hub.lost_deliveries) == (4 + 1, 0)

    hub.dispatch(HistoryLost("chat", HistoryBounds(exists=False)))
    assert (hub.deliveries, hub.lost_deliveries) == (4 + 1 + 3, 3)
    assert all(len(recorder.received) == 2 for recorder in chat)
    assert len(leaver.received) == len(quiet.received) == 1


def test_the_last_subscriber_leaving_during_dispatch_unsubscribes_the_channel_after_it():
    hub, broker = in_process_hub()
    leaver = Recorder(hub, ["solo", "other"], on_deliver="leave")
    Session(hub, leaver).open(None)
    assert broker.publish(build_message("solo", "bye")).receivers == 1
    assert leaver.closed and (hub.subscriber_count, hub.channel_count) == (0, 0)
    assert broker.publish(build_message("solo", "nobody")).receivers == 0
    assert broker.publish(build_message("other", "nobody")).receivers == 0
    assert [m.data for m in leaver.received] == ["bye"]


# -- the long-poll queue -------------------------------------------------------------------


def test_a_long_poll_queue_wakes_its_request_is_bounded_and_lets_go_when_it_leaves():
    hub, broker = in_process_hub()
    queue = PollQueue(["a"], 3)
    session = Session(hub, queue)
    assert session.open(None) == []
    assert queue.wait(0.01) is False  # nothing came

    waiter = gevent.spawn(queue.wait, 10)
    gevent.sleep(0)  # the waiter blocks
    publish(broker, "a", "one")
    assert waiter.get(timeout=10) is True
    assert queue.held == len(queue.queue[0].frame) == hub.buffered_bytes
    assert [m.data for m in queue.drain()] == ["one"]
    assert (queue.held, hub.buffered_bytes, queue.queue) == (0, 0, [])

    for data in ("two", "three", "four"):
        publish(broker, "a", data)
    assert queue.held == queued_bytes(queue) == hub.buffered_bytes
    assert not queue.closed
    publish(broker, "a", "five")  # one more than --max-pending
    assert queue.closed and hub.dropped_slow == 1
    assert (queue.queue, queue.held, hub.buffered_bytes, hub.subscriber_count) == ([], 0, 0, 0)
    assert queue.wait(10) is True  # a closed queue does not block its request
    session.close()  # again: nothing changes
    assert (hub.dropped_slow, hub.channel_count) == (1, 0)


def test_closing_a_long_poll_queue_wakes_its_waiting_request():
    hub, _ = in_process_hub()
    queue = PollQueue(["a"], 3)
    Session(hub, queue).open(None)
    waiter = gevent.spawn(queue.wait, 10)
    gevent.sleep(0)
    queue.close()
    assert waiter.get(timeout=10) is True and queue.queue == []
    assert queue.deliver(build_message("a", "late")) is True and queue.queue == []
    assert (hub.subscriber_count, hub.channel_count) == (0, 0)


def poll_once(hub: Hub, cursor: Optional[str], hold: float = 0.0, batch: int = 2) -> dict:
    """One poll; its queue has left the hub and holds nothing once it answered."""
    before = hub.subscriber_count
    queue = PollQueue(["p"], 100)
    session = Session(hub, queue)
    body = poll(session, session.open(cursor), hold, batch, 1000)
    assert queue.closed and queue.held == 0
    assert hub.subscriber_count == before and hub.buffered_bytes == 0
    return body


def test_long_polls_resume_exactly_after_their_cursor_in_batches_then_hold_for_the_next():
    hub, broker = in_process_hub()
    keeper = Recorder(hub, ["p"])  # keeps the channel subscribed, so publishes are live
    Session(hub, keeper).open(None)
    ids = [publish(broker, "p", f"e{n}") for n in range(1, 6)]
    body = poll_once(hub, format_id(ids[0]))
    assert [(e["data"], e["id"]) for e in body["events"]] == [
        ("e2", format_id(ids[1])), ("e3", format_id(ids[2]))]
    assert body["lastEventId"] == format_id(ids[2]) and body["retry"] == 1000
    body = poll_once(hub, body["lastEventId"])
    assert [e["data"] for e in body["events"]] == ["e4", "e5"]
    # Nothing after the cursor: the poll holds until an event comes.
    later = gevent.spawn_later(0.05, publish, broker, "p", "e6")
    body = poll_once(hub, body["lastEventId"], hold=10)
    assert [e["data"] for e in body["events"]] == ["e6"]
    assert body["lastEventId"] == format_id(later.get(timeout=10))
    body = poll_once(hub, body["lastEventId"], hold=0.05)
    assert body["events"] == [] and body["lastEventId"] == format_id(later.value)
    keeper.close()
    assert (hub.subscriber_count, hub.buffered_bytes, hub.channel_count) == (0, 0, 0)


# -- the budget, byte for byte ---------------------------------------------------------------


def test_the_budget_counts_every_byte_held_by_streams_and_queues_and_nothing_after():
    hub, broker = in_process_hub()
    stuck = opened(hub, ["chat"])
    stuck_client = go_live(stuck, small_buffers=True)
    waiting = opened(hub, ["chat"])  # its response has not started: it holds messages
    queue = PollQueue(["chat"], 1000)
    Session(hub, queue).open(None)

    def exact() -> None:
        assert stuck.held == held_by(stuck)
        assert waiting.held == held_by(waiting)
        assert queue.held == queued_bytes(queue)
        assert hub.buffered_bytes == stuck.held + waiting.held + queue.held

    sent = fill(broker, "chat", stuck)
    exact()
    for number in range(5):
        publish(broker, "chat", f"more {number}")
        exact()
    assert stuck.queue and len(waiting.queue) == sent + 5

    waiting_client = go_live(waiting)  # its socket takes what it held
    assert waiting.held == 0 and not waiting.out
    exact()
    queue.drain()
    exact()
    # The client reads: the stream's write watcher sends the rest as the socket takes it.
    stuck_client.read_until(lambda: exact() or not (stuck.out or stuck.queue))
    assert stuck.held == 0 and not stuck.closed
    sent_again = fill(broker, "chat", stuck)
    exact()
    stuck.end(b": bye\n\n")  # out of the hub, still holding what its socket has to take
    assert stuck.closed and stuck.held == len(stuck.out) > 0 and hub.subscriber_count == 2
    exact()
    stuck_client.read_until(lambda: exact() or stuck_client.ended)
    assert stuck_client.raw.endswith(b": bye\n\n\r\n0\r\n\r\n")
    assert [event.data[:6] for event in stuck_client.events] == [
        *(f"{n:04d}ff" for n in range(sent)), *(f"more {n}" for n in range(5)),
        *(f"{n:04d}ff" for n in range(sent_again))]
    assert stuck.sock is None and stuck.held == 0
    exact()
    waiting.close()
    queue.close()
    assert (hub.buffered_bytes, hub.subscriber_count, hub.channel_count) == (0, 0, 0)
    waiting_client.close()
    stuck_client.close()


def test_over_the_budget_during_dispatch_the_largest_holder_is_dropped_at_once():
    data = "z" * 1000
    frame = len(build_message("chat", data).with_id((int(time.time() * 1000), 0)).frame)
    hub, broker = in_process_hub(limit=frame * 10)
    queue = PollQueue(["chat"], 1000)
    Session(hub, queue).open(None)
    stuck = opened(hub, ["chat"])
    stuck_client = go_live(stuck, small_buffers=True)
    # The queue holds every event, the stream only what its socket could not take: whichever
    # report takes the total over, the queue holds the most, and goes during that dispatch.
    for _ in range(20):  # bounded: ten events are over the budget
        publish(broker, "chat", data)
        if queue.closed:
            break
    assert queue.closed and (hub.dropped_memory, hub.dropped_slow) == (1, 0)
    assert (queue.held, queue.queue) == (0, [])
    assert not stuck.closed and hub.buffered_bytes == stuck.held == held_by(stuck)
    assert hub.subscriber_count == 1
    stuck.close()
    assert (hub.buffered_bytes, hub.channel_count) == (0, 0)
    stuck_client.close()
