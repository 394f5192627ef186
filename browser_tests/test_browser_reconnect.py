"""Connection management seen from a page: resume across a gateway restart, close(), a 204, and
backoff while the connection fails."""

from __future__ import annotations

import json
import signal
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway import Publisher

from .support import POLYFILL_TRANSPORTS, TRANSPORTS, wait_until

CHANNEL = "reconnect"


def resume_id(request):
    """The last event id a request carried: query parameter (polyfill) or header (native)."""
    query = parse_qs(urlsplit(request.url).query)
    return query.get("lastEventId", [None])[0] or request.all_headers().get("last-event-id")


def subscriptions(harness, base: str):
    """The page's requests for CHANNEL to the server at `base`, as a stream or a long-poll."""
    return [r for r in harness.requests_to(base)
            if urlsplit(r.url).path.endswith((f"/events/{CHANNEL}", f"/poll/{CHANNEL}"))]


@pytest.mark.parametrize("transport, sig", [
    *((name, signal.SIGTERM) for name in TRANSPORTS),
    # Killed outright: the response ends without its last chunk, a network error to the page.
    ("native", signal.SIGKILL), ("xhr-stream", signal.SIGKILL), ("xhr-poll", signal.SIGKILL),
])
def test_after_a_gateway_restart_the_page_resumes_from_its_last_id_and_misses_nothing(
        transport, sig, redis_db, pinned_gateways, open_harness, publisher):
    args = ["--redis-url", redis_db.url, "--retry", "500", "--heartbeat", "2"]
    first = pinned_gateways(args)
    harness = open_harness(first.url, transport)
    url = harness.events_url(CHANNEL)
    harness.listen(url, transport)
    harness.wait_open()
    before = [publisher(first).publish(CHANNEL, f"before {i}") for i in range(3)]
    harness.wait_received(3)

    first.stop(sig)
    # Published while no gateway runs: straight into Redis (history and pub/sub) with the API.
    redis_publisher = Publisher(redis_db.url)
    down = [redis_publisher.publish(CHANNEL, f"while down {i}")["id"] for i in range(3)]
    harness.wait("() => window.errors.length >= 1")

    second = pinned_gateways(args, port=first.port)
    after = [publisher(second).publish(CHANNEL, f"after {i}") for i in range(3)]
    got = harness.wait_received(9, timeout=30)
    harness.observe(0.3)  # a duplicate would arrive within this
    got = harness.received()
    assert [e["data"] for e in got] == (
        [f"before {i}" for i in range(3)] + [f"while down {i}" for i in range(3)]
        + [f"after {i}" for i in range(3)])
    assert [e["lastEventId"] for e in got] == before + down + after
    assert all(e["type"] == "message" for e in got)  # no gateway-reset
    assert harness.ready_state() == 1
    assert harness.errors() and set(harness.errors()) == {0}  # CONNECTING while it retried
    assert harness.opens() == [1, 1]
    assert before[-1] in [resume_id(r) for r in subscriptions(harness, first.url)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_after_a_restart_that_lost_history_the_page_gets_gateway_reset_then_live_events(
        transport, pinned_gateways, open_harness, publisher):
    # The embedded broker keeps history in memory: a new process has none.
    args = ["--retry", "500"]
    first = pinned_gateways(args)
    harness = open_harness(first.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport)
    harness.wait_open()
    before = publisher(first).publish(CHANNEL, "before")
    harness.wait_received(1)
    first.stop()
    harness.wait("() => window.errors.length >= 1")
    second = pinned_gateways(args, port=first.port)
    harness.wait("() => window.opens.length >= 2", timeout=30)
    after = publisher(second).publish(CHANNEL, "after")
    got = harness.wait_received(3)
    assert [(e["type"], e["lastEventId"]) for e in got] == [
        ("message", before), ("gateway-reset", got[1]["lastEventId"]), ("message", after)]
    assert json.loads(got[1]["data"]) == {"channels": [CHANNEL], "reason": "history-lost"}
    assert got[2]["data"] == "after"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_stops_all_network_activity(
        transport, pinned_gateways, open_harness, publisher):
    # Short holds and heartbeats: a source still alive would poll or be noticed within the wait.
    gateway = pinned_gateways(["--poll-timeout", "1", "--heartbeat", "1"])
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport)
    harness.wait_open()
    pub = publisher(gateway)
    pub.publish(CHANNEL, "before close")
    harness.wait_received(1)

    harness.page.evaluate("() => window.source.close()")
    # The page reports its requests in the order it makes them, and before the answer to this
    # evaluate: any request from here on was made after close().
    made_before = len(harness.requests)
    assert harness.ready_state() == 2
    for i in range(3):
        pub.publish(CHANNEL, f"after close {i}")
    harness.observe(1.5)
    assert [r.url for r in harness.requests[made_before:]] == []
    if transport != "jsonp-poll":  # a script element's request cannot be cancelled
        last = harness.requests_to(gateway.url)[-1]
        assert last.failure is not None and "ABORTED" in last.failure, (last.url, last.failure)
    assert [e["data"] for e in harness.received()] == ["before close"]
    assert harness.errors() == []
    assert harness.ready_state() == 2
    # The gateway saw the connection go (a held long-poll ends within its 1 s hold).
    wait_until(lambda: gateway.health()["subscribers"] == 0, 10,
               message="the gateway to have no subscriber left")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_204_closes_the_source_for_good(transport, shared_gateway, open_harness, other_origin):
    # A good first answer sets a 100 ms retry, so that a wrongful retry after the 204 that follows
    # would come within a second (the polyfill waits at least 500 ms, doubled per failure).
    prefix = f"/gone/{uuid.uuid4().hex}/"
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/{CHANNEL}", transport)
    harness.wait("() => window.source.readyState == 2")
    harness.observe(1.6)
    assert [hit.status for hit in other_origin.hits_under(prefix)] == [200, 204]
    assert harness.errors()[-1:] == [2]
    assert harness.opens() == [1]
    assert harness.received() == []


