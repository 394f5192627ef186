"""The polyfill against the WHATWG EventSource processing model, rule by rule, beside the
browser's own EventSource wherever the rule shows there too. Scripted endpoints of the page
servers (support.SCRIPTED) play the server; the page is on `page_origin`, so an endpoint there is
same-origin and one on `other_origin` is cross-origin.
https://html.spec.whatwg.org/multipage/server-sent-events.html"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from .support import TRANSPORTS, UNICODE_ID

STREAMS = ["native", "xhr-stream", "xdr-stream"]
#: XMLHttpRequest transports can send headers: same-origin they send what a browser sends.
HEADER_SENDERS = ["native", "xhr-stream", "xhr-poll"]


def scripted(server, name: str) -> str:
    """A fresh key of the scripted endpoint `name` on `server`: the URL prefix of its hits."""
    return f"/{name}/{uuid.uuid4().hex}/"


def query_param(hit, name: str):
    return parse_qs(urlsplit(hit.path).query).get(name, [None])[0]


def record_event_objects(events=("open", "message", "error")) -> str:
    """`then` script: window.kinds gets, for each event, what kind of object it is."""
    return (
        "window.kinds = [];"
        f"{list(events)!r}.forEach(function (type) {{"
        " source.addEventListener(type, function (e) { window.kinds.push({type: e.type,"
        " cls: Object.prototype.toString.call(e), isEvent: e instanceof Event,"
        " target: e.target === source, currentTarget: e.currentTarget === source,"
        " thisIsSource: this === source}); }); });")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_events_are_real_event_and_message_event_objects_targeted_at_the_source(
        transport, shared_gateway, open_harness, other_origin):
    # One complete event in a stream cut off (or a long-poll answer), then a 204: open, message,
    # then error (a stream's end, then the 204; a long-poll polls again at once, silently).
    prefix = scripted(other_origin, "partial")
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/x", transport,
                   then=record_event_objects())
    harness.wait("() => window.source.readyState == 2")
    kinds = harness.page.evaluate("() => window.kinds")
    errors = 1 if transport.endswith("-poll") else 2
    assert [k["type"] for k in kinds] == ["open", "message"] + ["error"] * errors
    assert [k["cls"] for k in kinds] == (
        ["[object Event]", "[object MessageEvent]"] + ["[object Event]"] * errors)
    assert all(k["isEvent"] and k["target"] and k["currentTarget"] and k["thisIsSource"]
               for k in kinds), kinds
    (message,) = harness.received()
    assert (message["data"], message["lastEventId"], message["origin"]) == (
        "complete", "1", other_origin.origin)


@pytest.mark.parametrize("transport", STREAMS)
def test_only_one_leading_byte_order_mark_is_ignored(
        transport, shared_gateway, open_harness, other_origin):
    # The browser's UTF-8 decoder removes the first; the second starts the field "\ufeffdata".
    prefix = scripted(other_origin, "bom")
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/x", transport)
    harness.wait("() => window.source.readyState == 2")
    assert [e["data"] for e in harness.received()] == ["shown"]


@pytest.mark.parametrize("transport", HEADER_SENDERS)
def test_a_last_event_id_outside_latin_1_is_sent_as_utf_8_and_the_source_reconnects(
        transport, shared_gateway, open_harness, page_origin):
    # Same origin, so that the XHR transports send Last-Event-ID as a header too.
    prefix = scripted(page_origin, "unicode-id")
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{page_origin.origin}{prefix}events/x", transport)
    harness.wait("() => window.source.readyState == 2")  # the 204 that answers the reconnection
    first, second = page_origin.hits_under(prefix)
    assert (first.status, second.status) == (200, 204)
    assert second.headers["last-event-id"].encode("latin-1").decode("utf-8") == UNICODE_ID
    if transport != "native":
        assert query_param(second, "lastEventId") == UNICODE_ID
    assert [(e["data"], e["lastEventId"]) for e in harness.received()] == [("one", UNICODE_ID)]
    # A stream's end is an error; a long-poll polls again at once.
    assert harness.errors() == ([2] if transport == "xhr-poll" else [0, 2])


@pytest.mark.parametrize("transport", HEADER_SENDERS)
def test_cache_control_no_cache_is_sent_where_it_costs_no_preflight(
        transport, shared_gateway, open_harness, page_origin, other_origin):
    harness = open_harness(shared_gateway.url, transport)
    same, cross = scripted(page_origin, "gone"), scripted(other_origin, "gone")
    harness.listen(f"{page_origin.origin}{same}events/x", transport)
    harness.wait("() => window.source.readyState == 2")
    harness.listen(f"{other_origin.origin}{cross}events/x", transport)
    harness.wait("() => window.source.readyState == 2")
    same_hits, cross_hits = page_origin.hits_under(same), other_origin.hits_under(cross)
    assert [h.status for h in same_hits] == [h.status for h in cross_hits] == [200, 204]
    assert all(h.headers.get("cache-control") == "no-cache" for h in same_hits)
    # Across origins only the browser itself can add the header without a CORS preflight.
    expected = "no-cache" if transport == "native" else None
    assert all(h.headers.get("cache-control") == expected for h in cross_hits)
    assert all(h.kind != "preflight" for h in other_origin.hits_under("/"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_url_of_another_scheme_fails_the_connection_at_once(
        transport, shared_gateway, open_harness):
    harness = open_harness(shared_gateway.url, transport)
    harness.listen("ftp://127.0.0.1:9/events/x", transport)
    harness.wait("() => window.source.readyState == 2")
    harness.observe(1)  # a retry (after at least 500 ms) would be made within this
    assert harness.errors() == [2]
    assert harness.opens() == []
    assert len(harness.requests_to("ftp:")) <= 1  # the native one's single attempt


@pytest.mark.parametrize("transport", ["native", "xhr-stream"])
def test_a_url_the_url_parser_rejects_throws_a_syntax_error(
        transport, shared_gateway, open_harness):
    harness = open_harness(shared_gateway.url, transport)
    thrown = harness.page.evaluate("""(transport) => {
        var Source = transport == "native" ? EventSource : SSEGateway.EventSource;
        try { new Source("http://[/events/x", {transport: transport}); return null; }
        catch (e) { return [e.name, e instanceof DOMException]; }
    }""", transport)
    assert thrown == ["SyntaxError", True]
    harness.observe(0.5)
    assert not harness.requests_to("http://[")


@pytest.mark.parametrize("transport", HEADER_SENDERS)
def test_an_abort_the_source_did_not_start_fails_the_connection(
        transport, shared_gateway, channel, open_harness):
    # window.stop() aborts the page's requests: WHATWG "fail the connection", no reconnection.
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(harness.events_url(channel), transport)
    harness.wait_open()
    harness.wait_requests(shared_gateway.url, 2 if transport == "xhr-poll" else 1,
                          where=lambda r: channel in r.url)  # a long-poll held
    made = len(harness.requests)
    harness.page.evaluate("() => window.stop()")
    harness.wait("() => window.source.readyState == 2")
    harness.observe(1)  # a reconnection (after at least 500 ms) would be made within this
    assert harness.errors() == [2]
    assert [r.url for r in harness.requests[made:]] == []


@pytest.mark.parametrize("transport", ["native", "xhr-stream"])
def test_a_stream_answered_with_a_5xx_fails_the_connection(
        transport, shared_gateway, open_harness, other_origin):
    # A good stream that ends, then a 503 to the reconnection.
    prefix = scripted(other_origin, "flaky")
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/x", transport)
    harness.wait("() => window.source.readyState == 2")
    harness.observe(1)
    assert [h.status for h in other_origin.hits_under(prefix)] == [200, 503]
    assert harness.errors() == [0, 2]


def test_a_long_poll_answered_with_a_5xx_is_retried(shared_gateway, open_harness, other_origin):
    # Lenient by design: a long-poll is no event stream, and a 5xx there is retried.
    prefix = scripted(other_origin, "flaky")
    harness = open_harness(shared_gateway.url, "xhr-poll")
    harness.listen(f"{other_origin.origin}{prefix}events/x", "xhr-poll")
    harness.wait("() => window.errors.length >= 2", timeout=10)
    assert [h.status for h in other_origin.hits_under(prefix)][:3] == [200, 503, 503]
    assert set(harness.errors()) == {0}
    assert harness.ready_state() == 0


@pytest.mark.parametrize("transport", STREAMS)
def test_after_a_good_connection_the_reconnection_waits_exactly_the_retry_time(
        transport, shared_gateway, open_harness, other_origin):
    # Every answer is a good stream that sets a 1 s retry and ends. Math.random() is pinned near
    # its maximum, so that jitter would add about half the retry time to each wait.
    prefix = scripted(other_origin, "steady")
    harness = open_harness(shared_gateway.url, transport)
    harness.listen(f"{other_origin.origin}{prefix}events/x", transport,
                   then="Math.random = function () { return 0.999; };")
    harness.wait("() => window.errors.length >= 3", timeout=15)
    hits = other_origin.hits_under(prefix)
    gaps = [b.at - a.at for a, b in zip(hits, hits[1:])][:2]
    assert len(gaps) == 2 and all(0.95 <= gap < 1.35 for gap in gaps), gaps
    assert set(harness.errors()) == {0}
