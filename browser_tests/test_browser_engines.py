"""Delivery and resume in each engine: Chromium, Firefox ESR and WebKitGTK (the `engine`
fixture), with the browser's own EventSource and with the polyfill forced."""

from __future__ import annotations

import signal

import pytest

from gateway import Publisher

UNICODE = "héllo wörld, 你好, emoji 😀👍🏽, rtl עברית, line sep \u2028 end"


@pytest.mark.parametrize("transport", ["native", "xhr-stream", "jsonp-poll"])
def test_named_multiline_and_unicode_events_arrive_intact_in_each_engine(
        engine, transport, shared_gateway, channel, open_engine_harness, publisher):
    harness = open_engine_harness(shared_gateway.url)
    harness.listen(harness.events_url(channel), transport, types=["greet"])
    harness.wait_open()
    pub = publisher(shared_gateway)
    ids = [pub.publish(channel, "plain"),
           pub.publish(channel, "line one\nline two\n\nline four", event="greet"),
           pub.publish(channel, UNICODE)]
    got = harness.wait_received(3)
    assert [(e["type"], e["data"], e["lastEventId"]) for e in got] == [
        ("message", "plain", ids[0]), ("greet", "line one\nline two\n\nline four", ids[1]),
        ("message", UNICODE, ids[2])]
    assert {e["origin"] for e in got} == {shared_gateway.url}
    assert harness.opens() == [1]
    assert harness.errors() == []


@pytest.mark.parametrize("transport", ["native", "xhr-stream"])
def test_after_a_gateway_restart_each_engine_resumes_from_its_last_id(
        engine, transport, redis_db, pinned_gateways, open_engine_harness, publisher):
    # Firefox's own EventSource gives up for good when a reconnection is refused (the README's
    # browser table says so): for it the gateway is killed and back before the 6 s retry is up.
    # The polyfill reconnects every 500 ms and is refused until the new gateway listens.
    retry = "6000" if transport == "native" else "500"
    args = ["--redis-url", redis_db.url, "--retry", retry, "--heartbeat", "2"]
    first = pinned_gateways(args)
    harness = open_engine_harness(first.url)
    channel = f"resume-{engine.name}"
    harness.listen(harness.events_url(channel), transport)
    harness.wait_open()
    before = [publisher(first).publish(channel, f"before {i}") for i in range(2)]
    harness.wait_received(2)
    first.stop(signal.SIGKILL)
    down = [Publisher(redis_db.url).publish(channel, f"while down {i}")["id"] for i in range(2)]
    harness.wait("() => window.errors.length >= 1")
    second = pinned_gateways(args, port=first.port)
    after = [publisher(second).publish(channel, f"after {i}") for i in range(2)]
    got = harness.wait_received(6, timeout=30)
    harness.observe(0.3)  # a duplicate would arrive within this
    got = harness.received()
    assert [e["lastEventId"] for e in got] == before + down + after
    assert [e["data"] for e in got] == (
        [f"before {i}" for i in range(2)] + [f"while down {i}" for i in range(2)]
        + [f"after {i}" for i in range(2)])
    assert harness.ready_state() == 1
    assert harness.opens() == [1, 1]
