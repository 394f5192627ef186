"""The demo chat page (`--demo`, the gateway's own `/`) in a browser without EventSource."""

from __future__ import annotations

from .support import PAGES

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
    # The polyfill chose XHR streaming for this modern browser, on the gateway's own origin.
    assert any("/events/chat?transport=stream" in r.url for r in requests)
    assert page.evaluate("() => document.getElementById('status').textContent") == "live"


def test_the_demo_chat_works_on_an_ie9_like_browser_by_long_polling(start_gateway, context):
    gateway = start_gateway("--demo")
    page, requests = open_demo(context, gateway, shims=["legacy_xhr"])
    say(page, "Ada", "polled ✓")
    assert wait_for_lines(page, 1) == ["Adapolled ✓"]
    urls = [r.url for r in requests]
    assert any("/poll/chat" in url for url in urls), urls
    assert not any("/events/chat" in url for url in urls), urls
