"""Publishing from web pages: a page of an origin not listed by --publish-cors-origin never
publishes, whatever it sends and whether or not the gateway has tokens.

A page of any site, open in a browser on the gateway's host, reaches the gateway on loopback,
and a POST of text/plain is a "simple" request: the browser sends it without a preflight, so
CORS headers alone would not stop it.
"""

from __future__ import annotations

import http.client

import pytest
import requests
from sse_client import Stream

EVIL = "https://evil.example"
APP = "https://app.example"
TOKEN = "s3cret-token"


def post(gateway, channel: str, data: str = "x", origin: str | None = None,
         host: str | None = None, json_body: bool = False,
         token: str | None = None) -> requests.Response:
    """A publish as a browser page would send it: text/plain unless `json_body`."""
    headers = {"Content-Type": "application/json" if json_body else "text/plain"}
    if origin is not None:
        headers["Origin"] = origin
    if host is not None:
        headers["Host"] = host
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = ('{"data": "%s"}' % data) if json_body else data
    return requests.post(f"{gateway.url}/publish/{channel}", data=body.encode(),
                         headers=headers, timeout=10)


def assert_refused_naming(response: requests.Response, origin: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "forbidden"
    assert repr(origin) in body["detail"] and "--publish-cors-origin" in body["detail"]


@pytest.fixture
def stream_of(open_stream):
    """stream_of(gateway, channel): a subscribed stream, to see what was published."""
    def open_(gateway, channel: str) -> Stream:
        return open_stream(f"{gateway.url}/events/{channel}")
    return open_


def test_page_of_another_origin_cannot_publish_a_simple_request_to_a_tokenless_gateway(
        start_gateway, broker_args, stream_of):
    gateway = start_gateway(*broker_args)
    stream = stream_of(gateway, "simple")
    for json_body in (False, True):
        assert_refused_naming(post(gateway, "simple", "evil", EVIL, json_body=json_body), EVIL)
    # Sandboxed frames, file: and data: pages send "Origin: null": no listed origin either.
    assert_refused_naming(post(gateway, "simple", "evil", "null"), "null")
    # A publisher that is no page (no Origin header) still publishes from loopback.
    answer = post(gateway, "simple", "from a server")
    assert answer.status_code == 200, answer.text
    [event] = stream.wait_events(1)
    assert (event.data, event.last_event_id) == ("from a server", answer.json()["id"])


def test_a_valid_token_does_not_let_a_page_of_another_origin_publish(start_gateway, stream_of):
    gateway = start_gateway("--publish-token", TOKEN)
    stream = stream_of(gateway, "tokened")
    assert_refused_naming(post(gateway, "tokened", "evil", EVIL, token=TOKEN), EVIL)
    assert_refused_naming(post(gateway, "tokened", "evil", EVIL, json_body=True, token=TOKEN),
                          EVIL)
    assert post(gateway, "tokened", "server", token=TOKEN).status_code == 200
    assert [e.data for e in stream.wait_events(1)] == ["server"]


def test_pages_of_a_listed_origin_publish_and_others_do_not(start_gateway, stream_of):
    gateway = start_gateway("--publish-cors-origin", APP, "--publish-token", TOKEN)
    stream = stream_of(gateway, "listed")
    allowed = post(gateway, "listed", "from the app", APP, json_body=True, token=TOKEN)
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["Access-Control-Allow-Origin"] == APP
    refused = post(gateway, "listed", "evil", EVIL, json_body=True, token=TOKEN)
    assert_refused_naming(refused, EVIL)
    assert "Access-Control-Allow-Origin" not in refused.headers
    # An origin differs from a listed one by scheme, port or host: not the same origin.
    for near in ("http://app.example", "https://app.example:8443", "https://app.example.evil"):
        assert_refused_naming(post(gateway, "listed", "near", near, token=TOKEN), near)
    assert post(gateway, "listed", "after", APP, token=TOKEN).status_code == 200
    assert [e.data for e in stream.wait_events(2)] == ["from the app", "after"]


def test_the_demo_page_publishes_from_the_gateways_own_origin_but_a_rebound_name_does_not(
        start_gateway, stream_of):
    gateway = start_gateway("--demo")
    stream = stream_of(gateway, "demo")
    for host in (f"127.0.0.1:{gateway.port}", f"localhost:{gateway.port}"):
        answer = post(gateway, "demo", host, f"http://{host}", host=host)
        assert answer.status_code == 200, answer.text
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is "same
    # origin" with the gateway as the browser sees it, Host header included.
    rebound = f"evil.example:{gateway.port}"
    assert_refused_naming(post(gateway, "demo", "evil", f"http://{rebound}", host=rebound),
                          f"http://{rebound}")
    assert [e.data for e in stream.wait_events(2)] == [f"127.0.0.1:{gateway.port}",
                                                        f"localhost:{gateway.port}"]


def test_without_the_demo_even_the_gateways_own_origin_must_be_listed(start_gateway):
    gateway = start_gateway()
    own = f"http://127.0.0.1:{gateway.port}"
    assert_refused_naming(post(gateway, "own", "x", own), own)


def test_refused_publish_is_never_in_history(start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url)
    assert_refused_naming(post(gateway, "kept-out", "evil", EVIL), EVIL)
    assert not redis_db.client.exists("sse-gateway:history:kept-out")
    # A raw socket, byte for byte what a browser sends for a form-like simple request.
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request("POST", "/publish/kept-out", body=b"evil",
                           headers={"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"})
        response = connection.getresponse()
        assert response.status == 403
        response.read()
    finally:
        connection.close()
    assert not redis_db.client.exists("sse-gateway:history:kept-out")
