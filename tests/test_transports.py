"""The fallback transports against real gateway processes, on both brokers.

Padded streaming with rotation, long-poll JSON and JSONP, CORS, uncacheable responses and the
request limits. Every wait has a deadline; events and heartbeats are waited for, never slept for.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest
import requests
from conftest import wait_until
from sse_client import Stream, StreamClosed

from gateway.wire import ParsedEvent

PREAMBLE = b":" + b" " * 2048 + b"\n"
ROTATE = b": rotate\n\n"
KEEPALIVE = b": keepalive\n\n"
EVENT_ID = re.compile(r"^\d+-\d+$")
HTTP_TIMEOUT = 30.0
DEFAULT_RETRY = 3000


# -- helpers ----------------------------------------------------------------------------------


def publish(gateway, channel: str, data, **fields) -> str:
    """Publish over HTTP; returns the event id the gateway assigned."""
    response = gateway.publish(channel, {"data": data, **fields})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def get(gateway, path: str, headers: dict[str, str] | None = None, **params):
    return requests.get(gateway.url + path, params=params, headers=headers, timeout=HTTP_TIMEOUT)


def poll_json(gateway, path: str, headers: dict[str, str] | None = None, **params) -> dict:
    response = get(gateway, path, headers, **params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    return response.json()


def preflight(gateway, path: str, origin: str, method: str = "GET",
              request_headers: str = "last-event-id, cache-control") -> requests.Response:
    return requests.options(gateway.url + path, timeout=HTTP_TIMEOUT, headers={
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": request_headers,
    })


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def tokens(value: str) -> list[str]:
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def assert_uncacheable(headers: Mapping[str, str]) -> None:
    h = lowered(headers)
    assert h.get("cache-control") == "no-cache, no-store", h
    assert h.get("pragma") == "no-cache", h
    assert "expires" in h, h
    assert parsedate_to_datetime(h["expires"]) < datetime.now(timezone.utc), h["expires"]


def assert_json_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def assert_no_cors(headers: Mapping[str, str]) -> None:
    h = lowered(headers)
    assert "access-control-allow-origin" not in h, h
    assert "access-control-allow-credentials" not in h, h
    assert "access-control-allow-methods" not in h, h


def assert_credentialed_cors(headers: Mapping[str, str], origin: str) -> None:
    h = lowered(headers)
    assert h.get("access-control-allow-origin") == origin, h
    assert h.get("access-control-allow-credentials") == "true", h
    assert "origin" in tokens(h.get("vary", "")), h


def assert_subscribe_preflight(response: requests.Response) -> None:
    assert response.status_code in (200, 204), response.text
    h = lowered(response.headers)
    assert "get" in tokens(h.get("access-control-allow-methods", "")), h
    allowed = tokens(h.get("access-control-allow-headers", ""))
    assert "last-event-id" in allowed and "cache-control" in allowed, h


def padded(gateway, channel: str, last_id: str | None = None,
           headers: dict[str, str] | None = None, query: str = "transport=stream") -> Stream:
    url = f"{gateway.url}/events/{channel}?{query}"
    if last_id is not None:
        url += f"&lastEventId={last_id}"
    stream = Stream(url, headers)
    assert stream.status == 200
    return stream


def wait_event_or_end(stream: Stream, count: int, timeout: float = 10.0) -> bool:
    """True once the stream holds `count` events; False if the response ended first."""
    try:
        stream.wait_for(lambda s: len(s.events) >= count or s.ended, timeout)
    except StreamClosed:
        pass
    return len(stream.events) >= count


def xdomain_get(url: str, origin: str) -> tuple[int, dict[str, str], bytes]:
    """A GET like IE's XDomainRequest sends: no Content-Type, no custom headers, only Origin."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT)
    try:
        connection.putrequest("GET", parts.path + "?" + parts.query, skip_accept_encoding=True)
        connection.putheader("Origin", origin)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, lowered(dict(response.getheaders())), response.read()
    finally:
        connection.close()


def subscriber_count(gateway) -> int:
    return requests.get(gateway.url + "/healthz", timeout=HTTP_TIMEOUT).json()["subscribers"]


# -- padded streaming -------------------------------------------------------------------------


