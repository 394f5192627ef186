"""Recent events in memory, and channels kept subscribed for a grace period.

A resume or a poll whose cursor the hub's recent events cover costs Redis nothing (counted by
`INFO commandstats` of a real redis-server); one from before them reads Redis. What the hub
answers from memory is what Redis' history says (tests/recent_harness.py puts the same
question to both): after trimming by age, expiry, an unreadable entry, a reconnect. A channel
whose last subscriber left stays subscribed for `--unsubscribe-grace` seconds, so a long-poller
polling in a loop costs no SUBSCRIBE/UNSUBSCRIBE, and is unsubscribed after it.
"""

from __future__ import annotations

import signal
import threading
import time

import gevent
import requests
from conftest import command_calls, health, publish_all, wait_until
from sse_client import Stream

from gateway.brokers.embedded import EmbeddedBroker
from gateway.hub import Hub
from gateway.transports import PollQueue

RESET = "gateway-reset"


def resumed(url: str, cursor: str, count: int) -> list[tuple[str, str]]:
    """The first `count` events (type, data) of a stream resumed from `cursor`."""
    stream = Stream(url, {"Last-Event-ID": cursor})
    try:
        assert stream.status == 200, stream.body
        return [(e.type, e.data) for e in stream.wait_events(count)]
    finally:
        stream.close()


def published_live(open_stream, gateway, channel: str, values) -> list[str]:
    """`values` published on `channel` while a stream listens, which got them all; their ids."""
    stream = open_stream(f"{gateway.url}/events/{channel}")
    ids = publish_all(gateway, channel, values)
    stream.wait_events(len(values))
    return ids


# -- served from memory, or from Redis ----------------------------------------------------------


