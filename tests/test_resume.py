"""History and Last-Event-ID resume, end to end: real gateways, a real redis-server, real sockets.

Every stream starts with `retry:`, `: ok`, the replayed backlog, then an `id:` line with no data
(the cursor). `open_stream` waits for that cursor line, so when it returns the connection is
subscribed and its whole backlog has arrived: what comes after is live.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest
import requests
from conftest import wait_until
from sse_client import Stream, StreamClosed

from gateway import Publisher
from gateway.ids import parse_id

RESET = "gateway-reset"
RESUME_WAYS = ["header", "lastEventId", "last_event_id", "evs_last_event_id"]
# The cursor line: a block holding only `id:`. Events always start with `data:` or `event:`,
# so a blank line followed by `id:` is never inside an event.
_CURSOR_LINE = re.compile(rb"\n\nid: ([^\n]*)\n\n")


# -- helpers --------------------------------------------------------------------------------------


def resume_target(url: str, cursor: str | None, how: str = "header"):
    """URL and headers that resume from `cursor`, the way a browser or a polyfill sends it."""
    if cursor is None:
        return url, {}
    if how == "header":
        return url, {"Last-Event-ID": cursor}
    joiner = "&" if "?" in url else "?"
    return url + joiner + urlencode({how: cursor}), {}


def open_stream(url: str, cursor: str | None = None, how: str = "header",
                timeout: float = 10.0) -> Stream:
    """A stream that is subscribed and has received its whole backlog."""
    target, headers = resume_target(url, cursor, how)
    stream = Stream(target, headers, timeout=timeout)
    try:
        assert stream.status == 200, f"GET {target} answered {stream.status}"
        stream.wait_for(lambda s: _CURSOR_LINE.search(s.body) is not None, timeout)
    except BaseException:
        stream.close()
        raise
    return stream


def head_cursor(stream: Stream) -> str:
    match = _CURSOR_LINE.search(stream.body)
    assert match is not None
    return match.group(1).decode("utf-8")


def publish(gateway, channel: str, values: Sequence, source_id: str | None = None) -> list[str]:
    """Publish each value through the gateway's HTTP API; the ids it assigned, in order."""
    ids = []
    for value in values:
        body = {"data": value}
        if source_id is not None:
            body["id"] = source_id
        response = gateway.publish(channel, body)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def messages(stream: Stream) -> list:
    return [e for e in stream.events if e.type == "message"]


def datas(stream: Stream) -> list[str]:
    return [e.data for e in messages(stream)]


def resets(stream: Stream) -> list[dict]:
    return [json.loads(e.data) for e in stream.events if e.type == RESET]


def wait_for_data(stream: Stream, value: str, timeout: float = 10.0) -> None:
    stream.wait_for(lambda s: any(e.data == value for e in messages(s)), timeout)


def redis_args(server) -> list[str]:
    return ["--redis-url", server.url, "--heartbeat", "1"]


# -- resume after a disconnection -----------------------------------------------------------------


@pytest.mark.parametrize("how", RESUME_WAYS)
def test_reconnect_replays_exactly_the_missed_events_in_order_then_live(
    start_gateway, broker_args, how
):
    gateway = start_gateway(*broker_args, "--heartbeat", "1")
    url = gateway.url + "/events/news"
    first = open_stream(url)
    [seen_id] = publish(gateway, "news", ["seen"], source_id="order-1")
    first.wait_events(1)
    # The publisher's own id rides after a space; the whole string is what a browser sends back.
    cursor = first.parser.last_event_id
    assert cursor == f"{seen_id} order-1"
    first.close()

    # Another subscriber shows when the gateway has had every missed event (pub/sub may lag
    # behind the publishes): the resume's replay covers them all then, from memory or history.
    with open_stream(url) as watcher:
        missed_ids = publish(gateway, "news", range(200))
        watcher.wait_events(200)
    assert missed_ids == sorted(missed_ids, key=parse_id)

    with open_stream(url, cursor, how) as stream:
        assert [e.data for e in stream.events] == [str(i) for i in range(200)]
        assert [e.last_event_id for e in stream.events] == missed_ids
        assert head_cursor(stream) == missed_ids[-1]
        live_ids = publish(gateway, "news", ["live-1", "live-2"])
        wait_for_data(stream, "live-2")
        assert datas(stream) == [str(i) for i in range(200)] + ["live-1", "live-2"]
        assert [e.last_event_id for e in stream.events] == missed_ids + live_ids


