"""Credentialed subscriptions: a gateway with `--cors-origin` lets the listed page origin
subscribe with cookies, and gives every other origin nothing to read."""

from __future__ import annotations

import pytest

from .support import PinnedGateway, free_port

COOKIE = {"name": "gateway_session", "value": "s3cret-42"}


@pytest.fixture(scope="module")
def allowlisting_gateway(page_origin):
    """A gateway that allows credentials from the primary page origin only."""
    gateway = PinnedGateway(free_port(), ["--cors-origin", page_origin.origin])
    try:
        yield gateway
    finally:
        gateway.cleanup()


@pytest.fixture
def gateway(allowlisting_gateway, context):
    """The allowlisting gateway, with its session cookie in the test's browser context."""
    context.add_cookies([{**COOKIE, "url": allowlisting_gateway.url}])
    return allowlisting_gateway


def subscription_requests(harness, name: str, answered: bool = False):
    """The page's requests for `name`; only those already answered if `answered` (the request
    headers that include cookies are known then: a held long-poll is answered later)."""
    made = harness.answered if answered else harness.requests
    return [r for r in made if r.url.startswith(harness.gateway_url)
            and (f"/events/{name}" in r.url or f"/poll/{name}" in r.url)]


@pytest.mark.parametrize("transport", ["native", "xhr-stream", "xhr-poll", "jsonp-poll"])
def test_an_allowlisted_origin_subscribes_with_cookies_and_receives_events(
        transport, gateway, channel, open_harness, publisher):
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(channel), transport, types=["private"], withCredentials=True)
    harness.wait_open()
    assert harness.page.evaluate("() => window.source.withCredentials") is True
    pub = publisher(gateway)
    ids = [pub.publish(channel, "for your eyes", event="private"),
           pub.publish(channel, "only ✓")]
    got = harness.wait_received(2)
    assert [(e["type"], e["data"], e["lastEventId"]) for e in got] == [
        ("private", "for your eyes", ids[0]), ("message", "only ✓", ids[1])]
    assert harness.errors() == []
    cookies = [r.all_headers().get("cookie", "")
               for r in subscription_requests(harness, channel, answered=True)]
    assert cookies and all("gateway_session=s3cret-42" in c for c in cookies), cookies


@pytest.mark.parametrize("transport", ["native", "xhr-stream", "xhr-poll", "xdr-stream"])
def test_without_with_credentials_no_cookie_is_sent_across_origins(
        transport, gateway, channel, open_harness, publisher):
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(channel), transport)
    harness.wait_open()
    publisher(gateway).publish(channel, "public")
    assert [e["data"] for e in harness.wait_received(1)] == ["public"]
    requests = subscription_requests(harness, channel, answered=True)
    assert requests and all("cookie" not in r.all_headers() for r in requests)


@pytest.mark.parametrize("transport, credentials", [
    ("native", True), ("native", False), ("xhr-stream", True), ("xhr-poll", True),
    ("xdr-stream", False),
])
def test_an_origin_not_allowlisted_receives_nothing(
        transport, credentials, gateway, channel, open_harness, other_origin, publisher):
    harness = open_harness(gateway.url, transport, origin=other_origin)
    options = {"withCredentials": True} if credentials else {}
    harness.listen(harness.events_url(channel), transport, **options)
    harness.wait("() => window.errors.length >= 1")
    pub = publisher(gateway)
    for i in range(3):
        pub.publish(channel, f"not for {other_origin.origin} {i}")
    harness.observe(1.5)
    assert harness.received() == []
    assert harness.opens() == []
    # The gateway did answer; the browser refused to show the answer to this origin.
    assert subscription_requests(harness, channel)
