"""The polyfill's own transport choice ("auto") in a cross-origin page, for this Chromium and
for Chromium dressed up as older browsers by the shims in pages/."""

from __future__ import annotations

import pytest

EVENTS = [("greet", "hello"), ("message", "two\nlines"), ("message", "ünï😀")]


def receive_through_auto(harness, gateway, publisher, name, **options):
    harness.listen(harness.events_url(name), "auto", types=["greet"], **options)
    harness.wait_open()
    pub = publisher(gateway)
    ids = [pub.publish(name, data, event=None if kind == "message" else kind)
           for kind, data in EVENTS]
    got = harness.wait_received(len(EVENTS))
    assert [(e["type"], e["data"]) for e in got] == EVENTS
    assert [e["lastEventId"] for e in got] == ids
    assert harness.errors() == []
    return [r for r in harness.requests_to(gateway.url) if f"/{name}" in r.url]


def test_auto_uses_xhr_streaming_in_a_modern_browser(
        shared_gateway, channel, open_harness, publisher):
    harness = open_harness(shared_gateway.url, "auto")
    # The browser's own EventSource is left alone; the polyfill is only reachable by name.
    assert harness.page.evaluate("() => window.EventSource !== window.SSEGateway.EventSource")
    requests = receive_through_auto(harness, shared_gateway, publisher, channel)
    assert requests and all("transport=stream" in r.url for r in requests)
    assert {r.resource_type for r in requests} == {"xhr"}


def test_auto_uses_xdomainrequest_streaming_in_an_ie9_like_browser(
        shared_gateway, channel, open_harness, publisher):
    harness = open_harness(shared_gateway.url, "auto", shims=["xdr_shim", "legacy_xhr"])
    requests = receive_through_auto(harness, shared_gateway, publisher, channel)
    assert requests and all("transport=stream" in r.url for r in requests)
    assert harness.page.evaluate("() => window.xdrShim.opened") == len(requests)


@pytest.mark.parametrize("shims, options", [
    (["legacy_xhr"], {}),
    (["xdr_shim", "legacy_xhr"], {"withCredentials": True}),
], ids=["ie7-like", "ie9-like-with-credentials"])
def test_auto_falls_back_to_jsonp_long_polling(
        shims, options, shared_gateway, channel, open_harness, publisher):
    harness = open_harness(shared_gateway.url, "auto", shims=shims)
    requests = receive_through_auto(harness, shared_gateway, publisher, channel, **options)
    assert requests and all("/poll/" in r.url and "callback=" in r.url for r in requests)
    assert {r.resource_type for r in requests} == {"script"}
    if "xdr_shim" in shims:
        assert harness.page.evaluate("() => window.xdrShim.opened") == 0
    # Each callback is removed once used (the one of the poll still held stays).
    assert harness.page.evaluate(
        "() => Object.keys(window).filter(k => k.indexOf('__sseg_cb_') == 0).length") <= 1


def test_forcing_a_transport_the_browser_lacks_fails_the_connection(
        shared_gateway, channel, open_harness):
    # No XDomainRequest here (no shim): the source closes at once and requests nothing.
    harness = open_harness(shared_gateway.url)
    harness.listen(harness.events_url(channel), "xdr-stream")
    harness.wait("() => window.source.readyState == 2")
    harness.observe(0.5)
    assert harness.errors() == [2]
    assert harness.opens() == []
    assert not harness.requests_to(f"{shared_gateway.url}/events")
