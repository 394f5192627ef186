"""Private channels in a real browser: a token in the query or a cookie for the native
EventSource, the polyfill's token function on every transport, refusals that stop every
transport, and an expired token renewed with nothing lost or repeated."""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.tokens import subscribe_token

from .support import POLYFILL_TRANSPORTS, TRANSPORTS, FastPublisher, PinnedGateway, free_port

SECRET = "a-browser-test-secret-of-32-bytes-at-least"


@pytest.fixture(scope="module")
def gateway(page_origin):
    """Private `user.*`, HS256 tokens; the primary page origin may send cookies."""
    made = PinnedGateway(free_port(), ["--private-channel", "user.*", "--subscribe-key", SECRET,
                                       "--cors-origin", page_origin.origin])
    try:
        yield made
    finally:
        made.cleanup()


def token(channel: str, ttl: float = 60) -> str:
    return subscribe_token([channel], SECRET, ttl=ttl)


def subscriptions(harness, channel: str):
    return [r for r in harness.requests_to(harness.gateway_url)
            if urlsplit(r.url).path.endswith((f"/events/{channel}", f"/poll/{channel}"))]


def test_native_eventsource_subscribes_with_a_query_token(gateway, channel, open_harness,
                                                          publisher):
    private = "user." + channel
    harness = open_harness(gateway.url)
    harness.listen(f"{harness.events_url(private)}?token={token(private)}", "native")
    harness.wait_open()
    event_id = publisher(gateway).publish(private, "for you")
    assert [(e["data"], e["lastEventId"]) for e in harness.wait_received(1)] == [
        ("for you", event_id)]


def test_native_eventsource_subscribes_with_a_cookie_across_origins(
        gateway, channel, open_harness, context, publisher):
    private = "user." + channel
    context.add_cookies([{"name": "sse_gateway_token", "value": token(private),
                          "url": gateway.url}])
    harness = open_harness(gateway.url)
    harness.listen(harness.events_url(private), "native", withCredentials=True)
    harness.wait_open()
    publisher(gateway).publish(private, "by cookie")
    assert [e["data"] for e in harness.wait_received(1)] == ["by cookie"]


@pytest.mark.parametrize("transport", POLYFILL_TRANSPORTS)
def test_the_polyfill_subscribes_with_its_token_function_on_every_transport(
        transport, gateway, channel, open_harness, publisher):
    private = "user." + channel
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(private), transport, tokens=[token(private)])
    harness.wait_open()
    pub = publisher(gateway)
    ids = [pub.publish(private, f"m{i}") for i in range(3)]
    assert [(e["data"], e["lastEventId"]) for e in harness.wait_received(3)] == [
        (f"m{i}", ids[i]) for i in range(3)]
    assert harness.page.evaluate("() => window.tokenCalls") == 1
    made = subscriptions(harness, private)
    assert made and all(parse_qs(urlsplit(r.url).query).get("token") for r in made)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refusal_stops_every_transport_for_good(transport, gateway, channel, open_harness,
                                                  publisher):
    private = "user." + channel
    harness = open_harness(gateway.url, transport)
    # The token is for another user: refused (403) everywhere; no token at all would be a 401.
    harness.listen(f"{harness.events_url(private)}?token={token('user.other')}", transport)
    harness.wait("() => window.errors.length >= 1")
    publisher(gateway).publish(private, "not for this page")
    harness.observe(2)  # longer than the retry time: no request follows
    assert harness.errors() == [2] and harness.ready_state() == 2
    assert harness.received() == []
    assert len(subscriptions(harness, private)) == 1


def publish_steadily(gateway_url: str, channel: str, count: int, every: float,
                     sent: list) -> threading.Thread:
    def run() -> None:
        pub = FastPublisher(gateway_url)
        try:
            for i in range(count):
                sent.append(pub.publish(channel, f"e{i}"))
                time.sleep(every)  # the publisher's pace, not a synchronisation
        finally:
            pub.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


NATIVE_RENEWAL = """([base, tokens]) => {
  // The documented snippet: on gateway-auth-expired, a new source with a new token, resuming
  // from the last event id.
  function follow(url) {
    listen(url, "native", {}, ["gateway-auth-expired"]);
    window.source.addEventListener("gateway-auth-expired", function (e) {
      this.close();
      window.tokenCalls++;
      follow(base + "?token=" + tokens.shift() + "&lastEventId=" +
             encodeURIComponent(e.lastEventId));
    });
  }
  follow(base + "?token=" + tokens.shift());
}"""


@pytest.mark.parametrize("transport", ["native", "xhr-stream", "xdr-stream", "jsonp-poll"])
def test_an_expired_token_is_renewed_and_the_stream_resumes_with_nothing_lost_or_repeated(
        transport, gateway, channel, open_harness):
    private = "user." + channel
    harness = open_harness(gateway.url, transport)
    tokens = [token(private, ttl=2), token(private)]  # the first expires in 1-2 s
    if transport == "native":
        harness.page.evaluate(NATIVE_RENEWAL, [harness.events_url(private), tokens])
    else:
        harness.listen(harness.events_url(private), transport, types=["gateway-auth-expired"],
                       tokens=tokens)
    harness.wait_open()
    sent: list = []
    publish_steadily(gateway.url, private, 30, 0.1, sent).join(30)
    harness.wait("() => window.received.filter(e => e.type == 'message').length >= 30")
    harness.observe(0.5)  # nothing more comes: no event twice
    got = harness.received()
    messages = [(e["data"], e["lastEventId"]) for e in got if e["type"] == "message"]
    assert messages == [(f"e{i}", sent[i]) for i in range(30)]
    expiries = [e["type"] for e in got].count("gateway-auth-expired")
    if transport == "jsonp-poll":
        # A poll answered with events just before the expiry, on a loaded machine, leaves the
        # next one to arrive after it: that poll is refused, and the polyfill, whose token was
        # used before, renews it as it would on the expiry event (static_js: _event).
        assert expiries <= 1
    else:
        assert expiries == 1
    # The snippet counts its renewals; the polyfill asks for the first token too.
    assert harness.page.evaluate("() => window.tokenCalls") == (1 if transport == "native" else 2)
    assert harness.errors() == []  # the renewal is silent
