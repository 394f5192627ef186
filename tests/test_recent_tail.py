"""A poll (or resume) whose cursor is the last event dispatched opens from memory, always.

Recent events answer a history read behind the last event dispatched only while every publish
of this process has come back live (`Broker.own_on_the_way` is empty): one acknowledged to its client
must be in the answer, as in a read of Redis. A cursor at the channel's last dispatched event
needs none of what is on its way: it is still to come to the attached subscriber. So that
read costs no broker call even while this process' publishes are on their way, and the one
behind still reads the broker then; a disconnected broker answers every read itself. What is
on its way from elsewhere (bytes unread on the pub/sub socket, as in any busy process) sends
no read to the broker. A poll served in the event loop reads memory whatever is on its way,
and waits there, attached, for its own publishes' events (`DirectAnswer` with `until`).
In-process, on the embedded broker, with "own publishes on their way" and "disconnected" set
by hand; then on a real Redis.
"""

import json
import subprocess
import sys
import textwrap
import time
from functools import partial

import gevent
from conftest import ROOT

from gateway.brokers.embedded import EmbeddedBroker
from gateway.http.seam import HELD, Direct, Sent
from gateway.hub import Hub
from gateway.ids import format_cursor, successor
from gateway.message import Message
from gateway.recent import RecentLimits
from gateway.subscribe import open_session
from gateway.transports import PollQueue, Session
from gateway.transports.poll import DirectAnswer

CHANNEL = "c"
FAR = (1 << 62, 0)  # an id no event reaches here


class BusyBroker(EmbeddedBroker):
    """The embedded broker, reporting what a Redis broker reports while a publish of its
    process has not come back live (`on_the_way`) or its connection is down (`down`);
    history reads counted."""

    def __init__(self) -> None:
        super().__init__()
        self.on_the_way = None  # the id of the last own event on its way, if any
        self.down = False
        self.reads = 0

    @property
    def connected(self) -> bool:
        return not self.down

    def own_on_the_way(self, channels) -> dict:
        return {CHANNEL: self.on_the_way} if self.on_the_way is not None else {}

    def history(self, positions, limit=None):
        self.reads += 1
        return super().history(positions, limit)


def setup():
    broker = BusyBroker()
    hub = Hub(broker, 1 << 30, RecentLimits(100, 1 << 20, 1000, 3600.0))
    broker.start(hub.dispatch)
    stay = PollQueue([CHANNEL], 100)  # keeps the channel subscribed
    hub.attach(stay)
    ids = [broker.publish(Message(CHANNEL, f"m{n}")).event_id for n in range(3)]
    return broker, hub, ids


def opened(hub: Hub, after) -> list:
    cursor = format_cursor((CHANNEL,), {CHANNEL: after})
    session, backlog = open_session(hub, PollQueue([CHANNEL], 100), cursor, 10)
    session.close()
    return [message.data for message in backlog]


def test_a_cursor_at_the_last_event_opens_from_memory_while_own_publishes_are_on_their_way():
    broker, hub, ids = setup()
    broker.on_the_way = FAR
    assert opened(hub, ids[-1]) == []
    assert (broker.reads, hub.history_from_memory, hub.history_from_broker) == (0, 1, 0)


def test_a_cursor_behind_the_last_event_reads_the_broker_while_own_publishes_are_on_their_way():
    broker, hub, ids = setup()
    broker.on_the_way = FAR
    assert opened(hub, ids[0]) == ["m1", "m2"]
    assert (broker.reads, hub.history_from_broker) == (1, 1)
    broker.on_the_way = None
    assert opened(hub, ids[0]) == ["m1", "m2"]  # from memory once nothing waits
    assert (broker.reads, hub.history_from_memory) == (1, 1)


def test_with_the_broker_disconnected_every_read_goes_to_the_broker():
    broker, hub, ids = setup()
    broker.down = True
    assert opened(hub, ids[-1]) == []
    assert opened(hub, ids[1]) == ["m2"]
    assert (broker.reads, hub.history_from_memory) == (2, 0)


class SentThrough(Direct):
    """A `seam.Direct` that takes every response whole and keeps what went out."""

    def __init__(self) -> None:
        self.responses: list = []

    def usable(self) -> bool:
        return True

    def date(self) -> str:
        return "now"

    def send(self, response: bytes) -> int:
        self.responses.append(response)
        return len(response)

    def follow(self, serve) -> None:
        pass

    def answered(self, sent: Sent) -> None:
        assert not sent.rest


def test_a_poll_from_the_event_loop_waits_for_its_own_publishes_on_their_way():
    """Its backlog from memory lacks them: answered once the hub has dispatched them, with the
    backlog and them, not before (and not from the broker)."""
    broker, hub, ids = setup()
    broker.on_the_way = successor(ids[-1])  # the next event, acknowledged, not come back yet
    session = Session(hub, PollQueue([CHANNEL], 100))
    backlog = session.open_now(format_cursor((CHANNEL,), {CHANNEL: ids[0]}), 10)
    assert [m.data for m in backlog] == ["m1", "m2"] and broker.reads == 0
    awaited = hub.own_on_the_way([CHANNEL])
    direct = SentThrough()
    answer = DirectAnswer(direct, lambda events, cursor, date: (
        "200 OK", 0, json.dumps([[m.data for m, _ in events], cursor]).encode()), lambda: None)
    assert answer.start(session, backlog, 10.0, 10, partial(hub.dispatched, awaited)) is HELD
    gevent.sleep(0.05)
    assert direct.responses == []  # held: its own event is still on its way
    mine = broker.publish(Message(CHANNEL, "mine")).event_id
    broker.on_the_way = None
    deadline = time.monotonic() + 5
    while not direct.responses and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert [json.loads(r) for r in direct.responses] == [
        [["m1", "m2", "mine"], format_cursor((CHANNEL,), {CHANNEL: mine})]]
    assert broker.reads == 0


