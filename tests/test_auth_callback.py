"""`--auth-url`: the gateway asks a real application (tests/auth_app.py, its own process) about
private channels: allow, narrow, refuse, a lifetime, an application down or slow, the cache,
and other clients never waiting for it."""

import json
import os
import subprocess
import sys
import threading

import pytest
import requests
from child_processes import die_with_parent
from conftest import free_port, wait_until
from sse_client import Stream, subscribed

from gateway.tokens import subscribe_token

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "a-test-secret-of-thirty-two-bytes-or-more"


class AuthApp:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "auth_app.py"),
                                      str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
        wait_until(self._answers, 15, message="the auth application to answer")

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/questions", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def questions(self) -> list:
        return requests.get(self.url + "/questions", timeout=5).json()

    def release(self) -> None:
        requests.post(self.url + "/release", timeout=5)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def auth_app():
    app = AuthApp()
    yield app
    app.stop()


@pytest.fixture
def asking_gateway(start_gateway, auth_app):
    def start(*args: str):
        return start_gateway("--private-channel", "user.*", "--auth-url",
                             auth_app.url + "/authorize", "--heartbeat", "1", *args)
    return start


def cookie(session: str) -> dict:
    return {"Cookie": f"theme=dark; session={session}"}


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=15, **kwargs)


def test_an_allowed_subscriber_gets_its_events_and_the_application_gets_the_question(
        asking_gateway, auth_app):
    gateway = asking_gateway()
    headers = {**cookie("alice"), "Origin": "https://www.example.com",
               "Authorization": "Basic YWxpY2U6eA=="}
    with Stream(f"{gateway.url}/events/user.alice", headers) as stream:
        assert stream.status == 200, stream.body
        stream.wait_for(subscribed, 10)
        gateway.publish("user.alice", {"data": "hello alice"})
        assert [e.data for e in stream.wait_events(1)] == ["hello alice"]
    [question] = auth_app.questions()
    assert question == {
        "body": {"channels": ["user.alice"], "address": "127.0.0.1",
                 "origin": "https://www.example.com"},
        "cookie": "theme=dark; session=alice", "authorization": "Basic YWxpY2U6eA=="}


def test_the_application_narrows_refuses_or_allows_everything(asking_gateway, auth_app):
    gateway = asking_gateway("--auth-cache-seconds", "0")
    both = f"{gateway.url}/events?channel=news&channel=user.alice&channel=user.carol"
    narrowed = get(both, headers=cookie("alice"))
    assert narrowed.status_code == 403
    assert narrowed.json()["channel"] == "user.carol"
    assert auth_app.questions()[-1]["body"]["channels"] == ["user.alice", "user.carol"]
    assert get(f"{gateway.url}/poll/user.carol?timeout=0", headers=cookie("all")).status_code == 200
    for session, status in (("bob", 403), ("nobody", 401)):
        response = get(f"{gateway.url}/events/user.alice", headers=cookie(session))
        assert response.status_code == status
        assert response.json()["channel"] == "user.alice"
        padded = get(f"{gateway.url}/events/user.alice?transport=stream", headers=cookie(session))
        assert padded.status_code == 200 and "event: gateway-refused" in padded.text
        assert f'"status":{status}' in padded.text


def test_without_any_credentials_the_application_is_not_asked(asking_gateway, auth_app):
    gateway = asking_gateway()
    assert get(f"{gateway.url}/events/user.alice").status_code == 401
    assert get(f"{gateway.url}/poll/user.alice?timeout=0").status_code == 401
    assert auth_app.questions() == []


def test_a_query_token_goes_to_the_application_in_the_question(asking_gateway, auth_app):
    gateway = asking_gateway()
    assert get(f"{gateway.url}/poll/user.x?timeout=0&token=all").status_code == 200
    assert auth_app.questions()[-1]["body"]["token"] == "all"


def test_a_valid_signed_token_needs_no_question(asking_gateway, auth_app):
    gateway = asking_gateway("--subscribe-key", SECRET)
    token = subscribe_token(["user.bob"], SECRET)
    assert get(f"{gateway.url}/poll/user.bob?timeout=0&token={token}").status_code == 200
    assert auth_app.questions() == []
    # What the token does not cover, the application is asked about (and only that).
    url = f"{gateway.url}/poll?channel=user.bob&channel=user.alice&timeout=0"
    assert get(url, headers={**cookie("alice"), "Authorization": f"Bearer {token}"}
               ).status_code == 200
    [question] = auth_app.questions()
    assert question["body"]["channels"] == ["user.alice"]


def test_the_applications_ttl_ends_the_stream_with_the_expiry_event(asking_gateway):
    gateway = asking_gateway()
    with Stream(f"{gateway.url}/events/user.x", cookie("short")) as stream:
        assert stream.status == 200
        stream.read_to_end(10)
        assert stream.events[-1].type == "gateway-auth-expired"


