"""While Redis is down: subscribers are told to come back (never a status an EventSource treats as
final) and keep their cursor; once Redis is back, each gets exactly the events it missed.

A real redis-server is stopped and restarted by the tests. It is saved to disk first (SAVE), so
the restarted one has the history: the tests are about the gateway's outage, not Redis's data.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import pytest
import requests
from conftest import publish_all, wait_until
from sse_client import Stream, subscribed

PADDING = b":" + b" " * 2048 + b"\n"
RETRY = 1000  # the gateways' --retry; the outage hint is drawn from [RETRY, 2 * RETRY]
PROMPTLY = 5.0  # seconds: well under any hold, heartbeat or client timeout
JSONP = re.compile(r"/\*\*/cb\((.*)\);", re.DOTALL)


def health_status(gateway) -> int:
    return requests.get(gateway.url + "/healthz", timeout=10).status_code


@contextmanager
def redis_down(redis_db, gateways):
    """Redis stopped (its data saved) until the block ends; then back, and every gateway healthy."""
    redis_db.client.save()
    redis_db.stop()
    try:
        for gateway in gateways:
            wait_until(lambda g=gateway: health_status(g) == 503, 15,
                       message="/healthz to report the outage")
        yield
    finally:
        redis_db.start()
        # The next test that restarts this Redis must not load this test's data.
        try:
            os.unlink(os.path.join(redis_db.dir, "dump.rdb"))
        except FileNotFoundError:
            pass
    for gateway in gateways:
        wait_until(lambda g=gateway: health_status(g) == 200, 30,
                   message="/healthz to recover once Redis is back")


@pytest.fixture
def redis_gateway(start_gateway, redis_db):
    return start_gateway("--redis-url", redis_db.url, "--retry", str(RETRY), "--heartbeat", "1")


def assert_uncacheable(headers) -> None:
    h = {name.lower(): value for name, value in headers.items()}
    assert h["cache-control"] == "no-cache, no-store", h
    assert h["pragma"] == "no-cache", h
    assert parsedate_to_datetime(h["expires"]) < datetime.now(timezone.utc), h


def stream_url(gateway, channel: str, padded: bool, cursor: str | None) -> str:
    url = f"{gateway.url}/events/{channel}"
    query = (["transport=stream"] if padded else []) + ([f"lastEventId={cursor}"] if cursor
                                                        else [])
    return url + ("?" + "&".join(query) if query else "")


def turned_away(url: str, headers: dict[str, str] | None = None) -> Stream:
    """Open a stream during the outage; it must be a 200 event stream that ends promptly."""
    started = time.monotonic()
    stream = Stream(url, headers)
    assert stream.status == 200, stream.body
    stream.read_to_end(timeout=PROMPTLY)
    assert stream.ended, "the outage answer must end so that the client reconnects"
    assert time.monotonic() - started < PROMPTLY
    return stream


def assert_outage_stream(stream: Stream, padded: bool) -> None:
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["access-control-allow-origin"] == "*"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["connection"] == "close"
    assert int(stream.headers["content-length"]) == len(stream.body)
    assert_uncacheable(stream.headers)
    body = stream.body
    assert body.startswith(PADDING) == padded
    assert RETRY <= stream.parser.retry <= 2 * RETRY, body
    assert f": broker unavailable; reconnect in {stream.parser.retry} ms\n".encode() in body
    assert stream.events == []
    # Nothing is dispatched (no blank line) and no id is set: the client's last id stays as it was.
    assert b"\n\n" not in body and b"\r" not in body
    assert not [line for line in body.split(b"\n") if line.startswith(b"id")], body
    assert stream.parser.last_event_id == ""


def resumed_stream(gateway, channel: str, padded: bool, cursor: str, count: int) -> Stream:
    """A stream resumed from `cursor` once Redis is back, holding at least `count` events."""
    headers = None if padded else {"Last-Event-ID": cursor}
    stream = Stream(stream_url(gateway, channel, padded, cursor if padded else None), headers)
    assert stream.status == 200, stream.body
    stream.wait_for(subscribed, 10)
    stream.wait_events(count, timeout=10)
    return stream


@pytest.mark.parametrize("padded", [False, True], ids=["native", "padded"])
def test_stream_during_redis_outage_is_200_with_a_retry_hint_and_resume_gets_what_was_missed(
        redis_gateway, redis_db, padded):
    gateway = redis_gateway
    channel = "outage-stream"
    with Stream(stream_url(gateway, channel, padded, None)) as first:
        first.wait_for(subscribed, 10)
        seen = publish_all(gateway, channel, ["seen-1", "seen-2"])
        first.wait_events(2)
        cursor = first.parser.last_event_id
    assert cursor == seen[-1]
    missed = publish_all(gateway, channel, ["missed-1", "missed-2"])  # while the client is away

    with redis_down(redis_db, [gateway]):
        # The browser comes back with its last id (a header, or the query for a polyfill).
        headers = None if padded else {"Last-Event-ID": cursor}
        away = turned_away(stream_url(gateway, channel, padded, cursor if padded else None),
                           headers)
        assert_outage_stream(away, padded)
        # Several channels, and a channel nobody had subscribed: the same answer.
        several = turned_away(f"{gateway.url}/events?channel={channel}&channel=other"
                              + ("&transport=stream" if padded else ""))
        assert_outage_stream(several, padded)
        # The hints are spread, so that turned-away clients do not all come back at once.
        hints = {away.parser.retry, several.parser.retry}
        for _ in range(6):
            hints.add(turned_away(stream_url(gateway, "fresh", padded, None)).parser.retry)
        assert len(hints) > 1, hints
        # A publisher is no browser: it is told the truth.
        refused = gateway.publish(channel, {"data": "during"})
        assert refused.status_code == 503
        assert refused.json()["error"] == "broker unavailable"

    after = publish_all(gateway, channel, ["after"])
    with resumed_stream(gateway, channel, padded, cursor, 3) as resumed:
        resumed.wait_for(lambda s: s.parser.comments >= 3, 10)  # time for a duplicate to come
        assert [e.data for e in resumed.events] == ["missed-1", "missed-2", "after"]
        assert [e.last_event_id for e in resumed.events] == missed + after
        assert all(e.type == "message" for e in resumed.events)  # no gateway-reset


def poll(gateway, channel: str, callback: str | None = None,
         headers: dict[str, str] | None = None, **params) -> tuple[dict, requests.Response]:
    """One long-poll, JSON or JSONP: (its body, the response)."""
    if callback is not None:
        params["callback"] = callback
    response = requests.get(f"{gateway.url}/poll/{channel}", params=params, headers=headers,
                            timeout=60)
    assert response.status_code == 200, response.text
    assert_uncacheable(response.headers)
    if callback is None:
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        return response.json(), response
    assert response.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    wrapped = JSONP.fullmatch(response.text)
    assert wrapped, response.text
    return json.loads(wrapped.group(1)), response


@pytest.mark.parametrize("callback", [None, "cb"], ids=["json", "jsonp"])
def test_poll_during_redis_outage_is_held_briefly_and_keeps_the_cursor_then_resumes(
        redis_gateway, redis_db, callback):
    gateway = redis_gateway
    channel = "outage-poll"
    first, _ = poll(gateway, channel, callback, timeout=0)
    publish_all(gateway, channel, ["seen"])
    got, _ = poll(gateway, channel, callback, lastEventId=first["lastEventId"])
    cursor = got["lastEventId"]
    assert [e["data"] for e in got["events"]] == ["seen"]
    missed = publish_all(gateway, channel, ["missed-1", "missed-2"])

    with redis_down(redis_db, [gateway]):
        # The first poll of a connection asks for an answer at once: it gets one.
        started = time.monotonic()
        quick, _ = poll(gateway, channel, callback, lastEventId=cursor, timeout=0)
        assert time.monotonic() - started < PROMPTLY
        assert quick["events"] == [] and quick["lastEventId"] == cursor
        assert RETRY <= quick["retry"] <= 2 * RETRY
        # A held poll (the default hold is 25 s) is answered after about the retry time, so a
        # client that polls again at once does not poll in a tight loop; the cursor comes back
        # as sent, here in the Last-Event-ID header.
        started = time.monotonic()
        held, _ = poll(gateway, channel, callback, {"Last-Event-ID": cursor})
        took = time.monotonic() - started
        assert held["events"] == [] and held["lastEventId"] == cursor
        assert RETRY <= held["retry"] <= 2 * RETRY
        assert held["retry"] / 1000 <= took < held["retry"] / 1000 + PROMPTLY, took
        # Without a cursor there is none to give back.
        fresh, _ = poll(gateway, "fresh", callback, timeout=0)
        assert fresh["events"] == [] and fresh["lastEventId"] == ""

    after = publish_all(gateway, channel, ["after"])
    resumed, _ = poll(gateway, channel, callback, lastEventId=cursor)
    assert [e["data"] for e in resumed["events"]] == ["missed-1", "missed-2", "after"]
    assert [e["id"] for e in resumed["events"]] == missed + after
    assert resumed["lastEventId"] == after[-1]
    assert resumed["retry"] == RETRY



def test_the_pub_sub_connection_reconnects_more_times_than_the_pool_has_connections(
        start_gateway, redis_db):
    # Each reconnect makes a new pub/sub connection; none may count against the URL's pool size.
    gateway = start_gateway("--redis-url", redis_db.url + "?max_connections=2")
    stream = Stream(gateway.url + "/events/often")
    try:
        stream.wait_for(subscribed)
        for cut in range(4):
            before = {c["id"] for c in redis_db.client.client_list(_type="pubsub")}
            assert len(before) == 1
            redis_db.client.client_kill_filter(_type="pubsub")
            wait_until(lambda b=before: {c["id"] for c in
                                         redis_db.client.client_list(_type="pubsub")} - b, 15,
                       message=f"the pub/sub connection to come back after cut {cut}")
            wait_until(lambda: health_status(gateway) == 200, 15, message="a healthy gateway")
            [event_id] = publish_all(gateway, "often", [f"after cut {cut}"])
            stream.wait_for(lambda s, i=event_id: s.parser.last_event_id == i, 10)
        assert [e.data for e in stream.events] == [f"after cut {n}" for n in range(4)]
    finally:
        stream.close()
