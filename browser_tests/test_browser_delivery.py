"""What a page receives through each transport, on both brokers: named events, multi-line and
unicode data, a burst of 1,000 events, several channels on one connection."""

from __future__ import annotations

import pytest

from .support import TRANSPORTS

UNICODE = "héllo wörld, 你好, Привет, emoji 😀👍🏽, math ∑∞, rtl עברית, line sep \u2028 end"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_named_multiline_and_unicode_events_arrive_intact(
        transport, any_gateway, channel, open_harness, publisher):
    gateway = any_gateway
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(channel), transport, types=["greet", "ünïcode"])
    harness.wait_open()
    pub = publisher(gateway)
    ids = [
        pub.publish(channel, "plain"),
        pub.publish(channel, "hi there", event="greet"),
        pub.publish(channel, "line one\nline two\n\nline four", event="greet"),
        pub.publish(channel, UNICODE, event="ünïcode"),
        pub.publish(channel, {"nested": ["json", 1, None]}, id="order-42"),
    ]
    got = harness.wait_received(len(ids))
    assert [(e["type"], e["data"]) for e in got] == [
        ("message", "plain"),
        ("greet", "hi there"),
        ("greet", "line one\nline two\n\nline four"),
        ("ünïcode", UNICODE),
        ("message", '{"nested":["json",1,null]}'),
    ]
    assert [e["lastEventId"] for e in got] == ids[:4] + [ids[4] + " order-42"]
    assert {e["origin"] for e in got} == {gateway.url}
    assert harness.opens() == [1]
    assert harness.errors() == []


@pytest.mark.parametrize("transport", [
    *TRANSPORTS,
])
def test_carriage_returns_in_data_arrive_as_line_feeds(
        transport, shared_gateway, channel, open_harness, publisher):
    gateway = shared_gateway
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(channel), transport)
    harness.wait_open()
    publisher(gateway).publish(channel, "crlf\r\nand cr\ralone\nand lf")
    (event,) = harness.wait_received(1)
    assert event["data"] == "crlf\nand cr\nalone\nand lf"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_burst_of_1000_events_arrives_complete_and_in_order(
        transport, any_gateway, channel, open_harness, publisher):
    gateway = any_gateway
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(channel), transport, types=["tick"])
    harness.wait_open()
    pub = publisher(gateway)
    # Multi-byte characters in every event: chunk boundaries fall inside some of them.
    ids = [pub.publish(channel, f"event {i} ✓😀", event="tick" if i % 2 else None)
           for i in range(1000)]
    got = harness.wait_received(1000, timeout=60)
    harness.observe(0.3)  # anything extra (a duplicate) would arrive within this
    got = harness.received()
    assert len(got) == 1000
    assert [e["data"] for e in got] == [f"event {i} ✓😀" for i in range(1000)]
    assert [e["type"] for e in got] == ["tick" if i % 2 else "message" for i in range(1000)]
    assert [e["lastEventId"] for e in got] == ids
    assert harness.opens() == [1]
    assert harness.errors() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_several_channels_on_one_connection_arrive_in_publish_order(
        transport, any_gateway, channel, open_harness, publisher):
    gateway = any_gateway
    harness = open_harness(gateway.url, transport)
    news, chat = f"{channel}-news", f"{channel}-chat"
    harness.listen(f"{gateway.url}/events?channel={news}&channel={chat}", transport)
    harness.wait_open()
    pub = publisher(gateway)
    sent = [(name, f"{name} {i}", pub.publish(name, f"{name} {i}"))
            for i in range(5) for name in (news, chat)]
    got = harness.wait_received(len(sent))
    assert [e["data"] for e in got] == [data for _, data, _ in sent]
    # The last event id is the cursor of both channels, as the gateway documents it.
    for event, (name, _, event_id) in zip(got, sent):
        assert f"{name}={event_id}" in event["lastEventId"].split(","), event


@pytest.mark.parametrize("transport", ["xhr-poll", "jsonp-poll"])
def test_the_poll_url_option_is_used_and_batches_join_without_gap_or_repeat(
        transport, shared_gateway, channel, open_harness, publisher):
    gateway = shared_gateway
    harness = open_harness(gateway.url, transport)
    # One event per answer: a burst of 20 is read over 20 polls.
    harness.listen(harness.events_url(channel), transport,
                   pollUrl=f"{gateway.url}/poll/{channel}?batch=1")
    harness.wait_open()
    pub = publisher(gateway)
    ids = [pub.publish(channel, f"batch {i}") for i in range(20)]
    got = harness.wait_received(20)
    harness.observe(0.3)  # a duplicate would arrive within this
    got = harness.received()
    assert [e["data"] for e in got] == [f"batch {i}" for i in range(20)]
    assert [e["lastEventId"] for e in got] == ids
    polls = harness.requests_to(f"{gateway.url}/poll/{channel}?batch=1")
    assert len(polls) >= 20
    assert not harness.requests_to(f"{gateway.url}/events")