def test_last_event_id_header_wins_over_the_query_parameter(gateway):
    url = gateway.url + "/events/news"
    ids = publish(gateway, "news", range(10))
    target = url + "?" + urlencode({"lastEventId": ids[2]})
    with Stream(target, {"Last-Event-ID": ids[6]}) as stream:
        assert stream.status == 200
        stream.wait_for(lambda s: _CURSOR_LINE.search(s.body) is not None)
        assert datas(stream) == ["7", "8", "9"]


def test_cursor_of_an_empty_channel_resumes_from_its_first_event(gateway):
    url = gateway.url + "/events/fresh"
    with open_stream(url) as first:
        cursor = head_cursor(first)
    assert cursor == "0-0"
    ids = publish(gateway, "fresh", ["a", "b", "c"])
    with open_stream(url, cursor) as stream:
        assert datas(stream) == ["a", "b", "c"]
        assert resets(stream) == []
        assert head_cursor(stream) == ids[-1]


def test_client_that_missed_nothing_gets_no_replay_and_no_reset(gateway):
    url = gateway.url + "/events/quiet"
    ids = publish(gateway, "quiet", ["a", "b"])
    with open_stream(url, ids[-1]) as stream:
        assert stream.events == []
        assert head_cursor(stream) == ids[-1]
        publish(gateway, "quiet", ["c"])
        wait_for_data(stream, "c")
        assert datas(stream) == ["c"]


# -- many clients reconnecting while a publisher hammers the channel ---------------------------------

HAMMER_EVENTS = 1200
HAMMER_CLIENTS = 20


def test_clients_reconnecting_during_heavy_publishing_see_every_event_exactly_once(
    start_gateway, broker_args
):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-length", "5000")
    url = gateway.url + "/events/hammer"
    last_value = str(HAMMER_EVENTS - 1)
    all_live = threading.Barrier(HAMMER_CLIENTS + 1, timeout=60)
    published = threading.Event()
    failed = threading.Event()  # ends every thread early once one of them has failed

    def publisher() -> None:
        try:
            all_live.wait()
            # One connection per request: requests sends a keep-alive POST's head and body in
            # two writes, which Nagle's algorithm and delayed ACKs turn into 40 ms stalls.
            for value in range(HAMMER_EVENTS):
                response = requests.post(f"{gateway.url}/publish/hammer",
                                         json={"data": value}, timeout=10)
                assert response.status_code == 200, response.text
                assert not failed.is_set()
        except BaseException:
            failed.set()
            all_live.abort()
            raise
        finally:
            published.set()

    def read_round(stream: Stream, want: int, newest: str | None) -> None:
        """Read `want` events, or up to the last one once everything is published."""

        def enough(s: Stream) -> bool:
            got = messages(s)
            latest = got[-1].data if got else newest
            done = published.is_set() and latest == last_value
            return len(got) >= want or done or failed.is_set()

        try:
            stream.wait_for(enough, 30)
        except StreamClosed:
            pass  # e.g. dropped as a slow subscriber: resume, as a browser would

    def client(number: int) -> dict:
        rng = random.Random(number)
        values: list[str] = []
        resets_seen: list[str] = []
        cursor: str | None = None
        rounds = overlapping = 0
        deadline = time.monotonic() + 90
        try:
            while not (values and values[-1] == last_value):
                rounds += 1
                overlapping += rounds > 1 and not published.is_set()
                assert rounds <= 1000 and time.monotonic() < deadline, "too many rounds"
                assert not failed.is_set(), "another thread failed"
                target, headers = resume_target(url, cursor)
                with Stream(target, headers, timeout=20) as stream:
                    assert stream.status == 200
                    if rounds == 1:
                        stream.wait_for(lambda s: _CURSOR_LINE.search(s.body) is not None, 20)
                        all_live.wait()
                    read_round(stream, rng.randint(3, 40), values[-1] if values else None)
                for event in stream.events:
                    (resets_seen if event.type == RESET else values).append(event.data)
                cursor = stream.parser.last_event_id or cursor
        except BaseException:
            failed.set()
            all_live.abort()
            raise
        return {"values": values, "resets": resets_seen, "rounds": rounds,
                "overlapping": overlapping}

    # Every thread ends by itself: socket timeouts, a barrier timeout, bounded rounds.
    with ThreadPoolExecutor(HAMMER_CLIENTS + 1) as pool:
        publishing = pool.submit(publisher)
        clients = [pool.submit(client, n) for n in range(HAMMER_CLIENTS)]
    errors = [f.exception() for f in [publishing, *clients] if f.exception() is not None]
    # Report the first failure itself, not the others that it stopped.
    for error in sorted(errors, key=lambda e: isinstance(e, threading.BrokenBarrierError)
                        or "another thread failed" in str(e)):
        raise error
    results = [future.result() for future in clients]
    expected = [str(i) for i in range(HAMMER_EVENTS)]
    for number, result in enumerate(results):
        assert result["resets"] == [], f"client {number} was told history was lost"
        values = result["values"]
        assert len(values) == len(set(values)), f"client {number} got duplicates"
        assert values == expected, f"client {number} missed or reordered events"
        assert result["rounds"] >= 2, f"client {number} never reconnected"
    # The clients really did resume while the publisher was publishing.
    assert sum(r["overlapping"] for r in results) >= HAMMER_CLIENTS * 2


