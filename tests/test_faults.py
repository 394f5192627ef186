"""Faults while events flow: every acknowledged event reaches every client exactly once, in order.

Twenty clients stream one channel from two gateway processes on one Redis, each reconnecting
with its last event id whenever its stream ends or fails, whatever the answer (a refused
connection, a 503, a stream that ends). Half use the native stream and stay with one gateway,
as a page with one URL does; the other half use the padded stream, which the gateways rotate
every 1.5 s, and go to the other gateway each time, as behind a load balancer. A publisher
writes numbered events straight into Redis, so it goes on while a gateway is down, and records
which ones Redis acknowledged.

In turn, while events are published, each fault waiting until every client has caught up with
the last: a gateway is killed with SIGKILL and started again; Redis drops every pub/sub
connection (`CLIENT KILL TYPE pubsub`); Redis is killed and restarted from its append-only file
(fsync on every write), so history survives. Last, Redis restarts without persistence: history
is really lost, and every client is told with a `gateway-reset` between the events before and
after.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest
import requests
from conftest import RedisServer, wait_until
from sse_client import Stream, StreamClosed, subscribed

from gateway import Publisher, PublishError
from gateway.ids import HistoryBounds
from gateway.message import HistoryLost, Message
from gateway.redis_schema import history_key

CLIENTS = 20
CHANNEL = "counted"
HISTORY = 100_000  # no event is trimmed: every loss would be the fault's
PUBLISH_EVERY = 0.02  # seconds
IDLE_LIMIT = 4.0  # seconds without a byte (the heartbeat is 1 s): the stream is dead
RETRY_FIRST, RETRY_MAX = 0.05, 0.5  # the clients' reconnection delays
CATCH_UP = 25.0  # seconds for every client to recover from one fault
APPEND_ONLY = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass
class Received:
    seq: Optional[int]  # None for a gateway-reset
    event_id: str = ""
    reason: str = ""


@dataclass
class Client:
    """One EventSource-like client: reads until its stream ends or fails, then reconnects to
    the next gateway with its last event id, after a short delay that grows while it fails."""

    urls: List[str]  # tried in turn
    stop: threading.Event
    received: List[Received] = field(default_factory=list)
    cursor: str = ""
    connections: int = 0  # streams that answered 200
    failures: List[str] = field(default_factory=list)  # why each attempt ended, for the report
    # Each 200 stream, for the report: (url, the Last-Event-ID sent, index of its first event).
    streams: List[Tuple[str, str, int]] = field(default_factory=list)

    @property
    def subscribed(self) -> bool:
        return self.cursor != ""

    def last_seq(self) -> int:
        seqs = [item.seq for item in self.received if item.seq is not None]
        return seqs[-1] if seqs else -1

    def run(self) -> None:
        attempt, delay = 0, RETRY_FIRST
        while not self.stop.is_set():
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            if self._stream(url):
                delay = RETRY_FIRST
            else:
                delay = min(delay * 2, RETRY_MAX)
            self.stop.wait(delay)

    def _stream(self, url: str) -> bool:
        """Read one response; True when it was a 200 stream (whatever ended it)."""
        headers = {"Last-Event-ID": self.cursor} if self.cursor else None
        try:
            stream = Stream(url, headers, timeout=3)
        except (OSError, StreamClosed, TimeoutError) as error:
            self.failures.append(f"connect: {error!r}")
            return False
        with stream:
            if stream.status != 200:
                self.failures.append(f"status {stream.status}")
                return False
            self.connections += 1
            self.streams.append((url, self.cursor, len(self.received)))
            seen, last_byte, taken = 0, time.monotonic(), 0
            try:
                while not self.stop.is_set():
                    try:
                        stream.pump(time.monotonic() + 0.5)
                    except TimeoutError:
                        if time.monotonic() - last_byte > IDLE_LIMIT:
                            self.failures.append("idle")
                            break
                    if len(stream.body) != seen:
                        seen, last_byte = len(stream.body), time.monotonic()
                    taken = self._take(stream, taken)
            except (StreamClosed, OSError) as error:
                self.failures.append(f"ended: {error!r}")
            self._take(stream, taken)
        return True

    def _take(self, stream: Stream, taken: int) -> int:
        """Record the stream's events from index `taken` on; returns how many it has."""
        for event in stream.events[taken:]:
            if event.type == "gateway-reset":
                self.received.append(Received(None, reason=json.loads(event.data)["reason"]))
            else:
                self.received.append(Received(int(event.data), event.last_event_id))
        self.cursor = stream.parser.last_event_id or self.cursor
        return len(stream.events)


