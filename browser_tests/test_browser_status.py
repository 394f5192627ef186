"""The live status page (GET /status) in Chromium, fed by the gateway's own event stream."""

from __future__ import annotations

import pytest
import requests
from sse_client import Stream, subscribed

FORCED = {"xhr-poll": "long-poll", "jsonp-poll": "jsonp", "xhr-stream": "padded"}


def number(page, element: str) -> float:
    return float(page.text_content("#" + element))


def open_status(context, gateway, transport: str = ""):
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Not "load": a JSONP long-poll, a script element, holds the load event back.
    page.goto(gateway.url + "/status" + (f"?transport={transport}" if transport else ""),
              wait_until="domcontentloaded")
    page.wait_for_function("() => document.getElementById('state').textContent == 'live'")
    # The first figures arrive within a second or two of the page subscribing.
    page.wait_for_function("() => document.getElementById('processes').textContent == '1'")
    assert errors == []
    return page


def publish_and_see_the_numbers_move(page, gateway) -> None:
    listener = Stream(gateway.url + "/events/watched")
    listener.wait_for(subscribed)
    before = number(page, "published"), number(page, "deliveries")
    for index in range(3):
        response = requests.post(gateway.url + "/publish/watched", json={"data": index},
                                 timeout=10)
        assert response.status_code == 200, response.text
    listener.wait_events(3)
    listener.close()
    page.wait_for_function(
        "([published, deliveries]) => +document.getElementById('published').textContent >= "
        "published + 3 && +document.getElementById('deliveries').textContent >= deliveries + 3",
        arg=list(before), timeout=15_000)
    # The rate went up too, and each chart is drawn.
    page.wait_for_function("() => +document.getElementById('publish-rate').textContent > 0",
                           timeout=15_000)
    assert page.evaluate("() => document.querySelectorAll('.uplot canvas').length") == 3


def test_the_status_page_shows_live_figures_on_each_broker(start_gateway, broker_args,
                                                           context):
    gateway = start_gateway(*broker_args)
    page = open_status(context, gateway)
    assert page.text_content("#transport") == "native EventSource"
    # The page's own stream is one of the native ones it shows, on the secret status channel.
    page.wait_for_function("() => +document.getElementById('connections-native').textContent >= 1")
    config = page.evaluate("() => JSON.parse(document.getElementById('status-config').textContent)")
    assert config["events"].startswith("/events/sse-gateway.status.")
    publish_and_see_the_numbers_move(page, gateway)


@pytest.mark.parametrize("transport", sorted(FORCED))
def test_the_status_page_works_through_the_polyfill(start_gateway, context,
                                                    transport):
    gateway = start_gateway()
    page = open_status(context, gateway, transport)
    assert page.text_content("#transport") == transport
    publish_and_see_the_numbers_move(page, gateway)