# -- several channels on one connection ---------------------------------------------------------------


def expected_cursors(events, channels: Sequence[str], positions: dict[str, str],
                     ids: dict[str, str], source_ids: dict[str, str]) -> list[str]:
    """The cursor each event of a several-channel stream must carry, given the start positions."""
    positions = dict(positions)
    cursors = []
    for event in events:
        channel = event.data.split("-")[0]
        positions[channel] = ids[event.data]
        text = ",".join(f"{c}={positions[c]}" for c in channels)
        source = source_ids.get(event.data)
        cursors.append(f"{text} {source}" if source else text)
    return cursors


def test_several_channel_connection_resumes_every_channel_from_one_last_event_id(gateway):
    url = gateway.url + "/events?channel=alpha&channel=beta"
    first = open_stream(url)
    assert head_cursor(first) == "alpha=0-0,beta=0-0"
    [alpha_0] = publish(gateway, "alpha", ["alpha-0"])
    [beta_0] = publish(gateway, "beta", ["beta-0"], source_id="src-7")
    first.wait_events(2)
    cursor = first.parser.last_event_id
    assert cursor == f"alpha={alpha_0},beta={beta_0} src-7"

    ids: dict[str, str] = {}
    for i in range(1, 16):
        ids[f"alpha-{i}"] = publish(gateway, "alpha", [f"alpha-{i}"])[0]
        if i % 3:
            ids[f"beta-{i}"] = publish(gateway, "beta", [f"beta-{i}"])[0]
    # A publish is acknowledged before the gateway's pub/sub copy of it may have come: an event
    # still on its way would be sent live after the replay, not in it.
    first.wait_events(2 + len(ids))
    first.close()

    with open_stream(url, cursor) as stream:
        replayed = list(stream.events)
        assert resets(stream) == []
        assert sorted(e.data for e in replayed) == sorted(ids)
        for channel in ("alpha", "beta"):
            mine = [e.data for e in replayed if e.data.startswith(channel)]
            assert mine == [k for k in ids if k.startswith(channel)], f"{channel} out of order"
        # Merged in id order across channels.
        replay_ids = [parse_id(ids[e.data]) for e in replayed]
        assert replay_ids == sorted(replay_ids)
        start = {"alpha": alpha_0, "beta": beta_0}
        assert [e.last_event_id for e in replayed] == expected_cursors(
            replayed, ["alpha", "beta"], start, ids, {})
        assert head_cursor(stream) == replayed[-1].last_event_id

        ids["beta-live"] = publish(gateway, "beta", ["beta-live"], source_id="s")[0]
        ids["alpha-live"] = publish(gateway, "alpha", ["alpha-live"])[0]
        wait_for_data(stream, "alpha-live")
        live = stream.events[len(replayed):]
        assert [e.data for e in live] == ["beta-live", "alpha-live"]
        assert [e.last_event_id for e in live] == expected_cursors(
            live, ["alpha", "beta"], {"alpha": ids["alpha-15"], "beta": ids["beta-14"]}, ids,
            {"beta-live": "s"})