@pytest.mark.parametrize("session", ["down", "broken", "held", "unreachable"])
def test_an_application_down_or_slow_gets_the_client_a_retry_never_a_refusal(
        start_gateway, auth_app, session):
    url = (f"http://127.0.0.1:{free_port()}/authorize" if session == "unreachable"
           else auth_app.url + "/authorize")
    gateway = start_gateway("--private-channel", "user.*", "--auth-url", url,
                            "--auth-timeout", "0.5", "--retry", "1000")
    headers = cookie(session)
    native = get(f"{gateway.url}/events/user.alice", headers=headers)
    assert native.status_code == 200
    assert native.headers["Content-Type"].startswith("text/event-stream")
    assert native.text.startswith("retry: ")
    assert "authorization unavailable" in native.text and "\n\n" not in native.text
    padded = get(f"{gateway.url}/events/user.alice?transport=stream", headers=headers)
    assert padded.status_code == 200 and "authorization unavailable" in padded.text
    poll = get(f"{gateway.url}/poll/user.alice?lastEventId=5-0", headers=headers)
    assert poll.status_code == 200
    body = poll.json()
    assert body["events"] == [] and body["lastEventId"] == "5-0"
    jsonp = get(f"{gateway.url}/poll/user.alice?callback=cb&timeout=1", headers=headers)
    assert jsonp.status_code == 200 and jsonp.text.startswith('/**/cb({"events":[]')
    if session == "held":
        auth_app.release()
    log = gateway.log()
    assert "the auth callback" in log  # a warning for the operator, without the cookie
    assert "session=" not in log


def test_answers_are_cached_per_credentials_and_channels(asking_gateway, auth_app):
    gateway = asking_gateway("--auth-cache-seconds", "60")
    url = f"{gateway.url}/poll/user.alice?timeout=0"
    for _ in range(5):
        assert get(url, headers=cookie("alice")).status_code == 200
        assert get(url, headers=cookie("bob")).status_code == 403
    assert len(auth_app.questions()) == 2  # one per credentials: refusals are kept too
    assert get(f"{gateway.url}/poll/user.carol?timeout=0", headers=cookie("all")
               ).status_code == 200
    assert get(f"{gateway.url}/poll?channel=user.alice&channel=user.carol&timeout=0",
               headers=cookie("all")).status_code == 200
    assert len(auth_app.questions()) == 4  # other channels: other questions
    with Stream(url.replace("/poll/", "/events/"), cookie("alice")) as stream:
        stream.wait_for(subscribed, 10)
    assert len(auth_app.questions()) == 4  # a stream shares the poll's answer


def test_without_a_cache_every_request_asks(asking_gateway, auth_app):
    gateway = asking_gateway("--auth-cache-seconds", "0")
    for _ in range(3):
        assert get(f"{gateway.url}/poll/user.alice?timeout=0", headers=cookie("alice")
                   ).status_code == 200
    assert len(auth_app.questions()) == 3


def test_a_slow_application_holds_only_the_clients_waiting_for_it(asking_gateway, auth_app):
    gateway = asking_gateway("--auth-timeout", "20")
    waiting = []

    def subscribe_held():  # Stream() returns once the response head arrives
        with Stream(f"{gateway.url}/events/user.alice", cookie("held"), timeout=30) as stream:
            waiting.append(stream.status)

    thread = threading.Thread(target=subscribe_held)
    thread.start()
    try:
        wait_until(lambda: len(auth_app.questions()) >= 1, 10, message="the held question")
        # Meanwhile: a public stream, and another private one, are served at once.
        with Stream(f"{gateway.url}/events/news") as public, \
                Stream(f"{gateway.url}/events/user.alice", cookie("alice")) as private:
            public.wait_for(subscribed, 10)
            private.wait_for(subscribed, 10)
            gateway.publish("news", {"data": "n"})
            gateway.publish("user.alice", {"data": "a"})
            assert [e.data for e in public.wait_events(1)] == ["n"]
            assert [e.data for e in private.wait_events(1)] == ["a"]
        assert waiting == []  # still waiting for the application
    finally:
        auth_app.release()
        thread.join(30)
    assert waiting == [200]


def test_credentials_never_reach_the_log(asking_gateway, auth_app):
    gateway = asking_gateway("--log-level", "debug", "--subscribe-key", SECRET)
    token = subscribe_token(["user.alice"], SECRET, ttl=60)
    secrets = [token, "alice-cookie-value", "s3cret-basic"]
    get(f"{gateway.url}/events/user.alice?token={token}", stream=True).close()
    get(f"{gateway.url}/poll/user.alice?timeout=0&token={token}")
    get(f"{gateway.url}/poll/user.alice?timeout=0&x=1&token={token}&access_token={token}")
    get(f"{gateway.url}/poll/user.alice?timeout=0",
        headers={"Cookie": "session=alice-cookie-value", "Authorization": "Basic s3cret-basic"})
    get(f"{gateway.url}/events/user.alice", headers={"Authorization": f"Bearer {token}"},
        stream=True).close()
    requests.post(f"{gateway.url}/publish/user.alice", json={"data": "x"}, timeout=10,
                  headers={"Authorization": f"Bearer {token}"})
    down = asking_gateway("--log-level", "debug", "--auth-timeout", "0.3")
    get(f"{down.url}/poll/user.alice?timeout=0&token=held", headers=cookie("held"))
    auth_app.release()
    wait_until(lambda: gateway.log().count('"GET /poll/user.alice') >= 3, 10,
               message="the access log lines")
    log = gateway.log() + down.log()
    assert "token=[redacted]" in log and "access_token=[redacted]" in log
    for secret in secrets + ["session=held"]:
        assert secret not in log, secret
    health = json.dumps(requests.get(f"{gateway.url}/healthz", timeout=5).json())
    assert SECRET not in health and token not in health
