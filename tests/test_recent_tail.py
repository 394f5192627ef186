"""A poll (or resume) whose cursor is the last event dispatched opens from memory, always.

Recent events answer a history read behind the last event dispatched only while every publish
of this process has come back live (`Broker.own_on_the_way` is empty): one acknowledged to its client
must be in the answer, as in a read of Redis. A cursor at the channel's last dispatched event
needs none of what is on its way: it is still to come to the attached subscriber. So that
read costs no broker call even while this process' publishes are on their way, and the one
behind still reads the broker then; a disconnected broker answers every read itself. What is
on its way from elsewhere (bytes unread on the pub/sub socket, as in any busy process) sends
no read to the broker. In-process, on the embedded broker, with "own publishes on their way"
and "disconnected" set by hand.
"""

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

from gateway.brokers.embedded import EmbeddedBroker
from gateway.hub import Hub
from gateway.ids import format_cursor
from gateway.message import Message
from gateway.recent import RecentLimits
from gateway.subscribe import open_session
from gateway.transports import PollQueue

CHANNEL = "c"


class BusyBroker(EmbeddedBroker):
    """The embedded broker, reporting what a Redis broker reports while a publish of its
    process has not come back live (`on_the_way`) or its connection is down (`down`);
    history reads counted."""

    def __init__(self) -> None:
        super().__init__()
        self.on_the_way = self.down = False
        self.reads = 0

    @property
    def connected(self) -> bool:
        return not self.down

    def own_on_the_way(self, channels) -> dict:
        return {CHANNEL: (1 << 62, 0)} if self.on_the_way else {}

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
    broker.on_the_way = True
    assert opened(hub, ids[-1]) == []
    assert (broker.reads, hub.history_from_memory, hub.history_from_broker) == (0, 1, 0)


def test_a_cursor_behind_the_last_event_reads_the_broker_while_own_publishes_are_on_their_way():
    broker, hub, ids = setup()
    broker.on_the_way = True
    assert opened(hub, ids[0]) == ["m1", "m2"]
    assert (broker.reads, hub.history_from_broker) == (1, 1)
    broker.on_the_way = False
    assert opened(hub, ids[0]) == ["m1", "m2"]  # from memory once nothing waits
    assert (broker.reads, hub.history_from_memory) == (1, 1)


def test_with_the_broker_disconnected_every_read_goes_to_the_broker():
    broker, hub, ids = setup()
    broker.down = True
    assert opened(hub, ids[-1]) == []
    assert opened(hub, ids[1]) == ["m2"]
    assert (broker.reads, hub.history_from_memory) == (2, 0)


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