def test_a_poll_waiting_for_its_own_publishes_is_not_answered_by_others_and_ends_with_its_hold():
    broker, hub, ids = setup()
    broker.on_the_way = FAR  # never comes back
    session = Session(hub, PollQueue([CHANNEL], 100))
    backlog = session.open_now(format_cursor((CHANNEL,), {CHANNEL: ids[0]}), 10)
    direct = SentThrough()
    answer = DirectAnswer(direct, lambda events, cursor, date: (
        "200 OK", 0, json.dumps([[m.data for m, _ in events], cursor]).encode()), lambda: None)
    started = time.monotonic()
    awaited = hub.own_on_the_way([CHANNEL])
    assert answer.start(session, backlog, 0.5, 10, partial(hub.dispatched, awaited)) is HELD
    broker.publish(Message(CHANNEL, "other"))  # someone else's: dispatched, not awaited
    gevent.sleep(0.2)
    assert direct.responses == []
    deadline = time.monotonic() + 5
    while not direct.responses and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert time.monotonic() - started >= 0.45
    # The backlog, and a cursor after it: "other" comes with the next poll, from history.
    assert [json.loads(r) for r in direct.responses] == [
        [["m1", "m2"], format_cursor((CHANNEL,), {CHANNEL: ids[2]})]]


# -- on a real Redis, in process -------------------------------------------------------------

IN_PROCESS = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import json, sys, time
    import gevent
    from gevent.monkey import get_original

    from gateway.brokers.redis import RedisBroker
    from gateway.hub import Hub
    from gateway.message import Message
    from gateway.recent import RecentLimits
    from gateway.subscribe import open_session
    from gateway.transports import PollQueue
    from gateway.brokers.base import PublishResult
    from gateway.ids import format_cursor, successor

    url, port = sys.argv[1], int(sys.argv[2])
    broker = RedisBroker(url, history_length=1000)
    hub = Hub(broker, 1 << 30, RecentLimits(100, 1 << 20, 1000, 3600.0))
    broker.start(hub.dispatch)
    assert broker.wait_ready(10)
    stay = PollQueue(["c"], 100)
    hub.attach(stay)

    def until(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            gevent.sleep(0.01)

    def opened(after):
        session, backlog = open_session(hub, PollQueue(["c"], 100),
                                        format_cursor(("c",), {"c": after}), 10)
        session.close()
        return [message.data for message in backlog]

    ids = [broker.publish(Message("c", f"m{n}")).event_id for n in range(3)]
    until(lambda: len(stay.queue) == 3)
    out = {}

    # A raw publish from elsewhere, in the pub/sub socket and unread: the hub is blocked
    # meanwhile (a plain socket, unpatched), so the listener cannot read it.
    plain = get_original("socket", "socket")()
    plain.connect(("127.0.0.1", port))
    plain.sendall(b'*3\\r\\n$7\\r\\nPUBLISH\\r\\n$1\\r\\nc\\r\\n$15\\r\\n{"data": "raw"}\\r\\n')
    assert plain.recv(64).startswith(b":")
    get_original("time", "sleep")(0.1)  # for Redis to write it to the listener's socket
    out["foreign"] = [bool(broker.own_on_the_way(["c"])), opened(ids[0]), hub.history_from_broker]

    # A publish of this process acknowledged: in every answer from then on, from Redis or,
    # once its live copy was dispatched, from memory.
    broker.publish(Message("c", "mine"))
    out["acknowledged"] = opened(ids[0])
    until(lambda: any(m.data == "mine" for m in stay.queue))

    # One acknowledged whose live copy has not come (noted as the publish returns, where its
    # live copy had not been dispatched): a cursor behind reads Redis until a live event at or
    # after it is dispatched.
    reads = hub.history_from_broker
    broker._acknowledged([("c", b"")], [PublishResult(successor(broker._channels["c"]), 1)])
    out["on_its_way"] = [bool(broker.own_on_the_way(["c"])), opened(ids[0]),
                         hub.history_from_broker - reads]
    broker.publish(Message("c", "later"))
    until(lambda: any(m.data == "later" for m in stay.queue))
    reads = hub.history_from_broker
    out["dispatched"] = [bool(broker.own_on_the_way(["c"])), opened(ids[0]),
                         hub.history_from_broker - reads]
    print(json.dumps(out))
    broker.stop()
""")


def test_only_this_process_publishes_on_their_way_send_a_read_behind_the_last_event_to_redis(
        redis_db):
    result = subprocess.run([sys.executable, "-c", IN_PROCESS, redis_db.url, str(redis_db.port)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # Bytes from elsewhere unread: still from memory (no broker read so far).
    assert out["foreign"] == [False, ["m1", "m2"], 0]
    assert out["acknowledged"] == ["m1", "m2", "mine"]  # a raw publish has no history
    assert out["on_its_way"] == [True, ["m1", "m2", "mine"], 1]
    assert out["dispatched"] == [False, ["m1", "m2", "mine", "later"], 0]