class CountingPublisher:
    """Publishes 0, 1, 2, ... through Redis, one every PUBLISH_EVERY, while it is running."""

    def __init__(self, redis_url: str) -> None:
        self._publisher = Publisher(redis_url, history_length=HISTORY, timeout=2)
        self.acked: List[Tuple[int, str]] = []  # (seq, id) that Redis acknowledged
        self.attempted = 0
        self._running = threading.Event()
        self._stop = threading.Event()
        self._publishing = threading.Lock()  # held for each publish
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._running.set()
        self._thread.start()

    def pause(self) -> None:
        """Stop publishing; returns once a publish in progress has ended."""
        self._running.clear()
        with self._publishing:
            pass

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(10)

    def last_acked(self) -> int:
        return self.acked[-1][0] if self.acked else -1

    def wait_acked_after(self, seq: int, timeout: float = CATCH_UP) -> int:
        """Wait until Redis acknowledges an event numbered above `seq`; return its number."""
        return wait_until(lambda: self.last_acked() > seq and self.last_acked(), timeout,
                          message=f"Redis to acknowledge an event after {seq}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._running.wait()
            with self._publishing:
                if self._stop.is_set() or not self._running.is_set():
                    continue
                seq = self.attempted
                self.attempted += 1
                try:
                    reply = self._publisher.publish(CHANNEL, str(seq))
                except PublishError:
                    pass  # Redis down: not acknowledged (it may still have been stored)
                else:
                    self.acked.append((seq, reply["id"]))
            self._stop.wait(PUBLISH_EVERY)


@pytest.fixture
def persistent_redis():
    server = RedisServer()
    server.start(*APPEND_ONLY)
    try:
        yield server
    finally:
        server.cleanup()


def crash(server: RedisServer) -> None:
    server.proc.kill()
    server.proc.wait(10)


def test_every_acknowledged_event_reaches_every_client_once_in_order_through_faults(
        start_gateway, persistent_redis):
    server = persistent_redis
    args = ("--redis-url", server.url, "--heartbeat", "1", "--history-length", str(HISTORY),
            "--rotate-seconds", "1.5", "--shutdown-timeout", "2")
    gateways = [start_gateway(*args), start_gateway(*args)]
    every_gateway = list(gateways)  # the killed one too, for the report
    native = [f"{g.url}/events/{CHANNEL}" for g in gateways]
    padded = [f"{url}?transport=stream" for url in native]
    stop = threading.Event()
    # Clients 0, 4, 8, ... stay with the first gateway, 2, 6, 10, ... with the second; the odd
    # ones alternate, half of them starting with each.
    clients = [Client([native[index // 2 % 2]] if index % 2 == 0
                      else [padded[index // 2 % 2], padded[1 - index // 2 % 2]], stop)
               for index in range(CLIENTS)]
    pinned_to_first = [c for c in clients if c.urls == native[:1]]
    threads = [threading.Thread(target=client.run, daemon=True) for client in clients]
    publisher = CountingPublisher(server.url)
    phases: List[Tuple[str, int]] = []  # each fault and the next event number, for the report
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(c.subscribed for c in clients), 15, message="every client")
        publisher.start()

        def caught_up(fault: str) -> None:
            # Redis acknowledged an event after the fault ended, and every client has it.
            target = publisher.wait_acked_after(publisher.last_acked())
            wait_until(lambda: all(c.last_seq() >= target for c in clients), CATCH_UP,
                       message=f"every client to catch up after {fault}: "
                               f"{[c.last_seq() for c in clients]} < {target}")

        caught_up("the start")
        # A gateway killed, and started again on its port: its clients resume there, the
        # rotating ones on the other gateway meanwhile.
        connections = [c.connections for c in pinned_to_first]
        phases.append(("gateway SIGKILL", publisher.attempted))
        gateways[0].proc.kill()
        gateways[0].proc.wait(10)
        publisher.wait_acked_after(publisher.last_acked() + 10)  # published while it is down
        gateways[0] = start_gateway(*args, port=gateways[0].port)
        every_gateway.append(gateways[0])
        caught_up("a gateway's SIGKILL")
        assert all(c.connections > n for c, n in zip(pinned_to_first, connections))

        # Redis drops both gateways' pub/sub connections: they reconnect and read the gap.
        phases.append(("CLIENT KILL", publisher.attempted))
        assert server.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 2
        caught_up("CLIENT KILL TYPE pubsub")

        # Redis crashes and comes back from its append-only file: nothing acknowledged is lost.
        phases.append(("Redis crash", publisher.attempted))
        crash(server)
        down_at = publisher.attempted
        wait_until(lambda: publisher.attempted >= down_at + 5, 10,
                   message="publishing attempts while Redis is down")
        server.start(*APPEND_ONLY)
        caught_up("a Redis crash with persistence")

        # Redis crashes and comes back empty: history is lost, and every client is told.
        publisher.pause()
        before = publisher.last_acked()
        wait_until(lambda: all(c.last_seq() >= before for c in clients), CATCH_UP,
                   message="every client to have every event before the loss")
        phases.append(("Redis crash, empty restart", publisher.attempted))
        crash(server)
        server.start()  # the defaults: no append-only file, so nothing is loaded
        boundary = publisher.attempted
        publisher.resume()
        caught_up("a Redis restart without persistence")
        # Every client gets the events acknowledged since, before it stops reading.
        publisher.close()
        last = publisher.last_acked()
        try:
            wait_until(lambda: all(c.last_seq() >= last for c in clients), CATCH_UP)
        except AssertionError:
            pass  # the checks below say which events each client lacks, and how it got here
    finally:
        publisher.close()
        stop.set()
        for thread in threads:
            thread.join(10)

    acked = dict(publisher.acked)
    try:
        for index, client in enumerate(clients):
            check_client(index, client, acked, boundary, publisher.attempted)
    except AssertionError as error:
        logs = "\n".join(f"--- gateway {g.url} (pid {g.proc.pid}), log tail:\n{g.log()[-6000:]}"
                         for g in every_gateway)
        raise AssertionError(f"{error}\nfaults at: {phases}\n{logs}") from None


def story(client: Client, acked: Dict[int, str]) -> str:
    """What each of the client's streams was asked for and gave, for the report: the
    Last-Event-ID it sent (with the event of that id) and what it received, in runs."""
    by_id = {event_id: seq for seq, event_id in acked.items()}
    lines = []
    ends = [start for _, _, start in client.streams[1:]] + [len(client.received)]
    for (url, cursor, start), end in zip(client.streams, ends):
        runs: List[str] = []
        for item in client.received[start:end]:
            if item.seq is None:
                runs.append(f"reset({item.reason})")
            elif runs and runs[-1].split("-")[-1].isdigit() \
                    and int(runs[-1].split("-")[-1]) == item.seq - 1:
                runs[-1] = f"{runs[-1].split('-')[0]}-{item.seq}"
            else:
                runs.append(str(item.seq))
        asked = f"{cursor} (event {by_id.get(cursor, '?')})" if cursor else "-"
        lines.append(f"  {url} Last-Event-ID {asked}: {', '.join(runs) or 'nothing'}")
    return "\n".join(lines)


def check_client(index: int, client: Client, acked: Dict[int, str], boundary: int,
                 attempted: int) -> None:
    """Every acknowledged event once and in order; one `gateway-reset` (or more, if the client
    reconnected before the first new event) between the events before and after the loss."""
    seqs = [item.seq for item in client.received if item.seq is not None]
    resets = [n for n, item in enumerate(client.received) if item.seq is None]
    where = f"client {index} ({client.urls}; {client.connections} connections; last " \
            f"failures {client.failures[-3:]})"
    missing = sorted(set(acked) - set(seqs))
    assert not missing, f"{where}: acknowledged events never received: {missing}; its " \
        f"streams:\n{story(client, acked)}"
    assert all(a < b for a, b in zip(seqs, seqs[1:])), \
        f"{where}: events out of order or repeated; its streams:\n{story(client, acked)}"
    assert set(seqs) <= set(range(attempted)), f"{where}: events never published"
    wrong = [(item.seq, item.event_id) for item in client.received
             if item.seq in acked and item.event_id != acked[item.seq]]
    assert not wrong, f"{where}: events under another id than Redis gave them: {wrong}"
    assert resets, f"{where}: no gateway-reset after Redis lost its history"
    last_before = max(n for n, item in enumerate(client.received)
                      if item.seq is not None and item.seq < boundary)
    first_after = min(n for n, item in enumerate(client.received)
                      if item.seq is not None and item.seq >= boundary)
    assert last_before < min(resets) and max(resets) < first_after, \
        f"{where}: gateway-reset at {resets}, not between the events at {last_before} " \
        f"and {first_after}"
    assert {client.received[n].reason for n in resets} == {"history-lost"}


class PubsubCut:
    """A gateway on an ACL user of its own, whose pub/sub connection a test takes away
    (SUBSCRIBE denied, the connection killed: it cannot come back) and gives back."""

    def __init__(self, start_gateway, redis_db) -> None:
        self._admin = redis_db.client
        self._admin.execute_command("ACL", "SETUSER", "gateway", "on", ">secret", "~*", "&*",
                                    "+@all")
        self.gateway = start_gateway("--redis-url", f"redis://gateway:secret@127.0.0.1:"
                                     f"{redis_db.port}/0", "--heartbeat", "1")

    def healthy(self) -> bool:
        return requests.get(self.gateway.url + "/healthz", timeout=5).status_code == 200

    def cut(self) -> None:
        self._admin.execute_command("ACL", "SETUSER", "gateway", "-subscribe")
        assert self._admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
        wait_until(lambda: not self.healthy(), 10, message="the gateway to lose pub/sub")

    def restore(self) -> None:
        self._admin.execute_command("ACL", "SETUSER", "gateway", "+subscribe")
        wait_until(self.healthy, 15, message="the gateway's pub/sub to come back")

    def remove(self) -> None:
        self._admin.execute_command("ACL", "DELUSER", "gateway")


@pytest.fixture
def pubsub(start_gateway, redis_db):
    cut = PubsubCut(start_gateway, redis_db)
    try:
        yield cut
    finally:
        cut.remove()


def test_a_stream_resumed_after_the_loss_is_not_told_of_it_again(pubsub, redis_db):
    """Redis loses history while a gateway's pub/sub connection is down. A client that resumes
    on that gateway meanwhile, with a cursor from the new history, has lost nothing: when the
    connection comes back, the gateway tells its older streams, and not this one."""
    url = f"{pubsub.gateway.url}/events/{CHANNEL}"
    publisher = Publisher(redis_db.url)

    with Stream(url) as older:
        older.wait_for(subscribed)
        publisher.publish(CHANNEL, "before")
        older.wait_events(1)
        # Its pub/sub connection goes, and cannot come back while SUBSCRIBE is denied.
        pubsub.cut()
        redis_db.client.delete(history_key("", CHANNEL))  # as a restart without persistence
        first = publisher.publish(CHANNEL, "new 1")["id"]
        publisher.publish(CHANNEL, "new 2")
        with Stream(url, headers={"Last-Event-ID": first}) as resumed:
            resumed.wait_for(subscribed)
            pubsub.restore()
            publisher.publish(CHANNEL, "after")
            for stream in (older, resumed):
                stream.wait_for(lambda s: s.events and s.events[-1].data == "after")
            assert [e.data for e in resumed.events] == ["new 2", "after"]
        assert [(e.type, e.data) for e in older.events] == [
            ("message", "before"),
            ("gateway-reset", '{"channels":["counted"],"reason":"history-lost"}'),
            ("message", "new 1"), ("message", "new 2"), ("message", "after")]


def test_a_cursor_past_a_shared_read_is_not_taken_for_lost_history(pubsub, redis_db):
    """A gateway whose pub/sub connection is down answers resumes from Redis, sharing a read
    for a second. A client that got an event published after that read (from another
    gateway) resumes here: the read cannot tell whether its cursor is past the end of
    history, so it is read again. Taken from the read, the cursor looked past the end: the
    client was told history was lost, set back to the last event this gateway had, and sent
    that event again when the connection came back."""
    url = f"{pubsub.gateway.url}/events/{CHANNEL}"
    publisher = Publisher(redis_db.url)

    with Stream(url) as older:
        older.wait_for(subscribed)
        first = publisher.publish(CHANNEL, "one")["id"]
        older.wait_events(1)
        pubsub.cut()
        # Read from Redis while history ends at "one"; shared for a second from now.
        with Stream(url, headers={"Last-Event-ID": first}) as reader:
            reader.wait_for(subscribed)
        second = publisher.publish(CHANNEL, "two")["id"]
        with Stream(url, headers={"Last-Event-ID": second}) as resumed:
            resumed.wait_for(subscribed)
            opened = [(e.type, e.data) for e in resumed.events], resumed.parser.last_event_id
            pubsub.restore()
            publisher.publish(CHANNEL, "three")
            for stream in (older, resumed):
                stream.wait_for(lambda s: s.events and s.events[-1].data == "three")
            assert opened == ([], second)  # no reset; its position is where it was
            assert [(e.type, e.data) for e in resumed.events] == [("message", "three")]
        assert [e.data for e in older.events] == ["one", "two", "three"]


def test_a_shared_read_does_not_answer_a_cursor_past_what_it_saw():
    """In process, with a scripted reader: the read a request shares ended before the
    request's cursor (an event published since); it reads again, and finds no gap."""
    from gateway.brokers.shared_reads import ChannelRead, SharedReads

    history = [Message("c", "one", event_id=(1, 0))]
    reads = []

    def read(positions, limit):
        reads.append(dict(positions))
        snapshot = [m for m in history if m.event_id > positions["c"]]
        bounds = HistoryBounds(True, history[0].event_id, history[-1].event_id)
        return {"c": ChannelRead(snapshot, [], True, bounds)}

    # This process delivered nothing after "one" yet (its pub/sub connection is down).
    shared = SharedReads(read, {"c": (1, 0)}.get)
    first, _ = shared.history({"c": (1, 0)})
    assert (first["c"].messages, first["c"].gap) == ([], False)
    history.append(Message("c", "two", event_id=(2, 0)))  # another gateway delivered it
    answer, _ = shared.history({"c": (2, 0)})
    assert (answer["c"].messages, answer["c"].gap) == ([], False)
    assert reads == [{"c": (1, 0)}, {"c": (2, 0)}]


@pytest.mark.parametrize("position, bounds, lost", [
    ((5, 0), HistoryBounds(exists=True, first=(20, 0), last=(30, 0)), True),  # recreated
    ((25, 0), HistoryBounds(exists=True, first=(20, 0), last=(30, 0)), False),  # resumed from it
    ((35, 0), HistoryBounds(exists=True, first=(20, 0), last=(30, 0)), False),  # read it later
    ((5, 0), HistoryBounds(exists=False), True),  # nothing left
    ((25, 0), HistoryBounds(exists=True, first=(10, 0), last=(30, 0), max_deleted=(26, 0)),
     True),  # trimmed past it
])
def test_a_history_lost_reset_concerns_the_streams_that_lost_events(position, bounds, lost):
    assert HistoryLost(CHANNEL, bounds).concerns(position) is lost
