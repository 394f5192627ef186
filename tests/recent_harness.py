"""A hub on the Redis broker in a process of its own, driven line by line over stdin/stdout
(JSON), so a test can put the same history question to the hub (which may answer from its
recent events) and to a second, unstarted broker (which always reads Redis).

    python tests/recent_harness.py REDIS_URL HISTORY_LENGTH RECENT_EVENTS RECENT_BYTES AGE

Each request is one JSON object with an `op` and a `seq`, each answer one JSON object with
the same `seq` (and `error` if it failed). Ids travel as "<ms>-<seq>". gevent patches
everything here, as in the gateway, and none of it leaks into the test process. See
tests/test_fuzz_recent.py for the operations.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import redis  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.brokers.redis import RedisBroker  # noqa: E402
from gateway.hub import Hub  # noqa: E402
from gateway.ids import format_id, parse_id  # noqa: E402
from gateway.message import HistoryLost  # noqa: E402
from gateway.recent import RecentLimits  # noqa: E402

BARRIER = "harness-barrier"  # a channel whose raw messages say "all before me was handled"
TIMEOUT = 10.0


class Recorder:
    """A subscriber that keeps what it is given."""

    def __init__(self, channels):
        self.channels = tuple(channels)
        self.fast = False
        self.seat = None
        self.got = []

    def attached(self, seat):
        self.seat = seat

    def deliver(self, message):
        self.got.append(message)
        return True

    def close(self):
        if self.seat is not None:
            self.seat.hold(0)
            self.seat.leave()
            self.seat = None

    end = close


class Harness:
    def __init__(self, url, history_length, recent_events, recent_bytes, age):
        self.broker = RedisBroker(url, history_length=history_length, history_age=age)
        self.oracle = RedisBroker(url, history_length=history_length, history_age=age)
        limits = RecentLimits(recent_events, recent_bytes, history_length, age)
        self.hub = Hub(self.broker, 1 << 40, limits)
        self.client = redis.Redis.from_url(url)
        self.marks = set()
        self.marked = gevent.event.Event()
        self.lost = 0
        self.broker.start(self.dispatch, self.hub.resync)
        if not self.broker.wait_ready(TIMEOUT):
            raise RuntimeError("the broker did not connect")
        self.barrier_subscriber = Recorder([BARRIER])
        self.hub.attach(self.barrier_subscriber)
        self.subscribers = {}
        self.next_subscriber = 0
        self.killed = None  # the pub/sub connection `kill` cut

    def dispatch(self, message):
        if message.channel == BARRIER:
            self.marks.add(message.data)
            self.marked.set()
            return
        if isinstance(message, HistoryLost):
            self.lost += 1
        self.hub.dispatch(message)

    def op_attach(self, channels):
        subscriber = Recorder(channels)
        positions = self.hub.attach(subscriber)
        self.next_subscriber += 1
        self.subscribers[self.next_subscriber] = subscriber
        return {"sub": self.next_subscriber,
                "positions": {c: format_id(p) for c, p in positions.items()}}

    def op_leave(self, sub):
        self.subscribers.pop(sub).close()
        return {}

    def op_barrier(self, token):
        """Return once every pub/sub message published before this one has been handled."""
        self.client.publish(BARRIER, token)
        deadline = time.monotonic() + TIMEOUT
        while token not in self.marks:
            self.marked.clear()
            if not self.marked.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"the barrier {token} did not come back")
        self.marks.discard(token)
        return {}

    def op_kill(self):
        """Cut the pub/sub connection (Redis closes it): the broker reconnects and fills gaps."""
        self.killed = self.broker._connection
        self.client.client_kill_filter(_type="pubsub")
        return {}

    def op_reconnected(self):
        deadline = time.monotonic() + TIMEOUT
        while self.broker._connection is self.killed or not self.broker.wait_ready(0.01):
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not reconnect")
            gevent.sleep(0.01)
        return {}

    def op_history(self, positions, limit):
        positions = {c: parse_id(p) for c, p in positions.items()}
        # Redis first: if the hub then finds its recent events still young enough to answer,
        # history had not expired when Redis was read either (nothing is published meanwhile).
        oracle = self.oracle.history(positions, limit)
        before = self.hub.history_from_memory
        answer = self.hub.history(positions, limit)
        memory = self.hub.history_from_memory > before
        return {"hub": _histories(answer), "oracle": _histories(oracle), "memory": memory}

    def op_stats(self):
        return {"memory": self.hub.history_from_memory, "broker": self.hub.history_from_broker,
                "lost": self.lost, "recent_bytes": self.hub.recent_bytes,
                "channels": self.hub.channel_count, "skipped": self.broker.skipped,
                "refused": self.broker.refused}


def _histories(histories):
    return {channel: {"ids": [format_id(m.event_id) for m in h.messages],
                      "data": [m.data for m in h.messages], "gap": h.gap}
            for channel, h in histories.items()}


def main():
    url, length, events, max_bytes, age = sys.argv[1:6]
    harness = Harness(url, int(length), int(events), int(max_bytes), float(age))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op, seq = request.pop("op"), request.pop("seq")
        if op == "quit":
            break
        try:
            answer = getattr(harness, "op_" + op)(**request)
        except Exception as error:  # reported to the test, which fails with it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps({"seq": seq, **answer}), flush=True)
    harness.broker.stop()


if __name__ == "__main__":
    main()
