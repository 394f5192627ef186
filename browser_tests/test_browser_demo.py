"""The demo chat page (`--demo`, the gateway's own `/`) in a browser without EventSource."""

from __future__ import annotations

import json
import re

import requests

from .support import PAGES, ROOT

NO_EVENT_SOURCE = "delete window.EventSource;"


def open_demo(context, gateway, shims=()):
    for name in shims:
        context.add_init_script(path=str(PAGES / f"{name}.js"))
    context.add_init_script(NO_EVENT_SOURCE)
    page = context.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request))
    page.goto(gateway.url + "/")
    page.wait_for_function("() => document.getElementById('status').textContent == 'live'")
    assert page.evaluate("() => window.EventSource === window.SSEGateway.EventSource")
    return page, requests


def say(page, who: str, text: str) -> None:
    page.fill("#who", who)
    page.fill("#text", text)
    page.click("#say button[type=submit]")


def wait_for_lines(page, count: int) -> list:
    page.wait_for_function("n => document.querySelectorAll('#log li').length >= n", arg=count)
    return page.eval_on_selector_all("#log li", "items => items.map(li => li.textContent)")


def test_the_demo_chat_works_through_the_polyfill_when_the_browser_has_no_event_source(
        start_gateway, broker_args, browser, context):
    gateway = start_gateway(*broker_args, "--demo")
    page, requests = open_demo(context, gateway)
    other_context = browser.new_context()
    try:
        other, _ = open_demo(other_context, gateway)
        say(page, "Ada", "héllo from the polyfill 👋")
        assert wait_for_lines(page, 1) == ["Adahéllo from the polyfill 👋"]
        assert wait_for_lines(other, 1) == ["Adahéllo from the polyfill 👋"]
        assert page.input_value("#text") == ""
        say(other, "Grace", "and back")
        assert wait_for_lines(page, 2)[1] == "Graceand back"
    finally:
        other_context.close()
    # The polyfill chose XHR streaming for this modern browser, on the gateway's own origin,
    # and the page says so.
    assert any("/events/chat?transport=stream" in r.url for r in requests)
    assert page.evaluate("() => document.getElementById('status').textContent") == "live"
    assert page.text_content("#transport") == "XHR streaming (polyfill)"


def test_the_demo_chat_works_on_an_ie9_like_browser_by_long_polling(start_gateway, context):
    gateway = start_gateway("--demo")
    page, requests = open_demo(context, gateway, shims=["legacy_xhr"])
    say(page, "Ada", "polled ✓")
    assert wait_for_lines(page, 1) == ["Adapolled ✓"]
    urls = [r.url for r in requests]
    assert any("/poll/chat" in url for url in urls), urls
    assert not any("/events/chat" in url for url in urls), urls
    assert page.text_content("#transport") == "XHR long-poll (polyfill)"


def quick_start_publish() -> tuple:
    """The channel and JSON body of the README's Quick start publish command."""
    readme = (ROOT / "README.md").read_text("utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    url = re.search(r"curl -X POST (\S+)", quick_start).group(1)
    body = re.search(r"-d '([^']+)'", quick_start).group(1)
    return url.rsplit("/", 1)[1], json.loads(body)


def test_the_readme_quick_start_publish_shows_on_the_demo_page_in_a_native_browser(
        start_gateway, context):
    gateway = start_gateway("--demo")
    page = context.new_page()
    page.goto(gateway.url + "/")
    page.wait_for_function("() => document.getElementById('status').textContent == 'live'")
    assert page.text_content("#transport") == "native EventSource"
    channel, body = quick_start_publish()
    response = requests.post(f"{gateway.url}/publish/{channel}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    data = body["data"]
    assert wait_for_lines(page, 1) == [data["who"] + data["text"]]