@pytest.mark.parametrize("transport", POLYFILL_TRANSPORTS)
def test_backoff_between_attempts_grows_while_the_connection_fails(
        transport, shared_gateway, open_harness, other_origin):
    # The first answer is good and sets a 100 ms retry (the polyfill waits at least 500 ms);
    # every later request is dropped unanswered, a network error. The first wait is the retry
    # time; each later one doubles it, with up to 50% jitter.
    prefix = f"/broken/{uuid.uuid4().hex}/"
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/{CHANNEL}", transport)

    def backoff_gaps():
        hits = other_origin.hits_under(prefix)
        return [b.at - a.at for a, b in zip(hits, hits[1:]) if a.kind != "poll"]

    gaps = wait_until(lambda: len(backoff_gaps()) >= 3 and backoff_gaps(), 20,
                      message="three attempts after failures")[:3]
    # The retry time, raised to the 500 ms floor, with no jitter; a loaded machine adds to it,
    # and a doubled wait would take 1 s or more.
    assert 0.45 <= gaps[0] < 0.95, gaps
    # Then 1 s and 2 s at least (timers never fire early; load only adds).
    assert gaps[1] >= 0.95 and gaps[2] >= 1.95, gaps
    assert harness.opens() == [1]
    errors = harness.errors()
    assert len(errors) >= 3 and set(errors) == {0}, errors
    assert harness.ready_state() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_in_an_error_listener_stops_reconnection(
        transport, shared_gateway, open_harness, other_origin):
    # The first answer is good (a stream that then ends, or a long-poll answer); then 503s.
    prefix = f"/flaky/{uuid.uuid4().hex}/"
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/{CHANNEL}", transport,
                   then="source.addEventListener('error', function () { source.close(); });")
    harness.wait("() => window.errors.length >= 1")
    made = len(other_origin.hits_under(prefix))
    harness.observe(1)  # a retry (500 to 750 ms later) would be under way within this
    assert len(other_origin.hits_under(prefix)) == made
    assert harness.errors() == [0]  # CONNECTING when it fired; close() made it CLOSED
    assert harness.ready_state() == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_event_is_dispatched_after_close_in_a_message_listener(
        transport, shared_gateway, open_harness, publisher):
    name = "close-in-listener-" + uuid.uuid4().hex[:8]
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(harness.events_url(name), transport,
                   then="source.addEventListener('message', function () { source.close(); });")
    harness.wait_open()
    pub = publisher(shared_gateway)
    for i in range(5):  # a burst: most likely several in one chunk or one long-poll answer
        pub.publish(name, f"burst {i}")
    harness.wait_received(1)
    harness.observe(0.5)
    assert [e["data"] for e in harness.received()] == ["burst 0"]
    assert harness.ready_state() == 2
    assert harness.errors() == []


