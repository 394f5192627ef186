"""One connection shared by the pages of an origin ({shared: true}), in each engine: the gateway
sees one subscriber, every page gets every event, and when the page holding the connection goes,
another takes over and resumes, so that no page misses or repeats an event."""

from __future__ import annotations

import pytest

from .support import wait_until

PAGES = 8


def leaders(harnesses):
    """The pages holding the connection (the polyfill's leader posts what it dispatches)."""
    return [h for h in harnesses if h.page.evaluate("() => !!window.source._post")]


def test_pages_of_one_origin_share_one_connection_and_miss_nothing_when_the_leader_closes(
        engine, pinned_gateways, channel, open_engine_harness, publisher):
    gateway = pinned_gateways([])
    pages = [open_engine_harness(gateway.url) for _ in range(PAGES)]
    for harness in pages:
        harness.listen(harness.events_url(channel), "xhr-stream", shared=True)
    for harness in pages:
        harness.wait_open()
    wait_until(lambda: gateway.health()["subscribers"] == 1, 10,
               message="one subscriber for all the pages")
    pub = publisher(gateway)
    sent = [(f"first {i}", pub.publish(channel, f"first {i}")) for i in range(5)]
    for harness in pages:
        harness.wait_received(len(sent))
    (leader,) = leaders(pages)
    assert gateway.health()["subscribers"] == 1

    leader.page.close_once()
    pages.remove(leader)
    # Published while no page holds the connection: the next leader resumes from its last id.
    sent += [(f"between {i}", pub.publish(channel, f"between {i}")) for i in range(3)]
    for harness in pages:
        harness.wait_received(len(sent), timeout=15)
    sent += [(f"after {i}", pub.publish(channel, f"after {i}")) for i in range(3)]
    for harness in pages:
        harness.wait_received(len(sent))
    pages[0].observe(0.5)  # a repeat would arrive within this
    for harness in pages:
        got = harness.received()
        assert [(e["data"], e["lastEventId"]) for e in got] == sent
        assert harness.opens() == [1] and harness.errors() == []
    assert len(leaders(pages)) == 1
    wait_until(lambda: gateway.health()["subscribers"] == 1, 10,
               message="one subscriber again, the new leader's")


FALLBACKS = {
    "web-locks": (),
    "lease": ("no_locks",),
    "lease-and-storage-events": ("no_locks", "no_broadcast"),
}


def open_shared(open_harness, gateway, channel, shims, count):
    pages = [open_harness(gateway.url, shims=shims) for _ in range(count)]
    for harness in pages:
        harness.listen(harness.events_url(channel), "xhr-stream", shared=True)
    for harness in pages:
        harness.wait_open()
    return pages


def chromium_leader(pages, gateway_url):
    """The page that made a request for the stream (Chromium's network log)."""
    (leader,) = [h for h in pages if h.requests_to(f"{gateway_url}/events/")
                 and h.page.evaluate("() => !!window.source._post")]
    return leader


@pytest.mark.parametrize("shims", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_without_web_locks_or_broadcast_channel_the_pages_still_share_and_hand_over(
        shims, pinned_gateways, channel, open_harness, publisher):
    gateway = pinned_gateways([])
    pages = open_shared(open_harness, gateway, channel, shims, 4)
    wait_until(lambda: gateway.health()["subscribers"] == 1, 10, message="one subscriber")
    pub = publisher(gateway)
    sent = [(f"first {i}", pub.publish(channel, f"first {i}")) for i in range(3)]
    for harness in pages:
        harness.wait_received(len(sent))
    leader = chromium_leader(pages, gateway.url)
    leader.page.close()
    pages.remove(leader)
    sent += [(f"after {i}", pub.publish(channel, f"after {i}")) for i in range(3)]
    for harness in pages:
        harness.wait_received(len(sent), timeout=15)
    pages[0].observe(0.5)  # a repeat would arrive within this
    for harness in pages:
        assert [(e["data"], e["lastEventId"]) for e in harness.received()] == sent
        assert harness.opens() == [1] and harness.errors() == []
    wait_until(lambda: gateway.health()["subscribers"] == 1, 10, message="one subscriber again")


@pytest.mark.parametrize("shims", [(), ("no_locks",)], ids=["web-locks", "lease"])
def test_a_frozen_leader_is_replaced_and_steps_down_when_it_wakes(
        shims, pinned_gateways, channel, open_harness, publisher, context):
    gateway = pinned_gateways([])
    pages = open_shared(open_harness, gateway, channel, shims, 3)
    pub = publisher(gateway)
    sent = [("first", pub.publish(channel, "first"))]
    for harness in pages:
        harness.wait_received(1)
    leader = chromium_leader(pages, gateway.url)
    # Frozen as a page sees it: no task of it runs (timers, messages, network callbacks) until
    # it is resumed. (Page.setWebLifecycleState freezes only hidden pages.)
    cdp = context.new_cdp_session(leader.page)
    cdp.send("Debugger.enable")
    cdp.send("Debugger.pause")
    followers = [h for h in pages if h is not leader]
    sent += [(f"while frozen {i}", pub.publish(channel, f"while frozen {i}")) for i in range(3)]
    for harness in followers:
        harness.wait_received(len(sent), timeout=15)  # another page took over within seconds
    cdp.send("Debugger.resume")
    # The woken page sees a higher term and drops its connection.
    leader.wait("() => !window.source._post", timeout=10)
    sent += [("after waking", pub.publish(channel, "after waking"))]
    for harness in pages:
        harness.wait("(id) => window.received.some(function (e) { return e.lastEventId == id; })",
                     sent[-1][1])
    pages[0].observe(0.5)  # a repeat would arrive within this
    for harness in followers:
        assert [(e["data"], e["lastEventId"]) for e in harness.received()] == sent
    # The woken page missed what came while it was frozen (its stream and its messages stalled),
    # but repeats nothing and gets what follows.
    woken = [(e["data"], e["lastEventId"]) for e in leader.received()]
    assert len(set(woken)) == len(woken) and woken[0] == sent[0] and woken[-1] == sent[-1]
    wait_until(lambda: gateway.health()["subscribers"] == 1, 10, message="one subscriber again")


def test_a_follower_that_slept_does_not_take_over_from_a_live_leader(
        pinned_gateways, channel, open_harness, publisher, context):
    gateway = pinned_gateways([])
    pages = open_shared(open_harness, gateway, channel, (), 2)
    leader = chromium_leader(pages, gateway.url)
    (follower,) = [h for h in pages if h is not leader]
    # No task of the follower runs for 5 s (as in a throttled tab or a sleeping machine): its
    # timer then comes late, and it must not read the leader's silence as a failure.
    cdp = context.new_cdp_session(follower.page)
    cdp.send("Debugger.enable")
    cdp.send("Debugger.pause")
    leader.observe(5)
    cdp.send("Debugger.resume")
    follower.observe(2)
    assert not follower.page.evaluate("() => !!window.source._post")
    assert leader.page.evaluate("() => !!window.source._post")
    assert len(follower.requests_to(f"{gateway.url}/events/")) == 0
    sent = publisher(gateway).publish(channel, "still one leader")
    for harness in pages:
        assert [e["lastEventId"] for e in harness.wait_received(1)] == [sent]
