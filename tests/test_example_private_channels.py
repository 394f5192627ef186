"""The worked example (examples/private_channels/): the application, a gateway and nginx with
the shipped snippets, run for real; a logged-in user's token subscribes to the user's channel
through nginx, across origins, and to nobody else's."""

import os
import subprocess
import sys

import pytest
import requests
from child_processes import die_with_parent
from conftest import ROOT, free_port, wait_until
from sse_client import Stream, subscribed
from test_nginx import Nginx

SECRET = "an-example-secret-of-thirty-two-bytes-at-least"
APP = os.path.join(ROOT, "examples", "private_channels", "app.py")


@pytest.fixture
def example(start_gateway):
    gateway = start_gateway("--private-channel", "user.*", "--subscribe-key", SECRET,
                            "--trusted-proxy", "127.0.0.1")
    proxy = Nginx([gateway.port]).start()
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, APP, "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, preexec_fn=die_with_parent(),
        env={**os.environ, "SSE_GATEWAY_SUBSCRIBE_KEY": SECRET, "PUSH_URL": proxy.public_url,
             "PUBLISH_URL": proxy.internal_url, "PYTHONPATH": ROOT})
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(answers, 15, message="the example application to answer")
        yield url, proxy
    finally:
        app.kill()
        app.wait(5)
        proxy.cleanup()


def test_a_logged_in_user_subscribes_to_its_own_channel_through_nginx(example):
    url, proxy = example
    browser = requests.Session()
    assert browser.get(f"{url}/token", timeout=5).status_code == 401
    page = browser.post(f"{url}/login", data={"user": "42"}, timeout=5)
    assert page.status_code == 200
    # The page loads the polyfill from nginx and subscribes there, with the token function.
    assert f'src="{proxy.public_url}/static/eventsource.js"' in page.text
    assert f'"{proxy.public_url}/events/user.42"' in page.text and "token: function" in page.text
    assert requests.get(f"{proxy.public_url}/static/eventsource.js", timeout=5).status_code == 200
    token = browser.get(f"{url}/token", timeout=5).text
    origin = {"Origin": url}
    assert requests.get(f"{proxy.public_url}/events/user.42", headers=origin,
                        timeout=5).status_code == 401
    assert requests.get(f"{proxy.public_url}/events/user.43?token={token}", headers=origin,
                        timeout=5).status_code == 403
    with Stream(f"{proxy.public_url}/events/user.42?token={token}", origin) as stream:
        assert stream.status == 200 and stream.headers["access-control-allow-origin"] == "*"
        stream.wait_for(subscribed, 10)
        assert browser.post(f"{url}/notify", timeout=10).status_code == 200
        [event] = stream.wait_events(1)
        assert (event.type, event.data) == ("notice", "You have a notification")
    # The long-poll the polyfill falls back to goes through nginx as well.
    poll = requests.get(f"{proxy.public_url}/poll/user.42?timeout=0&token={token}", timeout=5)
    assert poll.status_code == 200 and poll.json()["events"] == []