@pytest.mark.parametrize("transport", ["xhr-stream", "xdr-stream"])
def test_a_silent_stream_is_dropped_after_the_heartbeat_timeout_and_resumed(
        transport, pinned_gateways, open_harness, publisher):
    gateway = pinned_gateways(["--heartbeat", "20", "--retry", "500"])
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport, heartbeatTimeout=1000)
    harness.wait_open()
    first = publisher(gateway).publish(CHANNEL, "first")
    harness.wait_received(1)
    # No byte for a second: the request is dropped (error) and a new one resumes.
    harness.wait("() => window.errors.length >= 1 && window.opens.length >= 2", timeout=10)
    second = publisher(gateway).publish(CHANNEL, "second")
    got = harness.wait_received(2)
    assert [(e["data"], e["lastEventId"]) for e in got] == [("first", first), ("second", second)]
    streams = harness.requests_to(harness.events_url(CHANNEL))
    assert f"lastEventId={first}" in streams[1].url


@pytest.mark.parametrize("transport", [
    "xhr-stream", "xdr-stream", "xhr-poll", "jsonp-poll",
])
def test_an_idle_connection_stays_open_when_heartbeat_timeout_exceeds_the_gateway_heartbeat(
        transport, pinned_gateways, open_harness):
    # Keep-alive comments every 0.3 s, a 1.2 s heartbeat timeout, and a 5 s long-poll hold.
    gateway = pinned_gateways(["--heartbeat", "0.3", "--poll-timeout", "5"])
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport, heartbeatTimeout=1200)
    harness.wait_open()
    harness.observe(2.5)  # more than twice the heartbeat timeout
    assert harness.errors() == []
    assert harness.opens() == [1]
    assert harness.ready_state() == 1


@pytest.mark.parametrize("transport", POLYFILL_TRANSPORTS)
def test_the_last_event_id_param_option_names_the_resume_parameter(
        transport, pinned_gateways, open_harness, publisher):
    # Streams resume on rotation (every second here); long-polls with every poll.
    gateway = pinned_gateways(["--rotate-seconds", "1"])
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport, lastEventIdParam="evs_last_event_id")
    harness.wait_open()
    pub = publisher(gateway)
    first = pub.publish(CHANNEL, "first")
    harness.wait_received(1)
    resumed = harness.wait_requests(
        gateway.url, 1, timeout=10, where=lambda r: f"evs_last_event_id={first}" in r.url)
    second = pub.publish(CHANNEL, "second")
    got = harness.wait_received(2)
    harness.observe(0.3)  # a duplicate would arrive within this
    assert [e["lastEventId"] for e in harness.received()] == [first, second]
    assert got[1]["data"] == "second"
    assert resumed and not any("lastEventId=" in r.url for r in harness.requests)


@pytest.mark.parametrize("transport", ["native", "xhr-stream", "xhr-poll"])
def test_a_4xx_from_the_gateway_closes_the_source(transport, shared_gateway, open_harness):
    # An invalid channel name: 400. (XDomainRequest and JSONP cannot see a status: they retry.)
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{shared_gateway.url}/events/not!valid", transport)
    harness.wait("() => window.source.readyState == 2")
    harness.observe(1)  # a retry would be under way within this
    assert len(harness.requests_to(f"{shared_gateway.url}/events/")
               + harness.requests_to(f"{shared_gateway.url}/poll/")) == 1
    assert harness.errors() == [2]
    assert harness.opens() == []


@pytest.mark.parametrize("transport", ["native", "xhr-stream", "xdr-stream"])
def test_an_event_cut_off_by_the_end_of_the_stream_is_not_dispatched(
        transport, shared_gateway, open_harness, other_origin):
    # The first answer holds a complete event and an unfinished one, then ends; the next is 204.
    prefix = f"/partial/{uuid.uuid4().hex}/"
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/{CHANNEL}", transport)
    harness.wait("() => window.source.readyState == 2")
    assert [(e["data"], e["lastEventId"]) for e in harness.received()] == [("complete", "1")]
    assert [hit.status for hit in other_origin.hits_under(prefix)] == [200, 204]
    # The reconnection resumed from the complete event's id, not the unfinished one's.
    assert resume_id(subscriptions(harness, other_origin.origin)[-1]) == "1"