def test_a_resume_inside_the_recent_events_costs_redis_no_command(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    ids = published_live(open_stream, gateway, "chat", [f"m{n}" for n in range(5)])
    before = command_calls(redis_db.client)
    assert resumed(gateway.url + "/events/chat", ids[1], 3) == [
        ("message", "m2"), ("message", "m3"), ("message", "m4")]
    polled = requests.get(gateway.url + "/poll/chat", timeout=10,
                          params={"lastEventId": ids[3]}).json()
    assert [e["data"] for e in polled["events"]] == ["m4"]
    assert command_calls(redis_db.client) == before
    counters = health(gateway)
    assert (counters["history_from_memory"], counters["history_from_broker"]) == (2, 0)


def test_a_resume_from_before_the_recent_events_reads_redis_once(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url, "--recent-events", "2")
    ids = published_live(open_stream, gateway, "chat", [f"m{n}" for n in range(5)])
    before = command_calls(redis_db.client)
    # m2 left the two recent events: from m1 on, Redis answers.
    assert resumed(gateway.url + "/events/chat", ids[1], 3) == [
        ("message", "m2"), ("message", "m3"), ("message", "m4")]
    after = command_calls(redis_db.client)
    assert after["xrange"] - before.get("xrange", 0) == 1
    # From m2 on, the two recent events (m3, m4) answer.
    assert resumed(gateway.url + "/events/chat", ids[2], 2) == [
        ("message", "m3"), ("message", "m4")]
    assert command_calls(redis_db.client) == after
    counters = health(gateway)
    assert (counters["history_from_memory"], counters["history_from_broker"]) == (1, 1)


def test_events_from_before_the_channel_was_subscribed_are_read_from_redis(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    ids = publish_all(gateway, "chat", ["before", "also before"])
    published_live(open_stream, gateway, "chat", ["after"])
    assert resumed(gateway.url + "/events/chat", ids[0], 2) == [
        ("message", "also before"), ("message", "after")]
    assert health(gateway)["history_from_broker"] == 1
    assert resumed(gateway.url + "/events/chat", ids[1], 1) == [("message", "after")]
    assert health(gateway)["history_from_memory"] == 1


def test_recent_events_stay_within_their_count_and_bytes(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url, "--recent-events", "30",
                            "--recent-bytes", "3000")
    ids = published_live(open_stream, gateway, "big",
                         [f"{n:03d}" + "x" * 96 for n in range(100)])
    held = health(gateway)["recent_bytes"]
    # Each frame is some 130 bytes: fewer than 30 of them fit in 3000 bytes.
    assert 2000 < held <= 3000, held
    assert [data[:3] for _, data in resumed(gateway.url + "/events/big", ids[85], 14)] == [
        f"{n:03d}" for n in range(86, 100)]
    assert health(gateway)["history_from_memory"] == 1
    assert len(resumed(gateway.url + "/events/big", ids[60], 39)) == 39
    assert health(gateway)["history_from_broker"] == 1

    gateway_few = start_gateway("--redis-url", redis_db.url, "--recent-events", "3")
    ids = published_live(open_stream, gateway_few, "few", [f"f{n}" for n in range(6)])
    resumed(gateway_few.url + "/events/few", ids[2], 3)
    resumed(gateway_few.url + "/events/few", ids[1], 4)
    counters = health(gateway_few)
    assert (counters["history_from_memory"], counters["history_from_broker"]) == (1, 1)


def test_the_embedded_broker_keeps_no_second_copy_of_its_history(start_gateway, open_stream):
    gateway = start_gateway()
    ids = published_live(open_stream, gateway, "chat", ["a", "b"])
    assert resumed(gateway.url + "/events/chat", ids[0], 1) == [("message", "b")]
    counters = health(gateway)
    assert (counters["recent_bytes"], counters["history_from_memory"]) == (0, 0)


# -- the same answer as Redis' history, at the edges ---------------------------------------------


def test_events_trimmed_by_age_at_a_publish_leave_the_recent_events_as_well(start_harness):
    harness = start_harness(50, 1000, 1 << 20, 2.0)
    harness.ask("attach", channels=["aged"])  # no history yet: the recent events are all of it
    first = harness.publish("aged", b'{"data": "first"}')
    time.sleep(1.05)
    harness.publish("aged", b'{"data": "second"}')
    time.sleep(1.05)
    # More than 2 s after the first: this publish trims it from Redis (and the recent events).
    harness.publish("aged", b'{"data": "third"}')
    answer = harness.history({"aged": "0-0"})
    assert answer["oracle"]["aged"]["data"] == ["second", "third"]
    assert answer["oracle"]["aged"]["gap"] is True
    assert not answer["memory"] and answer["hub"] == answer["oracle"]
    answer = harness.history({"aged": first})
    assert answer["oracle"]["aged"]["data"] == ["second", "third"]
    assert answer["memory"] and answer["hub"] == answer["oracle"]


def test_a_channel_quiet_longer_than_its_history_age_is_asked_of_redis(start_harness, redis_db):
    harness = start_harness(50, 1000, 1 << 20, 0.3)
    harness.ask("attach", channels=["quiet"])
    first = harness.publish("quiet", b'{"data": "first"}')
    assert harness.history({"quiet": first})["memory"]
    wait_until(lambda: not redis_db.client.exists("sse-gateway:history:quiet"), 5,
               message="the history key to expire")
    answer = harness.history({"quiet": first})
    assert not answer["memory"]
    assert answer["hub"] == answer["oracle"] == {"quiet": {"ids": [], "data": [], "gap": True}}
    # Published again, history starts afresh: the first id is from a history that is gone.
    second = harness.publish("quiet", b'{"data": "second"}')
    answer = harness.history({"quiet": first})
    assert not answer["memory"]
    assert answer["oracle"]["quiet"]["gap"] is True and answer["hub"] == answer["oracle"]
    answer = harness.history({"quiet": second})
    assert answer["memory"] and answer["hub"] == answer["oracle"]


def test_an_unreadable_entry_is_left_to_redis_which_skips_and_counts_it(start_harness):
    harness = start_harness(50, 1000, 1 << 20, 3600.0)
    harness.ask("attach", channels=["bad"])
    first = harness.publish("bad", b'{"data": "first"}')
    unreadable = harness.publish("bad", b'{"data": "\xff"}')
    harness.publish("bad", b'{"data": "last"}')
    answer = harness.history({"bad": first})
    assert not answer["memory"] and answer["hub"]["bad"]["data"] == ["last"]
    assert harness.ask("stats")["skipped"] == 1
    answer = harness.history({"bad": unreadable})
    assert answer["memory"] and answer["hub"] == answer["oracle"]
    assert harness.ask("stats")["skipped"] == 1


def test_after_a_reconnect_only_what_came_live_since_is_answered_from_memory(start_harness):
    harness = start_harness(5, 1000, 1 << 20, 3600.0)
    harness.ask("attach", channels=["cut"])
    ids = [harness.publish("cut", b'{"data": "before"}') for _ in range(2)]
    assert harness.history({"cut": ids[0]})["memory"]
    harness.ask("kill")
    ids += [harness.publish("cut", b'{"data": "while down"}') for _ in range(6)]
    harness.ask("reconnected")
    answer = harness.history({"cut": ids[0]})
    assert not answer["memory"] and answer["hub"]["cut"]["gap"] is True
    assert harness.ask("stats")["lost"] == 1  # the open subscriber was told too
    ids.append(harness.publish("cut", b'{"data": "live again"}'))
    answer = harness.history({"cut": ids[-2]})
    assert answer["memory"] and answer["hub"] == answer["oracle"]
    assert answer["hub"]["cut"]["data"] == ["live again"]


def test_a_limited_read_over_an_unreadable_entry_counts_it_as_redis_count_does(start_harness):
    harness = start_harness(50, 1000, 1 << 20, 3600.0)
    ids = [harness.publish("lim", message) for message in (
        b'{"data": "one"}', b'{"data": "\xff"}', b'{"data": "two"}', b'{"data": "three"}')]
    answer = harness.history({"lim": "0-0"}, limit=2)
    assert answer["hub"] == answer["oracle"] == {
        "lim": {"ids": [ids[0]], "data": ["one"], "gap": False}}
    answer = harness.history({"lim": ids[0]}, limit=2)
    assert answer["hub"]["lim"]["data"] == ["two"]


# -- no subscribe churn ---------------------------------------------------------------------------


def test_a_long_poller_polling_in_a_loop_causes_no_subscribe_churn_and_reads_memory(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--unsubscribe-grace", "5")
    before = command_calls(redis_db.client)
    got: list[str] = []
    done = threading.Event()
    failures: list[str] = []

    def poll_in_a_loop() -> None:
        cursor = None
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            params = {"timeout": "2"}
            if cursor is not None:
                params["lastEventId"] = cursor
            response = requests.get(gateway.url + "/poll/loop", params=params, timeout=15)
            if response.status_code != 200:
                failures.append(response.text)
                return
            body = response.json()
            got.extend(e["data"] for e in body["events"])
            cursor = body["lastEventId"]

    poller = threading.Thread(target=poll_in_a_loop)
    poller.start()
    try:
        wait_until(lambda: health(gateway)["subscribers"] == 1, message="the first poll")
        for n in range(20):
            publish_all(gateway, "loop", [f"e{n}"])
            time.sleep(0.02)  # some land between two polls, some on a held one
        wait_until(lambda: len(got) >= 20 or failures, 20, message="every event polled")
    finally:
        done.set()
        poller.join(30)
    assert not failures and got == [f"e{n}" for n in range(20)]
    calls = command_calls(redis_db.client)
    assert calls.get("subscribe", 0) - before.get("subscribe", 0) == 1
    assert calls.get("unsubscribe", 0) - before.get("unsubscribe", 0) == 0
    # Each publish's script reads its stream's head once (to trim): 20, and no read besides.
    assert calls.get("xrange", 0) - before.get("xrange", 0) == 20
    assert health(gateway)["history_from_broker"] == 0


def numsub(client, channel: str) -> int:
    [(_, count)] = client.pubsub_numsub("sse-gateway/live/" + channel)
    return count


def test_a_channel_with_no_subscriber_is_unsubscribed_after_the_grace_period(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url,
                            env={"SSE_GATEWAY_UNSUBSCRIBE_GRACE": "4"})
    stream = open_stream(gateway.url + "/events/graced")
    assert numsub(redis_db.client, "graced") == 1
    stream.close()
    wait_until(lambda: health(gateway)["subscribers"] == 0, message="the stream to leave")
    left = time.monotonic()
    counters = health(gateway)
    assert (counters["channels"], counters["idle_channels"]) == (0, 1)
    assert numsub(redis_db.client, "graced") == 1
    wait_until(lambda: numsub(redis_db.client, "graced") == 0, 15,
               message="the channel to be unsubscribed after the grace period")
    assert time.monotonic() - left > 2  # not at once (4 s after the stream left, in fact)
    assert health(gateway)["idle_channels"] == 0


def test_with_no_grace_a_channel_is_unsubscribed_as_its_last_subscriber_leaves(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url, "--unsubscribe-grace", "0")
    open_stream(gateway.url + "/events/gone").close()
    wait_until(lambda: numsub(redis_db.client, "gone") == 0, 5, 0.01,
               message="the channel to be unsubscribed at once")
    assert health(gateway)["idle_channels"] == 0


def test_a_gateway_with_channels_in_their_grace_period_stops_at_once(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url, "--unsubscribe-grace", "600")
    open_stream(gateway.url + "/events/lingering").close()
    wait_until(lambda: health(gateway)["idle_channels"] == 1, message="the stream to leave")
    started = time.monotonic()
    assert gateway.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - started < 10
    assert "stopped" in gateway.log()


# -- the grace period in process ---------------------------------------------------------------


class CountingBroker(EmbeddedBroker):
    def __init__(self) -> None:
        super().__init__()
        self.subscribes = self.unsubscribes = 0

    def subscribe(self, channel):
        self.subscribes += 1
        return super().subscribe(channel)

    def unsubscribe(self, channel):
        self.unsubscribes += 1
        super().unsubscribe(channel)


def poller(hub: Hub, channel: str = "c") -> PollQueue:
    queue = PollQueue([channel], 100)
    hub.attach(queue)
    return queue


def test_a_subscriber_back_within_the_grace_period_reuses_the_subscription_and_one_timer():
    broker = CountingBroker()
    hub = Hub(broker, 1 << 30, unsubscribe_grace=0.2)
    broker.start(hub.dispatch)
    for _ in range(50):
        poller(hub).close()
        assert (hub.channel_count, hub.idle_channel_count) == (0, 1)
    [entry] = hub._channels.values()
    assert entry.grace.active  # the one timer of the last leave; the others were closed
    assert (broker.subscribes, broker.unsubscribes) == (1, 0)
    deadline = time.monotonic() + 10
    while hub.idle_channel_count and time.monotonic() < deadline:
        gevent.sleep(0.02)  # the loop runs the timer meanwhile
    assert (hub.idle_channel_count, broker.subscribes, broker.unsubscribes) == (0, 1, 1)
    assert "c" not in broker._subscribed


def test_the_grace_period_counts_from_the_last_subscriber_leaving():
    broker = CountingBroker()
    hub = Hub(broker, 1 << 30, unsubscribe_grace=1.0)
    broker.start(hub.dispatch)
    poller(hub).close()
    gevent.sleep(0.6)
    poller(hub).close()
    left = time.monotonic()
    gevent.sleep(0.6)  # 1.2 s after the first leave, 0.6 s after the last
    assert (hub.idle_channel_count, broker.unsubscribes) == (1, 0)
    while hub.idle_channel_count and time.monotonic() < left + 10:
        gevent.sleep(0.02)
    assert broker.unsubscribes == 1 and time.monotonic() - left >= 0.95


def test_a_subscriber_arriving_as_the_grace_period_ends_keeps_the_subscription():
    broker = CountingBroker()
    hub = Hub(broker, 1 << 30, unsubscribe_grace=30)
    broker.start(hub.dispatch)
    poller(hub).close()
    [entry] = hub._channels.values()
    hub._grace_over("c", entry)  # the timer fires; its unsubscribe runs at the next switch
    back = poller(hub)
    gevent.sleep(0.05)
    assert (hub.channel_count, broker.unsubscribes) == (1, 0)
    back.close()
    assert hub.idle_channel_count == 1


def test_stopping_the_hub_unsubscribes_channels_in_their_grace_period_and_leaves_no_timer():
    broker = CountingBroker()
    hub = Hub(broker, 1 << 30, unsubscribe_grace=600)
    broker.start(hub.dispatch)
    poller(hub, "a").close()
    staying = poller(hub, "b")
    hub.close_all()
    assert staying.closed
    assert (hub.channel_count, hub.idle_channel_count, broker.unsubscribes) == (0, 0, 2)
    assert broker._subscribed == set()
