"""A poll (or resume) whose cursor is the last event dispatched opens from memory, always.

Recent events answer a history read only while the broker is delivering (nothing received is
left unhandled), since events Redis holds and has not dispatched yet are missing from them. A
cursor at the channel's last dispatched event needs none of those: they are still to come to
the attached subscriber. So that read costs no broker call even while replies wait unread, as
they do in a busy long-poll process, and is the one exception: a cursor behind still reads the
broker then, and a disconnected broker answers every read itself. In-process, on the embedded
broker, with "replies unread" and "disconnected" set by hand.
"""

from gateway.brokers.embedded import EmbeddedBroker
from gateway.hub import Hub
from gateway.ids import format_cursor
from gateway.message import Message
from gateway.recent import RecentLimits
from gateway.subscribe import open_session
from gateway.transports import PollQueue

CHANNEL = "c"


class BusyBroker(EmbeddedBroker):
    """The embedded broker, reporting what a Redis broker reports while its listener has
    replies unread (`unread`) or its connection is down (`down`); history reads counted."""

    def __init__(self) -> None:
        super().__init__()
        self.unread = self.down = False
        self.reads = 0

    @property
    def connected(self) -> bool:
        return not self.down

    def delivering(self) -> bool:
        return not self.unread and not self.down

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


def test_a_cursor_at_the_last_event_opens_from_memory_while_replies_are_unread():
    broker, hub, ids = setup()
    broker.unread = True
    assert opened(hub, ids[-1]) == []
    assert (broker.reads, hub.history_from_memory, hub.history_from_broker) == (0, 1, 0)


def test_a_cursor_behind_the_last_event_reads_the_broker_while_replies_are_unread():
    broker, hub, ids = setup()
    broker.unread = True
    assert opened(hub, ids[0]) == ["m1", "m2"]
    assert (broker.reads, hub.history_from_broker) == (1, 1)
    broker.unread = False
    assert opened(hub, ids[0]) == ["m1", "m2"]  # from memory once nothing waits
    assert (broker.reads, hub.history_from_memory) == (1, 1)


def test_with_the_broker_disconnected_every_read_goes_to_the_broker():
    broker, hub, ids = setup()
    broker.down = True
    assert opened(hub, ids[-1]) == []
    assert opened(hub, ids[1]) == ["m2"]
    assert (broker.reads, hub.history_from_memory) == (2, 0)
