"""Reconnect storms and long-poll crowds: thousands of clients at once on one gateway process.

When a gateway restarts, or nginx moves its clients, they all come back at once with their
Last-Event-ID. Every one must get 200 and exactly the events it missed, whatever the number,
and the history reads behind them are shared: Redis sees a few, not one per client
(`INFO commandstats` counts them). The clients are raw sockets on one asyncio loop in this
process; the gateway and redis-server are real processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from typing import Callable
from urllib.parse import urlencode

import gevent
import pytest
import requests
from conftest import (
    ROOT,
    command_calls,
    file_descriptors,
    publish_all,
    run_async,
    wait_until,
)

from gateway.brokers.slots import NoSlot, Slots
from gateway.wire import EventStreamParser

STORM = 2000  # clients reconnecting at once
POLLERS = 1000
CHANNELS = 300  # more history reads at once than redis-py's default pool of 100 connections
# The cursor line that ends a stream's opening: a block holding only `id:` (see test_resume).
_CURSOR_LINE = re.compile(rb"\n\nid: [^\n]*\n\n")


@pytest.fixture(autouse=True, scope="module")
def enough_file_descriptors():
    """Thousands of sockets here and as many in the gateway, which inherits the limit."""
    with file_descriptors(2 * STORM + 1000):
        yield


# -- a raw HTTP/1.1 client on asyncio ---------------------------------------------------------


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body in chunked framing so far, and whether its last chunk has come."""
    out, pos = [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(out), False
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out), True
        if len(raw) < eol + 2 + size + 2:
            out.append(raw[eol + 2:eol + 2 + size])
            return b"".join(out), False
        out.append(raw[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


async def fetch(port: int, target: str, headers: dict[str, str],
                enough: Callable[[bytes], bool]) -> tuple[int, bytes]:
    """GET target; the status and the body once `enough` says so (or the body ended)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError(f"closed before the response head: {raw[:200]!r}")
            raw += data
        head, raw = raw.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:])
        chunked = fields.get(b"transfer-encoding", b"").strip() == b"chunked"
        length = int(fields.get(b"content-length", b"-1"))
        while True:
            if chunked:
                body, ended = dechunk(raw)
            else:
                body, ended = raw, len(raw) >= length >= 0
            if ended or enough(body):
                return status, body
            data = await reader.read(65536)
            if not data:
                return status, body
            raw += data
    finally:
        writer.close()


def crowd(port: int, requests_: list[tuple[str, dict[str, str]]], enough: Callable[[bytes], bool],
          timeout: float = 60.0) -> list[tuple[int, bytes]]:
    """Send every request at once; each one's (status, body). Every socket is closed after."""

    async def run() -> list:
        tasks = [asyncio.ensure_future(fetch(port, target, headers, enough))
                 for target, headers in requests_]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not pending, f"{len(pending)} of {len(tasks)} requests unanswered after {timeout} s"
        return [task.result() for task in tasks]

    return run_async(run())


def stream_opened(body: bytes) -> bool:
    """A stream's opening has come: prelude, replayed events, then the cursor line."""
    return _CURSOR_LINE.search(body) is not None


def replayed(body: bytes) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in EventStreamParser().feed(body)]


def calls_since(client, before: dict[str, int], command: str) -> int:
    return command_calls(client).get(command, 0) - before.get(command, 0)


def tally(results: list[tuple[int, bytes]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    return counts


# -- reconnect storms -------------------------------------------------------------------------


def test_storm_of_clients_resuming_at_once_all_get_200_and_exactly_what_they_missed(
        start_gateway, broker_args, request):
    gateway = start_gateway(*broker_args)
    ids = publish_all(gateway, "storm", [f"event {n}" for n in range(10)])
    missed = [("message", f"event {n}", ids[n]) for n in range(5, 10)]
    redis = request.getfixturevalue("redis_db").client if broker_args else None
    before = command_calls(redis) if redis else {}

    results = crowd(gateway.port, [("/events/storm", {"Last-Event-ID": ids[4]})] * STORM,
                    stream_opened)

    assert tally(results) == {200: STORM}, [body[:300] for status, body in results
                                            if status != 200][:3]
    wrong = [replayed(body) for _, body in results if replayed(body) != missed]
    assert not wrong, f"{len(wrong)} clients got other events than they missed: {wrong[:2]}"
    if redis:
        reads = calls_since(redis, before, "xrange")
        # One read serves every client that resumes from the same id while nothing new is
        # published; a few more when the storm outlasts a shared read's second.
        assert 1 <= reads <= STORM // 40, f"{reads} XRANGE calls for {STORM} clients"
        assert calls_since(redis, before, "exec") <= STORM // 40
    wait_until(lambda: requests.get(gateway.url + "/healthz", timeout=5).json()["subscribers"]
               == 0, 30, message="the storm's streams to leave")


def test_storm_while_the_channel_moves_on_gives_each_client_every_event_once(
        start_gateway, broker_args, request):
    """Waves of clients resuming while events are published between them: reads that the
    channel has moved past answer nobody who needs more, so no one misses or repeats an
    event, and each wave still shares a read or two."""
    gateway = start_gateway(*broker_args)
    ids = publish_all(gateway, "busy", ["first", "second"])
    waves, per_wave = 20, STORM // 40
    during = [f"during {n}" for n in range(waves)]
    redis = request.getfixturevalue("redis_db").client if broker_args else None
    before = command_calls(redis) if redis else {}

    async def storm_while_publishing() -> list:
        tasks = []
        for value in [*during, "last"]:
            tasks += [asyncio.ensure_future(fetch(gateway.port, "/events/busy",
                                                  {"Last-Event-ID": ids[0]},
                                                  lambda body: b"data: last\n" in body))
                      for _ in range(per_wave if value != "last" else 0)]
            await asyncio.sleep(0)  # the wave connects while the event is published
            await asyncio.to_thread(publish_all, gateway, "busy", [value])
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} clients never got the last event"
        return [task.result() for task in tasks]

    results = run_async(storm_while_publishing())

    clients = waves * per_wave
    assert tally(results) == {200: clients}
    expected = ["second", *during, "last"]
    wrong = [datas for datas in ([data for _, data, _ in replayed(body)] for _, body in results)
             if datas != expected]
    assert not wrong, f"{len(wrong)} clients got a gap or a duplicate, e.g. {wrong[0]}"
    if redis:
        reads = calls_since(redis, before, "xrange")
        assert reads <= clients // 5, f"{reads} XRANGE calls for {clients} clients"


@pytest.mark.parametrize("pool", ["", "?max_connections=4"], ids=["default-pool", "pool-of-4"])
def test_more_concurrent_history_reads_than_connections_wait_their_turn_and_none_fails(
        start_gateway, redis_db, pool):
    """Clients on as many channels as the old pool had connections, three times over, while
    Redis is paused: their reads pile up at once, wait for a connection in turn, and succeed."""
    gateway = start_gateway("--redis-url", redis_db.url + pool)
    names = [f"ch{n}" for n in range(CHANNELS)]
    ids = {name: publish_all(gateway, name, ["old", "missed"]) for name in names}
    # Every command Redis gets in the next second waits for the pause to end, then all at once.
    redis_db.client.execute_command("CLIENT", "PAUSE", 1000, "ALL")

    results = crowd(gateway.port, [(f"/events/{name}", {"Last-Event-ID": ids[name][0]})
                                   for name in names], stream_opened)

    assert tally(results) == {200: CHANNELS}, [body[:300] for status, body in results
                                               if status != 200][:3]
    for name, (_, body) in zip(names, results):
        assert replayed(body) == [("message", "missed", ids[name][1])], name


def test_history_longer_than_this_gateway_keeps_is_replayed_whole_in_pages(
        start_gateway, redis_db):
    """A publisher keeping more history than the gateway's --history-length: replay reads it
    in pages of that length and gives every event once."""
    from gateway import Publisher

    gateway = start_gateway("--redis-url", redis_db.url, "--history-length", "100")
    publisher = Publisher(redis_db.url, history_length=1000)
    ids = [publisher.publish("long", f"n{n}")["id"] for n in range(350)]
    before = command_calls(redis_db.client)

    [(status, body)] = crowd(gateway.port, [("/events/long", {"Last-Event-ID": ids[0]})],
                             stream_opened)

    assert status == 200
    assert replayed(body) == [("message", f"n{n}", ids[n]) for n in range(1, 350)]
    assert calls_since(redis_db.client, before, "xrange") == 4  # 349 events, pages of 100


# -- long-poll crowds -------------------------------------------------------------------------


def poll_target(channel: str, cursor: str, timeout: float) -> str:
    return f"/poll/{channel}?" + urlencode({"lastEventId": cursor, "timeout": timeout})


def test_crowd_of_long_polls_with_a_backlog_all_get_exactly_it_from_one_shared_read(
        start_gateway, broker_args, request):
    gateway = start_gateway(*broker_args)
    ids = publish_all(gateway, "crowd", [f"e{n}" for n in range(8)])
    redis = request.getfixturevalue("redis_db").client if broker_args else None
    before = command_calls(redis) if redis else {}

    results = crowd(gateway.port, [(poll_target("crowd", ids[2], 20), {})] * POLLERS,
                    lambda body: False)

    assert tally(results) == {200: POLLERS}, [body[:300] for status, body in results
                                              if status != 200][:3]
    expected = {"events": [{"event": "message", "data": f"e{n}", "id": ids[n]}
                           for n in range(3, 8)], "lastEventId": ids[7]}
    for _, body in results:
        answer = json.loads(body)
        assert {key: answer[key] for key in expected} == expected
    if redis:
        reads = calls_since(redis, before, "xrange")
        assert 1 <= reads <= POLLERS // 40, f"{reads} XRANGE calls for {POLLERS} polls"


def test_crowd_of_held_long_polls_all_answer_with_the_next_event(start_gateway, broker_args,
                                                                  request):
    gateway = start_gateway(*broker_args)
    [last] = publish_all(gateway, "held", ["before"])
    redis = request.getfixturevalue("redis_db").client if broker_args else None
    before = command_calls(redis) if redis else {}

    async def polls_then_publish() -> list:
        tasks = [asyncio.ensure_future(fetch(gateway.port, poll_target("held", last, 20), {},
                                             lambda body: False)) for _ in range(POLLERS)]

        def held() -> bool:
            early = [task.result() for task in tasks if task.done()]
            assert not early, f"{len(early)} polls answered before any event: {early[0]}"
            return requests.get(gateway.url + "/healthz", timeout=5).json()["subscribers"] \
                == POLLERS

        await asyncio.to_thread(wait_until, held, 30, 0.05, "every poll to be held")
        [event_id] = await asyncio.to_thread(publish_all, gateway, "held", ["next"])
        done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} polls never answered"
        return [event_id, [task.result() for task in tasks]]

    event_id, results = run_async(polls_then_publish())

    assert tally(results) == {200: POLLERS}
    for _, body in results:
        answer = json.loads(body)
        assert answer["events"] == [{"event": "message", "data": "next", "id": event_id}]
        assert answer["lastEventId"] == event_id
    if redis:
        # The polls that found nothing in history shared their reads too.
        assert calls_since(redis, before, "xrange") <= POLLERS // 40


# -- the broker's history reads, in process -----------------------------------------------------


IN_PROCESS = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import json, sys
    import gevent
    from gateway import Publisher
    from gateway.brokers.redis import RedisBroker
    from gateway.ids import parse_id, format_id

    url = sys.argv[1]
    broker = RedisBroker(url, history_length=1000)
    broker.start(lambda message: None)
    assert broker.wait_ready(10)
    publisher = Publisher(url)
    ids = [parse_id(publisher.publish("c", f"n{n}")["id"]) for n in range(10)]
    broker.subscribe("c")
    out = {}

    def datas(history):
        return [m.data for m in history.messages]

    # At most `limit` events; continuing from the last of them gives the rest, once.
    first = broker.history({"c": ids[0]}, limit=4)["c"]
    after = first.messages[-1].event_id
    rest = broker.history({"c": after}, limit=100)["c"]
    out["pages"] = [datas(first), datas(rest), first.gap, rest.gap]

    # 500 greenlets resuming from the same id, and 500 from later ids: one Redis read for all.
    reads = broker._reads.reads
    results = []

    def resume(position, limit):
        history = broker.history({"c": position}, limit=limit)["c"]
        results.append((format_id(position), datas(history)))

    greenlets = [gevent.spawn(resume, ids[2], None) for _ in range(500)]
    greenlets += [gevent.spawn(resume, ids[5 + n % 4], 2) for n in range(500)]
    gevent.joinall(greenlets, timeout=30)
    out["reads"] = broker._reads.reads - reads
    out["answers"] = sorted({(position, tuple(d)) for position, d in results})
    out["count"] = len(results)
    out["ids"] = [format_id(i) for i in ids]
    # A read does not answer after the channel moved on: a new event forces a new read.
    publisher.publish("c", "n10")
    newest = parse_id(publisher.publish("c", "n11")["id"])
    while broker._channels["c"] < newest:
        gevent.sleep(0.01)
    out["after_publish"] = datas(broker.history({"c": ids[8]})["c"])
    print(json.dumps(out))
    broker.stop()
""")


def test_history_reads_are_bounded_by_their_limit_and_shared_by_concurrent_requests(redis_db):
    result = subprocess.run([sys.executable, "-c", IN_PROCESS, redis_db.url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["pages"] == [["n1", "n2", "n3", "n4"], [f"n{n}" for n in range(5, 10)],
                            False, False]
    assert out["count"] == 1000
    assert out["reads"] == 1
    ids = out["ids"]
    # One answer per position, the same for everyone at it: the events after it, at most 2
    # for those that asked for 2.
    assert sorted(map(tuple, (a for a in out["answers"]))) == sorted([
        (ids[2], [f"n{n}" for n in range(3, 10)]),
        (ids[5], ["n6", "n7"]), (ids[6], ["n7", "n8"]), (ids[7], ["n8", "n9"]),
        (ids[8], ["n9"])])
    assert out["after_publish"] == ["n9", "n10", "n11"]


def test_waiters_of_a_read_the_channel_moved_past_share_the_next_read_not_one_each():
    """In process, with a scripted reader: while the first read is in flight, the channel
    gets a new event; those waiting for it then wait for one more read, not read each."""
    from gateway.brokers.shared_reads import ChannelRead, SharedReads
    from gateway.ids import HistoryBounds
    from gateway.message import Message

    history = [Message("c", "one", event_id=(1, 0))]
    delivered = {"c": (1, 0)}
    calls = []

    def read(positions, limit):
        calls.append(dict(positions))
        snapshot = list(history)
        gevent.sleep(0.01)  # in flight, as a Redis round trip is
        last = snapshot[-1].event_id
        return {"c": ChannelRead(snapshot, [], True, HistoryBounds(True, (1, 0), last))}

    reads = SharedReads(read, delivered.get)
    answers = []
    greenlets = [gevent.spawn(lambda: answers.append(reads.history({"c": (0, 0)})))
                 for _ in range(100)]
    gevent.sleep(0.001)  # every request waits for the first read now
    history.append(Message("c", "two", event_id=(2, 0)))
    delivered["c"] = (2, 0)  # the broker delivered it: the read in flight is stale
    gevent.joinall(greenlets, timeout=5)

    assert len(calls) == 2
    datas = [[m.data for m in histories["c"].messages] for histories, _ in answers]
    assert datas[0] == ["one"]  # the first read answers the request that made it
    assert datas[1:] == [["one", "two"]] * 99


# -- the pool's turns ---------------------------------------------------------------------------


def test_slots_are_handed_to_waiters_in_arrival_order_and_newcomers_queue_behind():
    slots = Slots(1)
    order = []

    def use(name: str) -> None:
        with slots.hold(5):
            order.append(name)
            gevent.sleep(0.001)

    assert slots.acquire(1)
    waiters = [gevent.spawn(use, name) for name in "abc"]
    gevent.sleep(0)  # all three wait now
    slots.release()
    # A newcomer right after the release finds the slot handed to "a" already, though "a"
    # has not run yet: it cannot take it, and waits behind "c".
    assert slots.acquire(0) is False
    late = gevent.spawn(use, "late")
    gevent.joinall([*waiters, late], timeout=5)
    assert order == ["a", "b", "c", "late"]
    assert (slots.free, slots.waiting) == (1, 0)


def test_a_wait_for_a_slot_is_bounded_and_gives_its_place_up():
    slots = Slots(1)
    assert slots.acquire(1)
    with pytest.raises(NoSlot, match="none of 1 became free within 0.05 s"):
        with slots.hold(0.05):
            pass
    assert slots.waiting == 0
    slots.release()
    assert (slots.free, slots.waiting) == (1, 0)
    assert slots.acquire(1)
    killed = gevent.spawn(slots.acquire, 5)
    gevent.sleep(0)
    assert slots.waiting == 1
    killed.kill()
    assert slots.waiting == 0
    slots.release()
    assert (slots.free, slots.waiting) == (1, 0)