def test_several_channel_cursor_naming_one_channel_starts_the_other_live(gateway):
    url = gateway.url + "/events?channel=alpha&channel=beta"
    alpha_ids = publish(gateway, "alpha", ["alpha-0", "alpha-1", "alpha-2"])
    publish(gateway, "beta", ["beta-old"])
    with open_stream(url, f"alpha={alpha_ids[0]}") as stream:
        assert datas(stream) == ["alpha-1", "alpha-2"]
        publish(gateway, "beta", ["beta-new"])
        wait_for_data(stream, "beta-new")
        assert datas(stream) == ["alpha-1", "alpha-2", "beta-new"]


# -- lost history: the reset event ---------------------------------------------------------------------


def test_trimmed_history_sends_reset_first_then_what_still_exists_then_live(
    start_gateway, broker_args
):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-length", "10")
    url = gateway.url + "/events/trim"
    [cursor] = publish(gateway, "trim", ["seen"])
    ids = publish(gateway, "trim", range(30))
    with open_stream(url, cursor) as stream:
        assert stream.events[0].type == RESET
        assert json.loads(stream.events[0].data) == {"channels": ["trim"],
                                                     "reason": "history-lost"}
        rest = stream.events[1:]
        assert [e.type for e in rest] == ["message"] * 10
        assert [e.data for e in rest] == [str(i) for i in range(20, 30)]
        assert [e.last_event_id for e in rest] == ids[20:]
        assert head_cursor(stream) == ids[-1]
        publish(gateway, "trim", ["live"])
        wait_for_data(stream, "live")
        assert len(resets(stream)) == 1
        assert datas(stream)[-1] == "live"