def test_padded_stream_begins_with_a_2kib_comment_then_delivers_events(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    for query in ("transport=stream", "padding=true", "evs_preamble=2048"):
        channel = "pad-" + query.split("=")[0]
        with padded(gateway, channel, query=query) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            stream.wait_for(lambda s: b": ok\n" in s.body)
            assert stream.body.startswith(PREAMBLE), query
            assert stream.body[len(PREAMBLE):].startswith(b"retry: 3000\n\n: ok\n\n"), query
            assert stream.events == []
            event_id = publish(gateway, channel, f"after the preamble ({query})")
            assert stream.wait_events(1) == [
                ParsedEvent("message", f"after the preamble ({query})", event_id)]

    with Stream(f"{gateway.url}/events/native") as native:
        native.wait_for(lambda s: b": ok\n" in s.body)
        assert native.body.startswith(b"retry: 3000\n\n: ok\n\n")


def test_padded_stream_rotates_at_rotate_bytes_and_resume_has_no_gap_or_duplicate(
        start_gateway, broker_args):
    limit = 4096
    gateway = start_gateway(*broker_args, "--rotate-bytes", str(limit))
    channel = "rotate-bytes"
    expected = [f"{n:03d}:" + "x" * 200 for n in range(60)]
    published: list[str] = []
    finished: list[Stream] = []
    stream = padded(gateway, channel)
    try:
        for n, data in enumerate(expected):
            published.append(publish(gateway, channel, data))
            for _ in range(3):  # one reconnection is enough; allow for a spurious extra one
                already = sum(len(s.events) for s in finished)
                if wait_event_or_end(stream, n + 1 - already):
                    break
                finished.append(stream)
                stream.close()
                # What a client resumes from: the last id it saw before the rotation.
                stream = padded(gateway, channel, last_id=stream.parser.last_event_id)
            else:
                pytest.fail(f"event {n} never arrived across reconnections")
    finally:
        stream.close()

    events = [event for s in finished + [stream] for event in s.events]
    assert [e.data for e in events] == expected
    assert [e.last_event_id for e in events] == published
    assert len(finished) >= 2, "60 events of ~230 bytes must rotate a 4 KiB stream repeatedly"
    for ended in finished:
        assert ended.ended, "a rotated response ends with the chunked terminator"
        assert ended.body.startswith(PREAMBLE)
        assert ended.body.endswith(ROTATE)
        sent = len(ended.body) - len(ROTATE)
        # Rotated at the first event that reached the limit: not before it, nor much after.
        assert limit <= sent < limit + 400, sent


def test_idle_padded_stream_rotates_after_rotate_seconds_and_resume_gets_the_missed_event(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--rotate-seconds", "1")
    channel = "rotate-seconds"
    before = publish(gateway, channel, "before")
    opened = time.monotonic()
    with padded(gateway, channel) as stream:
        stream.read_to_end(timeout=15)
        lasted = time.monotonic() - opened
        assert stream.ended
        assert stream.body.startswith(PREAMBLE)
        assert stream.body.endswith(ROTATE)
        assert stream.events == []
        assert stream.parser.last_event_id == before
    assert lasted >= 0.8, f"rotated after {lasted:.2f}s, before --rotate-seconds 1"

    missed = publish(gateway, channel, "while reconnecting")
    with padded(gateway, channel, last_id=before) as resumed:
        assert resumed.wait_events(1) == [ParsedEvent("message", "while reconnecting", missed)]


def test_heartbeats_arrive_on_the_padded_stream(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--heartbeat", "1")
    with padded(gateway, "beats") as stream:
        stream.wait_for(lambda s: s.body.count(KEEPALIVE) >= 2, timeout=15)
        event_id = publish(gateway, "beats", "between heartbeats")
        assert stream.wait_events(1) == [ParsedEvent("message", "between heartbeats", event_id)]
        stream.wait_for(lambda s: s.body.count(KEEPALIVE) >= 3, timeout=15)
        assert not stream.ended
        assert stream.body.startswith(PREAMBLE)


def test_native_stream_never_rotates(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--heartbeat", "1", "--rotate-bytes", "4096",
                            "--rotate-seconds", "1")
    with Stream(f"{gateway.url}/events/native") as stream:
        expected = [f"{n:02d}:" + "y" * 200 for n in range(30)]
        for data in expected:
            publish(gateway, "native", data)
        assert [e.data for e in stream.wait_events(30)] == expected
        assert len(stream.body) > 4096
        # Two heartbeats after the last event: over a second of silence, past --rotate-seconds.
        beats = stream.body.count(KEEPALIVE)
        stream.wait_for(lambda s: s.body.count(KEEPALIVE) >= beats + 2, timeout=15)
        assert not stream.ended
        assert b"rotate" not in stream.body
        assert not stream.body.startswith(b":")


def test_padded_stream_rotates_right_after_a_backlog_larger_than_rotate_bytes(start_gateway):
    gateway = start_gateway("--rotate-bytes", "4096", "--heartbeat", "10")
    channel = "big-backlog"
    first = publish(gateway, channel, "first")
    expected = [f"{n:02d}:" + "z" * 300 for n in range(20)]
    for data in expected:
        publish(gateway, channel, data)
    with padded(gateway, channel, last_id=first) as stream:
        # The backlog alone is ~6.5 KB: the limit is passed with the first chunk.
        stream.read_to_end(timeout=5)
        assert [e.data for e in stream.events] == expected
        assert stream.ended
        assert stream.body.endswith(ROTATE)


# -- long-polling -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [None, 7], ids=["default-batch", "batch-7"])
def test_200_consecutive_long_polls_get_every_event_once_in_order_while_publishing(
        start_gateway, broker_args, batch):
    gateway = start_gateway(*broker_args)
    channel = "counter"
    ahead = 20  # the publisher stays at most this many events ahead of the poller
    limit = batch or 100
    cursor = publish(gateway, channel, "start")
    published: list[str] = []
    received: list[dict] = []
    progress = threading.Condition()
    stop = threading.Event()
    errors: list[Exception] = []

    # A backlog before the first poll, so the first answer is cut at the batch size.
    for n in range(ahead):
        published.append(publish(gateway, channel, n))

    def publisher() -> None:
        try:
            with requests.Session() as http:
                for n in range(ahead, 200 * ahead + ahead + 1):  # never runs dry before poll 200
                    with progress:
                        progress.wait_for(
                            lambda: stop.is_set() or len(published) - len(received) < ahead,
                            timeout=HTTP_TIMEOUT)
                    if stop.is_set():
                        return
                    response = http.post(f"{gateway.url}/publish/{channel}", json={"data": n},
                                         timeout=HTTP_TIMEOUT)
                    response.raise_for_status()
                    with progress:
                        published.append(response.json()["id"])
        except (requests.RequestException, ValueError, KeyError) as error:  # reported below
            errors.append(error)

    def take(body: dict) -> str:
        assert len(body["events"]) <= limit
        with progress:
            received.extend(body["events"])
            progress.notify_all()
        return body["lastEventId"]

    params = {"timeout": 20, **({"batch": batch} if batch else {})}
    thread = threading.Thread(target=publisher, daemon=True)
    with requests.Session() as http:
        first = http.get(f"{gateway.url}/poll/{channel}", timeout=HTTP_TIMEOUT,
                         params={"lastEventId": cursor, **params}).json()
        assert len(first["events"]) == min(ahead, limit)
        cursor = take(first)
        thread.start()
        try:
            for _ in range(199):
                response = http.get(f"{gateway.url}/poll/{channel}", timeout=HTTP_TIMEOUT,
                                    params={"lastEventId": cursor, **params})
                assert response.status_code == 200, response.text
                cursor = take(response.json())
        finally:
            stop.set()
            with progress:
                progress.notify_all()
            thread.join(HTTP_TIMEOUT)
        assert not thread.is_alive()
        assert not errors, errors
        for _ in range(ahead + 2):  # what is left is at most `ahead` events
            if len(received) >= len(published):
                break
            cursor = take(http.get(f"{gateway.url}/poll/{channel}", timeout=HTTP_TIMEOUT,
                                   params={"lastEventId": cursor, "timeout": 5,
                                           **({"batch": batch} if batch else {})}).json())

    assert [e["data"] for e in received] == [str(n) for n in range(len(published))]
    assert [e["id"] for e in received] == published
    assert all(e["event"] == "message" for e in received)
    assert cursor == published[-1]
    assert len(received) >= 200


def test_long_poll_with_nothing_pending_returns_no_events_at_its_timeout(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    last = publish(gateway, "quiet", "old news")
    started = time.monotonic()
    body = poll_json(gateway, "/poll/quiet", lastEventId=last, timeout=1)
    held = time.monotonic() - started
    assert body == {"events": [], "lastEventId": last, "retry": DEFAULT_RETRY}
    assert 0.9 <= held < 10, held

    # No last id and a channel never published to: still a cursor to send next.
    body = poll_json(gateway, "/poll/never-used", timeout=1)
    assert body["events"] == []
    assert EVENT_ID.match(body["lastEventId"]), body


def test_long_poll_without_last_id_waits_and_returns_promptly_when_an_event_arrives(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    publish(gateway, "live", "published before the poll, not returned")
    result: dict = {}

    def hold() -> None:
        result["response"] = get(gateway, "/poll/live", timeout=20)
        result["returned"] = time.monotonic()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        wait_until(lambda: subscriber_count(gateway) >= 1, 10, message="the poll to be held")
        assert "response" not in result, "the poll answered without an event"
        published_at = time.monotonic()
        event_id = publish(gateway, "live", "now", event="tick")
    finally:
        thread.join(HTTP_TIMEOUT)
    assert not thread.is_alive()
    body = result["response"].json()
    assert body["events"] == [{"id": event_id, "event": "tick", "data": "now"}]
    assert body["lastEventId"] == event_id
    assert result["returned"] - published_at < 5


def test_first_poll_without_last_id_starts_at_the_channel_end(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    publish(gateway, "history", "one")
    newest = publish(gateway, "history", "two")
    body = poll_json(gateway, "/poll/history", timeout=0)
    assert body == {"events": [], "lastEventId": newest, "retry": DEFAULT_RETRY}


def test_poll_resumes_after_the_last_id_in_each_of_its_spellings(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    first = publish(gateway, "resume", "one")
    second = publish(gateway, "resume", "two")
    spellings = [
        ({"lastEventId": first}, None),
        ({"last_event_id": first}, None),
        ({"evs_last_event_id": first}, None),
        ({}, {"Last-Event-ID": first}),
    ]
    for params, headers in spellings:
        started = time.monotonic()
        body = poll_json(gateway, "/poll/resume", headers, timeout=20, **params)
        # Pending events are answered at once, not at the end of the 20 s hold.
        assert time.monotonic() - started < 5, (params, headers)
        assert body["events"] == [{"id": second, "event": "message", "data": "two"}], params
        assert body["lastEventId"] == second


def test_poll_on_two_channels_returns_events_of_both_and_a_cursor_naming_both(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    start = poll_json(gateway, "/poll", channel=["red", "blue"], timeout=0)
    assert start["events"] == []
    match = re.match(r"^red=(\d+-\d+),blue=(\d+-\d+)$", start["lastEventId"])
    assert match, start
    ids = {"red 1": publish(gateway, "red", "red 1"), "blue 1": publish(gateway, "blue", "blue 1"),
           "red 2": publish(gateway, "red", "red 2")}

    body = poll_json(gateway, "/poll", channel=["red", "blue"], lastEventId=start["lastEventId"],
                     timeout=20)
    datas = [e["data"] for e in body["events"]]
    assert sorted(datas) == sorted(ids)
    assert [d for d in datas if d.startswith("red")] == ["red 1", "red 2"]
    positions = {"red": match.group(1), "blue": match.group(2)}
    for event in body["events"]:
        positions[event["data"].split()[0]] = ids[event["data"]]
        assert event["id"] == f"red={positions['red']},blue={positions['blue']}", event
    assert body["lastEventId"] == f"red={ids['red 2']},blue={ids['blue 1']}"

    again = poll_json(gateway, "/poll", channel=["red", "blue"], lastEventId=body["lastEventId"],
                      timeout=0)
    assert again["events"] == []
    assert again["lastEventId"] == body["lastEventId"]


# -- JSONP ------------------------------------------------------------------------------------


def test_jsonp_wraps_exactly_the_json_of_the_plain_poll(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    last = publish(gateway, "jsonp", "seen")
    publish(gateway, "jsonp", "caf\u00e9 \u2028 \u2029 </script>")
    publish(gateway, "jsonp", {"nested": [1, 2]}, event="update")
    plain = get(gateway, "/poll/jsonp", lastEventId=last, timeout=0)
    assert plain.status_code == 200
    callback = "jQuery_1_cb$"
    wrapped = get(gateway, "/poll/jsonp", lastEventId=last, timeout=0, callback=callback)
    assert wrapped.status_code == 200
    assert wrapped.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert wrapped.headers["X-Content-Type-Options"] == "nosniff"
    # ASCII only: U+2028/U+2029 are escaped, as old JavaScript parsers require.
    text = wrapped.content.decode("ascii")
    prefix = f"/**/{callback}("
    assert text.startswith(prefix) and text.endswith(");"), text
    payload = json.loads(text[len(prefix):-2])
    assert payload == plain.json()
    assert [e["data"] for e in payload["events"]] == [
        "caf\u00e9 \u2028 \u2029 </script>", '{"nested":[1,2]}']
    assert payload["events"][1]["event"] == "update"


def test_jsonp_accepts_callback_names_at_the_edges_of_the_grammar(start_gateway):
    gateway = start_gateway()
    for callback in ("$", "_", "a" * 64, "sub$_9fn", "Z9", "__sseg_cb_mhq2x1k30"):
        response = get(gateway, "/poll/edge", timeout=0, callback=callback)
        assert response.status_code == 200, (callback, response.text)
        assert response.text.startswith(f"/**/{callback}({{"), callback


def test_jsonp_refuses_unsafe_callbacks_without_reflecting_them(start_gateway):
    gateway = start_gateway()
    for callback in ("alert(1)//", "<script>", "a" * 65, "1abc", "callb\u00e4ck", "\u00e9",
                     "a b", "a-b", "x;y", "cb\r", ""):
        response = get(gateway, "/poll/unsafe", timeout=0, callback=callback)
        assert_json_error(response, 400)
        assert response.headers["Content-Type"].startswith("application/json")
        if callback:
            assert callback not in response.text, callback
        assert_uncacheable(response.headers)


def test_jsonp_refuses_dotted_callbacks_which_could_call_any_method_of_the_page(start_gateway):
    # Same-origin method execution: a page opened by ours could make the answer call, say,
    # window.opener.document.body.click. Only plain identifiers are accepted.
    gateway = start_gateway()
    for callback in ("window.opener.document.body.click", "ns.fn", "cb.", ".cb",
                     "SSEGateway._cb.c1"):
        response = get(gateway, "/poll/dotted", timeout=0, callback=callback)
        body = assert_json_error(response, 400)
        assert body["error"] == "invalid callback"
        assert "plain identifier" in body["detail"]
        assert "^[A-Za-z_$][A-Za-z0-9_$]{0,63}$" in body["detail"]
        assert callback not in response.text, callback


def test_jsonp_refuses_a_callback_ending_in_a_newline(start_gateway):
    gateway = start_gateway()
    response = get(gateway, "/poll/newline", timeout=0, callback="cb\n")
    assert_json_error(response, 400)
    assert "cb\n" not in response.text


# -- CORS -------------------------------------------------------------------------------------


def test_subscribe_endpoints_allow_any_origin_without_credentials_by_default(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    origin = "https://anywhere.example"
    first = publish(gateway, "open", "one")
    second = publish(gateway, "open", "two")

    # XDomainRequest-like requests: a GET carrying nothing but Origin.
    status, headers, body = xdomain_get(
        f"{gateway.url}/poll/open?lastEventId={first}&timeout=0", origin)
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in headers
    assert json.loads(body)["events"] == [{"id": second, "event": "message", "data": "two"}]

    with padded(gateway, "open", last_id=first, headers={"Origin": origin}) as stream:
        assert stream.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in stream.headers
        assert stream.wait_events(1) == [ParsedEvent("message", "two", second)]

    for path in ("/events/open", "/poll/open"):
        response = preflight(gateway, path, origin)
        assert_subscribe_preflight(response)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_allowlisted_origins_get_credentialed_cors_and_other_origins_none(start_gateway):
    allowed = ("https://a.example", "https://b.example")
    gateway = start_gateway("--cors-origin", allowed[0], "--cors-origin", allowed[1])
    for origin in allowed:
        assert_credentialed_cors(get(gateway, "/poll/club", {"Origin": origin}, timeout=0).headers,
                                 origin)
        status, headers, _ = xdomain_get(f"{gateway.url}/poll/club?timeout=0", origin)
        assert status == 200
        assert_credentialed_cors(headers, origin)
        with padded(gateway, "club", headers={"Origin": origin}) as stream:
            assert_credentialed_cors(stream.headers, origin)
        for path in ("/events/club", "/poll/club"):
            response = preflight(gateway, path, origin)
            assert_subscribe_preflight(response)
            assert_credentialed_cors(response.headers, origin)

    for refused in ("https://evil.example", "https://a.example.evil.example", "http://a.example",
                    "https://a.example:8443", "null"):
        response = get(gateway, "/poll/club", {"Origin": refused}, timeout=0)
        assert response.status_code == 200  # served; the browser withholds it from the page
        assert_no_cors(response.headers)
        with padded(gateway, "club", headers={"Origin": refused}) as stream:
            assert_no_cors(stream.headers)
        refused_preflight = preflight(gateway, "/events/club", refused)
        assert_no_cors(refused_preflight.headers)
        assert "Access-Control-Allow-Headers" not in refused_preflight.headers

    assert_no_cors(get(gateway, "/poll/club", timeout=0).headers)


def test_publish_endpoint_sends_cors_headers_only_for_publish_cors_origins(start_gateway):
    page = "https://publisher.example"
    default = start_gateway()
    response = default.publish("news", {"data": "x"}, headers={"Origin": page})
    assert_json_error(response, 403)  # an unlisted page may not publish (test_publish_origin.py)
    assert_no_cors(response.headers)
    assert_no_cors(preflight(default, "/publish/news", page, "POST", "content-type").headers)

    configured = start_gateway("--publish-cors-origin", page)
    response = configured.publish("news", {"data": "x"}, headers={"Origin": page})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == page
    assert "origin" in tokens(response.headers.get("Vary", ""))
    allowed = preflight(configured, "/publish/news", page, "POST", "content-type")
    assert allowed.headers["Access-Control-Allow-Origin"] == page
    assert "post" in tokens(allowed.headers["Access-Control-Allow-Methods"])
    assert "content-type" in tokens(allowed.headers["Access-Control-Allow-Headers"])

    other = configured.publish("news", {"data": "x"}, headers={"Origin": "https://evil.example"})
    assert_json_error(other, 403)
    assert_no_cors(other.headers)
    # The publish allowlist does not narrow subscribing, which stays open to every origin.
    subscribe = get(configured, "/poll/news", {"Origin": "https://evil.example"}, timeout=0)
    assert subscribe.headers["Access-Control-Allow-Origin"] == "*"


# -- caching and limits -----------------------------------------------------------------------


def test_every_transport_and_error_response_is_uncacheable(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    with Stream(f"{gateway.url}/events/cache") as native:
        assert native.status == 200
        assert_uncacheable(native.headers)
    with padded(gateway, "cache") as stream:
        assert_uncacheable(stream.headers)
    poll = get(gateway, "/poll/cache", timeout=0)
    assert poll.status_code == 200
    assert_uncacheable(poll.headers)
    jsonp = get(gateway, "/poll/cache", timeout=0, callback="cb")
    assert jsonp.status_code == 200
    assert_uncacheable(jsonp.headers)
    assert_uncacheable(preflight(gateway, "/poll/cache", "https://x.example").headers)

    errors = [
        get(gateway, "/poll/cache", timeout=10_000),
        get(gateway, "/poll/cache", timeout=0, callback="alert(1)"),
        get(gateway, "/events", channel=[f"c{n}" for n in range(17)]),
        get(gateway, "/events/bad channel!"),
        get(gateway, "/poll"),
    ]
    for response in errors:
        assert_json_error(response, 400)
        assert_uncacheable(response.headers)


def test_configured_limits_refuse_requests_beyond_them(start_gateway):
    gateway = start_gateway("--max-channels", "2", "--poll-timeout", "1", "--max-batch", "5")
    three = ["a", "b", "c"]
    assert_json_error(get(gateway, "/poll", channel=three, timeout=0), 400)
    assert_json_error(get(gateway, "/events", channel=three), 400)
    assert poll_json(gateway, "/poll", channel=three[:2], timeout=0)["events"] == []

    for timeout in ("1.5", "-1", "abc", "nan", "inf"):
        assert_json_error(get(gateway, "/poll/a", timeout=timeout), 400)
    for batch in ("6", "0", "-1", "2.5", "abc"):
        assert_json_error(get(gateway, "/poll/a", timeout=0, batch=batch), 400)

    first = publish(gateway, "a", "first")
    ids = [publish(gateway, "a", n) for n in range(8)]
    cut = poll_json(gateway, "/poll/a", lastEventId=first, timeout=0, batch=5)
    assert [e["data"] for e in cut["events"]] == ["0", "1", "2", "3", "4"]
    assert cut["lastEventId"] == ids[4]
    rest = poll_json(gateway, "/poll/a", lastEventId=cut["lastEventId"], timeout=0)
    assert [e["data"] for e in rest["events"]] == ["5", "6", "7"]

    # Without ?timeout= the poll is held for --poll-timeout.
    started = time.monotonic()
    idle = poll_json(gateway, "/poll/a", lastEventId=ids[-1])
    assert idle["events"] == []
    assert 0.9 <= time.monotonic() - started < 10


def test_default_limits_are_16_channels_25_seconds_and_batches_of_100(start_gateway):
    gateway = start_gateway()
    channels = [f"c{n}" for n in range(17)]
    assert_json_error(get(gateway, "/poll", channel=channels, timeout=0), 400)
    assert poll_json(gateway, "/poll", channel=channels[:16], timeout=0)["events"] == []
    assert_json_error(get(gateway, "/poll/c0", timeout="25.5"), 400)
    assert_json_error(get(gateway, "/poll/c0", timeout=0, batch=101), 400)
    assert poll_json(gateway, "/poll/c0", timeout=0, batch=100)["events"] == []


def test_jsonp_with_a_cors_allowlist_answers_only_pages_of_listed_origins(start_gateway):
    gateway = start_gateway("--cors-origin", "https://a.example")

    def jsonp(headers):
        return get(gateway, "/poll/guarded", headers=headers, timeout=0, callback="cb")

    allowed = jsonp({"Referer": "https://a.example/page.html"})
    assert allowed.status_code == 200
    assert allowed.text.startswith("/**/cb(")
    for headers in ({"Referer": "https://evil.example/a.example"}, {}):
        # A script tag sees no status: the refusal is passed to the callback, which ends the
        # polyfill's connection for good (a bare 403 would have it retry forever). No events.
        refused = jsonp(headers)
        assert refused.status_code == 200
        assert refused.headers["Content-Type"].startswith("application/javascript")
        assert refused.text.startswith("/**/cb(") and refused.text.endswith(");")
        body = json.loads(refused.text[len("/**/cb("):-2])
        assert body["error"] == "forbidden" and body["status"] == 403
        assert "events" not in body and "Referer" in body["detail"]


def test_a_jsonp_poll_the_gateway_refuses_passes_the_error_to_its_callback(start_gateway):
    gateway = start_gateway()
    refused = get(gateway, "/poll/c0", timeout="1_0", callback="cb")
    assert refused.status_code == 200
    body = json.loads(refused.text[len("/**/cb("):-2])
    assert body == {"error": "invalid timeout", "status": 400, "detail": body["detail"]}
    # Without a valid callback there is none to call: the JSON error and its status.
    assert_json_error(get(gateway, "/poll/c0", timeout="1_0", callback="c-b"), 400)
    assert_json_error(get(gateway, "/poll/c0", timeout="1_0"), 400)