def test_resume_from_the_last_trimmed_event_is_not_a_reset(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-length", "10")
    ids = publish(gateway, "edge", range(11))  # exactly one trimmed: ids[0], which the client saw
    with open_stream(gateway.url + "/events/edge", ids[0]) as stream:
        assert resets(stream) == []
        assert datas(stream) == [str(i) for i in range(1, 11)]


def test_empty_channel_cursor_after_trimming_sends_reset(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-length", "10")
    url = gateway.url + "/events/edge"
    with open_stream(url) as first:
        cursor = head_cursor(first)
    assert cursor == "0-0"
    ids = publish(gateway, "edge", range(30))
    with open_stream(url, cursor) as stream:
        assert stream.events[0].type == RESET
        assert resets(stream) == [{"channels": ["edge"], "reason": "history-lost"}]
        assert datas(stream) == [str(i) for i in range(20, 30)]
        assert head_cursor(stream) == ids[-1]


def test_several_channel_reset_names_only_the_channel_that_lost_history(
    start_gateway, broker_args
):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-length", "10")
    url = gateway.url + "/events?channel=alpha&channel=beta"
    [alpha_0] = publish(gateway, "alpha", ["alpha-seen"])
    [beta_0] = publish(gateway, "beta", ["beta-seen"])
    alpha_ids = publish(gateway, "alpha", [f"alpha-{i}" for i in range(25)])
    beta_ids = publish(gateway, "beta", [f"beta-{i}" for i in range(3)])
    with open_stream(url, f"alpha={alpha_0},beta={beta_0}") as stream:
        assert stream.events[0].type == RESET
        assert json.loads(stream.events[0].data) == {"channels": ["alpha"],
                                                     "reason": "history-lost"}
        assert len(resets(stream)) == 1
        assert datas(stream) == [f"alpha-{i}" for i in range(15, 25)] + [
            f"beta-{i}" for i in range(3)]
        assert head_cursor(stream) == f"alpha={alpha_ids[-1]},beta={beta_ids[-1]}"


@pytest.mark.parametrize("bad", ["garbage", "1795280678065", "1-0-0", "news=oops"])
def test_malformed_last_event_id_sends_unknown_id_reset_then_live(gateway, bad):
    url = gateway.url + "/events/news"
    publish(gateway, "news", ["old"])
    with open_stream(url, bad) as stream:
        assert stream.events and stream.events[0].type == RESET
        assert json.loads(stream.events[0].data) == {"channels": ["news"],
                                                     "reason": "unknown-id"}
        publish(gateway, "news", ["live"])
        wait_for_data(stream, "live")
        assert datas(stream)[-1] == "live"
        assert len(resets(stream)) == 1


def test_bare_id_on_a_several_channel_connection_is_an_unknown_id(gateway):
    [event_id] = publish(gateway, "alpha", ["old"])
    with open_stream(gateway.url + "/events?channel=alpha&channel=beta", event_id) as stream:
        assert resets(stream) == [{"channels": ["alpha", "beta"], "reason": "unknown-id"}]
        assert stream.events[0].type == RESET


def test_malformed_last_event_id_sends_reset_then_the_events_that_still_exist(
    start_gateway, broker_args
):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-length", "10")
    ids = publish(gateway, "news", range(30))
    with open_stream(gateway.url + "/events/news", "not-an-id") as stream:
        assert stream.events[0].type == RESET
        assert json.loads(stream.events[0].data) == {"channels": ["news"],
                                                     "reason": "unknown-id"}
        assert datas(stream) == [str(i) for i in range(20, 30)]
        assert [e.last_event_id for e in messages(stream)] == ids[20:]


def test_id_newer_than_history_resets_and_continues_live(gateway):
    url = gateway.url + "/events/news"
    ids = publish(gateway, "news", ["a", "b"])
    ms = parse_id(ids[-1])[0]
    with open_stream(url, f"{ms + 10**9}-0") as stream:
        assert resets(stream) == [{"channels": ["news"], "reason": "history-lost"}]
        assert stream.events[0].type == RESET
        publish(gateway, "news", ["live"])
        wait_for_data(stream, "live")


def test_id_of_a_channel_without_history_resets(gateway):
    with open_stream(gateway.url + "/events/never", "1795280678065-0") as stream:
        assert resets(stream) == [{"channels": ["never"], "reason": "history-lost"}]
        assert messages(stream) == []


def test_expired_history_sends_reset(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--history-age", "1")
    url = gateway.url + "/events/short"
    ids = publish(gateway, "short", ["a", "b", "c"])

    def resumed_with_reset():
        with open_stream(url, ids[0]) as stream:
            return list(stream.events) if resets(stream) else None

    # Bounded polling: the events expire about a second after they were published.
    events = wait_until(resumed_with_reset, 15, message="history to expire", interval=0.2)
    assert events[0].type == RESET
    assert json.loads(events[0].data) == {"channels": ["short"], "reason": "history-lost"}
    assert [e for e in events if e.type == "message"] == []


def test_embedded_gateway_restart_resets_clients_resuming_from_before_it(start_gateway):
    old = start_gateway("--heartbeat", "1")
    [cursor] = publish(old, "news", ["before"])
    old.stop()
    new = start_gateway("--heartbeat", "1")
    publish(new, "news", ["after"])
    with open_stream(new.url + "/events/news", cursor) as stream:
        assert stream.events[0].type == RESET
        assert resets(stream) == [{"channels": ["news"], "reason": "history-lost"}]
        assert datas(stream) == ["after"]


# -- Redis: several gateways, pub/sub connection loss, Redis restart ----------------------------------


def test_resume_on_another_gateway_process_than_the_one_left(start_gateway, redis_db):
    left = start_gateway(*redis_args(redis_db))
    other = start_gateway(*redis_args(redis_db))
    first = open_stream(left.url + "/events/news")
    [seen] = publish(left, "news", ["seen"])
    first.wait_events(1)
    cursor = first.parser.last_event_id
    assert cursor == seen
    first.close()

    missed = publish(left, "news", range(50))
    with open_stream(other.url + "/events/news", cursor) as stream:
        assert datas(stream) == [str(i) for i in range(50)]
        assert [e.last_event_id for e in stream.events] == missed
        # Live events published through the first gateway reach the second one.
        live = publish(left, "news", ["live-1"]) + publish(other, "news", ["live-2"])
        wait_for_data(stream, "live-2")
        assert datas(stream) == [str(i) for i in range(50)] + ["live-1", "live-2"]
        assert [e.last_event_id for e in stream.events] == missed + live


def test_reading_history_longer_than_one_redis_page_replays_it_all(start_gateway, redis_db):
    gateway = start_gateway(*redis_args(redis_db), "--history-length", "5000")
    publisher = Publisher(redis_db.url, history_length=5000)
    [cursor] = [publisher.publish("long", "seen")["id"]]
    ids = [publisher.publish("long", str(i))["id"] for i in range(1234)]
    with open_stream(gateway.url + "/events/long", cursor, timeout=20) as stream:
        assert datas(stream) == [str(i) for i in range(1234)]
        assert [e.last_event_id for e in stream.events] == ids


def pubsub_connections(client) -> list[dict]:
    return [c for c in client.client_list()
            if int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0 or c.get("cmd") == "subscribe"]


def test_killed_pubsub_connection_loses_no_event_and_duplicates_none(start_gateway, redis_db):
    gateway = start_gateway(*redis_args(redis_db))
    client = redis_db.client
    publisher = Publisher(redis_db.url)
    stop = threading.Event()
    kills = 5

    def publish_steadily() -> int:
        """Publish in quick bursts until told to stop: events land inside every reconnect."""
        for value in range(6000):
            if stop.is_set():
                return value
            publisher.publish("kill", value)
            if value % 10 == 9:
                time.sleep(0.002)  # let the gateway and the readers keep up
        return 6000

    with open_stream(gateway.url + "/events/kill") as one, open_stream(
        gateway.url + "/events?channel=kill&channel=other"
    ) as several, ThreadPoolExecutor(1) as pool:
        publishing = pool.submit(publish_steadily)
        killed: list[str] = []
        try:
            for _ in range(kills):
                # The gateway's one subscribed connection (resubscribed after the last kill).
                [connection] = wait_until(
                    lambda: [c for c in pubsub_connections(client)
                             if c["id"] not in killed] or None,
                    15, message="the gateway's pub/sub connection")
                assert client.execute_command("CLIENT", "KILL", "ID", connection["id"]) == 1
                killed.append(connection["id"])
                # Events flow again through the new connection before the next kill.
                for stream in (one, several):
                    wanted = len(stream.events) + 50
                    stream.wait_for(lambda s, wanted=wanted: len(s.events) >= wanted, 15)
        finally:
            stop.set()
        total = publishing.result(timeout=30)
        assert total < 6000, "the kills took longer than the publisher's budget"
        expected = [str(i) for i in range(total)]
        for stream in (one, several):
            stream.wait_for(lambda s: len(s.events) >= total, 20)
            assert resets(stream) == []
            received = [e.data for e in stream.events]
            assert len(received) == len(set(received)), "duplicates"
            assert received == expected
    assert gateway.log().count("lost the Redis pub/sub connection") >= kills


@contextmanager
def pubsub_connection_down(gateway, client):
    """Kill the gateway's pub/sub connection and refuse its reconnects until the block ends."""
    [connection] = wait_until(lambda: pubsub_connections(client) or None, 10, message=
                              "the gateway's pub/sub connection")
    original = client.config_get("maxclients")["maxclients"]
    # Connections already open stay; a new one would exceed the limit once the kill is done.
    client.config_set("maxclients", len(client.client_list()) - 1)
    try:
        assert client.execute_command("CLIENT", "KILL", "ID", connection["id"]) == 1
        body = wait_until(lambda: health(gateway, 503), 10, message="/healthz to report 503")
        assert "pub/sub" in body["detail"]
        yield
    finally:
        client.config_set("maxclients", original)
    wait_until(lambda: health(gateway, 200), 30, message="the pub/sub connection to come back")


def test_events_published_while_the_pubsub_connection_is_down_are_filled_in(
    start_gateway, redis_db
):
    gateway = start_gateway(*redis_args(redis_db))
    publisher = Publisher(redis_db.url)
    with open_stream(gateway.url + "/events/gap") as stream, open_stream(
        gateway.url + "/events?channel=gap&channel=other"
    ) as several:
        ids = [publisher.publish("gap", "first")["id"]]
        wait_for_data(stream, "first")
        with pubsub_connection_down(gateway, redis_db.client):
            ids += [publisher.publish("gap", str(i))["id"] for i in range(50)]
        ids.append(publisher.publish("gap", "live")["id"])
        expected = ["first"] + [str(i) for i in range(50)] + ["live"]
        for subscriber in (stream, several):
            wait_for_data(subscriber, "live")
            assert [e.data for e in subscriber.events] == expected
        assert [e.last_event_id for e in stream.events] == ids


def test_events_trimmed_while_the_pubsub_connection_is_down_reset_open_streams(
    start_gateway, redis_db
):
    gateway = start_gateway(*redis_args(redis_db), "--history-length", "10")
    publisher = Publisher(redis_db.url, history_length=10)
    with open_stream(gateway.url + "/events/gap") as stream:
        publisher.publish("gap", "first")
        wait_for_data(stream, "first")
        with pubsub_connection_down(gateway, redis_db.client):
            for i in range(30):
                publisher.publish("gap", str(i))
        publisher.publish("gap", "live")
        wait_for_data(stream, "live")
        # Either every event, or a reset before what history still held: never a silent gap.
        received = [(e.type, e.data) for e in stream.events]
        everything = [("message", str(i)) for i in range(30)]
        told = [(RESET, json.dumps({"channels": ["gap"], "reason": "history-lost"},
                                   separators=(",", ":")))] + everything[20:]
        assert received[1:-1] in (everything, told)


def test_raw_redis_publish_is_delivered_live_but_not_replayed(start_gateway, redis_db):
    gateway = start_gateway(*redis_args(redis_db))
    with open_stream(gateway.url + "/events/raw") as stream:
        [before] = publish(gateway, "raw", ["kept"])
        wait_for_data(stream, "kept")
        assert redis_db.client.publish("raw", "plain text from redis-cli") == 1
        wait_for_data(stream, "plain text from redis-cli")
        # No id line: the raw message does not move the client's cursor.
        assert stream.parser.last_event_id == before
        [after] = publish(gateway, "raw", ["kept-too"])
        wait_for_data(stream, "kept-too")
    with open_stream(gateway.url + "/events/raw", before) as resumed:
        assert datas(resumed) == ["kept-too"]
        assert head_cursor(resumed) == after


def health(gateway, status: int) -> dict | None:
    """The /healthz body if it answers `status`, else None."""
    response = requests.get(gateway.url + "/healthz", timeout=5)
    return response.json() if response.status_code == status else None


def test_redis_restart_keeps_streams_open_and_health_recovers(start_gateway, redis_db):
    server = redis_db
    gateway = start_gateway(*redis_args(server))
    stream = open_stream(gateway.url + "/events/outage")
    [before] = publish(gateway, "outage", ["before"])
    wait_for_data(stream, "before")
    try:
        server.stop()
        body = wait_until(lambda: health(gateway, 503), 15, message="/healthz to report 503")
        assert body["status"] == "unavailable"

        response = gateway.publish("outage", {"data": "during"})
        assert response.status_code == 503
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"] == "broker unavailable"

        # A new channel cannot be subscribed now: the client is told to come back (test_outage.py).
        later = requests.get(gateway.url + "/events/elsewhere", timeout=10)
        assert later.status_code == 200
        assert later.text.startswith("retry: ")

        # The open stream stays open through the outage: heartbeats keep coming.
        comments = stream.parser.comments
        stream.wait_for(lambda s: s.parser.comments >= comments + 2, 10)
    finally:
        server.start()
    body = wait_until(lambda: health(gateway, 200), 30, message="/healthz to recover")
    assert body["status"] == "ok"
    assert gateway.proc.poll() is None

    after = publish(gateway, "outage", ["after-1", "after-2"])
    wait_for_data(stream, "after-2", timeout=15)
    assert not stream.ended
    assert datas(stream) == ["before", "after-1", "after-2"]
    assert [e.last_event_id for e in messages(stream)] == [before] + after
    for reset in resets(stream):
        assert reset == {"channels": ["outage"], "reason": "history-lost"}
    stream.close()

    # Redis ran without persistence: a client resuming from before the outage is told so.
    with open_stream(gateway.url + "/events/outage", before) as resumed:
        assert resumed.events[0].type == RESET
        assert resets(resumed) == [{"channels": ["outage"], "reason": "history-lost"}]
        assert datas(resumed) == ["after-1", "after-2"]
