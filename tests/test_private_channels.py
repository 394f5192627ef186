"""Private channels with signed tokens, on real gateway processes: who may subscribe, with
which carrier and key, what each transport answers a refusal, the expiry of a grant, publish
tokens, and the settings refused at start."""

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time

import pytest
import requests
from child_processes import die_with_parent
from conftest import ROOT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sse_client import Stream, subscribed

from gateway.tokens import mint, publish_token, subscribe_token

SECRET = "a-test-secret-of-thirty-two-bytes-or-more"
OTHER_SECRET = "another-secret-of-thirty-two-bytes-or-more"
PRIVATE = ("--private-channel", "user.*", "--private-channel", "room.?")


@pytest.fixture
def hs_gateway(start_gateway, broker_args):
    return start_gateway(*broker_args, *PRIVATE, "--subscribe-key", SECRET, "--heartbeat", "1")


@pytest.fixture(scope="module")
def es256_keys(tmp_path_factory):
    """(private PEM, path of the public PEM), made here."""
    private = ec.generate_private_key(ec.SECP256R1())
    folder = tmp_path_factory.mktemp("keys")
    public_path = folder / "public.pem"
    public_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    private_pem = private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    return private_pem, public_path


def token_for(*channels, ttl=60, key=SECRET, **claims):
    return subscribe_token(list(channels), key, ttl=ttl, **claims)


def refusal(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "detail", "channel"}, body
    return body


def padded_refusal(response: requests.Response) -> dict:
    """The refusal an XHR/XDomainRequest stream gets: 200, one `gateway-refused` event."""
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    lines = response.text.strip("\n").split("\n")
    assert lines[0] == "event: gateway-refused" and lines[1].startswith("data: "), response.text
    assert len(lines) == 2, response.text  # no retry, no id: nothing else changes
    return json.loads(lines[1][len("data: "):])


def jsonp_refusal(response: requests.Response, callback: str = "cb") -> dict:
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/javascript")
    text = response.text
    prefix = f"/**/{callback}("
    assert text.startswith(prefix) and text.endswith(");"), text
    return json.loads(text[len(prefix):-2])


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=10, **kwargs)


def live_stream(url: str, headers=None) -> Stream:
    stream = Stream(url, headers)
    assert stream.status == 200, stream.body
    stream.wait_for(subscribed, 10)
    return stream


# -- who may subscribe ------------------------------------------------------------------------


def test_public_channels_are_unchanged_beside_private_ones(hs_gateway):
    with live_stream(f"{hs_gateway.url}/events/news") as stream:
        event_id = hs_gateway.publish("news", {"data": "for all"}).json()["id"]
        [event] = stream.wait_events(1)
        assert (event.data, event.last_event_id) == ("for all", event_id)
    poll = get(f"{hs_gateway.url}/poll/news?timeout=0")
    assert poll.status_code == 200 and poll.json()["events"] == []
    # `room.?` matches one character only: room.12 is public.
    assert get(f"{hs_gateway.url}/poll/room.12?timeout=0").status_code == 200


def test_without_credentials_every_transport_refuses_with_401_naming_the_channel(hs_gateway):
    url = hs_gateway.url
    native = get(f"{url}/events/user.1")
    assert native.status_code == 401
    body = refusal(native)
    assert body["error"] == "unauthorized" and body["channel"] == "user.1"
    assert "Access-Control-Allow-Origin" in native.headers  # a page may read the refusal
    padded = padded_refusal(get(f"{url}/events/user.1?transport=stream"))
    assert padded == {**body, "status": 401}
    poll = get(f"{url}/poll/user.1")
    assert poll.status_code == 401 and refusal(poll) == body
    assert jsonp_refusal(get(f"{url}/poll/user.1?callback=cb")) == {**body, "status": 401}


@pytest.mark.parametrize("token, status, says", [
    (lambda: token_for("user.1", key=OTHER_SECRET), 401, "Signature verification failed"),
    (lambda: token_for("user.1", ttl=1, now=time.time() - 10), 401, "expired"),
    (lambda: "not-a-token", 401, "not a JWT"),
    (lambda: forged({"alg": "HS256", "typ": "JWT"}, {"subscribe": ["user.1"]}, SECRET.encode()),
     401, 'missing the "exp" claim'),
    (lambda: token_for("user.2", "room.*"), 403, "does not allow channel 'user.1'"),
    (lambda: publish_token(["user.1"], SECRET), 403, "does not allow channel 'user.1'"),
])
def test_a_wrong_expired_or_out_of_scope_token_is_refused(hs_gateway, token, status, says):
    value = token()
    for url in (f"{hs_gateway.url}/events/user.1?token={value}",
                f"{hs_gateway.url}/poll/user.1?token={value}"):
        response = get(url)
        assert response.status_code == status
        body = refusal(response)
        assert says in body["detail"] and body["channel"] == "user.1"
        assert value not in response.text  # an error never echoes the token


def test_a_request_naming_several_channels_needs_every_private_one_covered(hs_gateway):
    url = f"{hs_gateway.url}/events?channel=news&channel=user.1&channel=room.a"
    refused = get(f"{url}&token={token_for('user.1')}")
    assert refused.status_code == 403 and refusal(refused)["channel"] == "room.a"
    with live_stream(f"{url}&token={token_for('user.*', 'room.a')}") as stream:
        hs_gateway.publish("room.a", {"data": "in the room"})
        hs_gateway.publish("news", {"data": "news"})
        assert [e.data for e in stream.wait_events(2)] == ["in the room", "news"]


@pytest.mark.parametrize("carrier", ["bearer", "cookie", "query"])
def test_a_token_is_accepted_in_each_carrier(hs_gateway, carrier):
    token = token_for("user.7")
    url, headers = f"{hs_gateway.url}/events/user.7", {}
    if carrier == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif carrier == "cookie":
        headers["Cookie"] = f"theme=dark; sse_gateway_token={token}; lang=fr"
    else:
        url += f"?token={token}"
    with live_stream(url, headers) as stream:
        hs_gateway.publish("user.7", {"data": "yours"})
        assert [e.data for e in stream.wait_events(1)] == ["yours"]
    poll = get(url.replace("/events/", "/poll/") + ("&" if "?" in url else "?") + "timeout=0",
               headers=headers)
    assert poll.status_code == 200, poll.text


def test_carriers_are_taken_in_order_header_then_cookie_then_query(hs_gateway):
    good, bad = token_for("user.7"), token_for("user.8")
    url = f"{hs_gateway.url}/poll/user.7?timeout=0"
    cases = [  # (headers, query token, status): the first carrier present decides
        ({"Authorization": f"Bearer {good}", "Cookie": f"sse_gateway_token={bad}"}, bad, 200),
        ({"Authorization": f"Bearer {bad}"}, good, 403),
        ({"Cookie": f"sse_gateway_token={good}"}, bad, 200),
        ({"Cookie": f"sse_gateway_token={bad}"}, good, 403),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, good, 200),  # not a bearer: no token there
    ]
    for headers, query, status in cases:
        assert get(f"{url}&token={query}", headers=headers).status_code == status, headers


def test_the_token_cookie_name_is_configurable(start_gateway):
    gateway = start_gateway(*PRIVATE, "--subscribe-key", SECRET, "--token-cookie", "push")
    url = f"{gateway.url}/poll/user.7?timeout=0"
    token = token_for("user.7")
    assert get(url, headers={"Cookie": f"push={token}"}).status_code == 200
    assert get(url, headers={"Cookie": f"sse_gateway_token={token}"}).status_code == 401


def test_audience_and_issuer_are_required_when_configured(start_gateway):
    gateway = start_gateway(*PRIVATE, "--subscribe-key", SECRET, "--token-audience", "push",
                            "--token-issuer", "https://app.example")
    url = f"{gateway.url}/poll/user.7?timeout=0&token="
    good = token_for("user.7", audience="push", issuer="https://app.example")
    assert get(url + good).status_code == 200
    for wrong in (token_for("user.7"), token_for("user.7", audience="other",
                                                 issuer="https://app.example"),
                  token_for("user.7", audience="push", issuer="https://evil.example")):
        assert get(url + wrong).status_code == 401


# -- keys and algorithms ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict, claims: dict, secret: bytes = b"") -> str:
    """A JWT made by hand, as an attacker would: any `alg`, HMAC-signed with `secret`."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing_input}.{_b64(signature)}"


def test_es256_tokens_are_verified_with_the_public_key(start_gateway, es256_keys):
    private_pem, public_path = es256_keys
    gateway = start_gateway(*PRIVATE, "--subscribe-public-key", str(public_path))
    token = mint(private_pem, subscribe=["user.*"], ttl=60)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "ES256"
    with live_stream(f"{gateway.url}/events/user.3?token={token}") as stream:
        gateway.publish("user.3", {"data": "signed"})
        assert [e.data for e in stream.wait_events(1)] == ["signed"]
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    assert get(f"{gateway.url}/poll/user.3?token={mint(other, subscribe=['user.*'])}"
               ).status_code == 401
    # No secret configured: HS256 is not accepted at all.
    response = get(f"{gateway.url}/poll/user.3?token={token_for('user.3')}")
    assert response.status_code == 401 and "'HS256' are not accepted" in response.json()["detail"]


@pytest.mark.parametrize("with_secret", [False, True])
def test_alg_none_and_hs256_signed_with_the_public_key_are_refused(
        start_gateway, es256_keys, with_secret):
    _, public_path = es256_keys
    args = ["--subscribe-key", SECRET] if with_secret else []
    gateway = start_gateway(*PRIVATE, "--subscribe-public-key", str(public_path), *args)
    claims = {"exp": int(time.time()) + 60, "subscribe": ["user.*"]}
    attempts = [
        forged({"alg": "none", "typ": "JWT"}, claims),
        forged({"alg": "None", "typ": "JWT"}, claims),
        # The public key's PEM, which anyone may have, as an HMAC secret.
        forged({"alg": "HS256", "typ": "JWT"}, claims, public_path.read_bytes()),
        forged({"alg": "HS256", "typ": "JWT"}, claims, public_path.read_bytes().strip()),
    ]
    for token in attempts:
        response = get(f"{gateway.url}/poll/user.1?timeout=0&token={token}")
        assert response.status_code == 401, (token, response.text)
    # The same forging, done with the right secret, passes: the refusals above are not luck.
    if with_secret:
        genuine = forged({"alg": "HS256", "typ": "JWT"}, claims, SECRET.encode())
        assert get(f"{gateway.url}/poll/user.1?timeout=0&token={genuine}").status_code == 200


# -- lifetime -----------------------------------------------------------------------------------


def test_a_stream_ends_with_the_expiry_event_when_its_token_expires(hs_gateway):
    token = token_for("user.5", ttl=2)
    exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    with live_stream(f"{hs_gateway.url}/events/user.5?token={token}") as stream:
        event_id = hs_gateway.publish("user.5", {"data": "before"}).json()["id"]
        stream.wait_events(1)
        stream.read_to_end(10)
        assert time.time() >= exp - 0.05  # not before the token's exp (timer granularity)
        [before, expired] = stream.events
        assert (before.data, before.last_event_id) == ("before", event_id)
        assert expired.type == "gateway-auth-expired"
        assert json.loads(expired.data) == {"channels": ["user.5"], "reason": "expired"}
        assert expired.last_event_id == event_id  # the cursor stays: resume from it
    # A fresh token resumes from that id: nothing lost meanwhile.
    missed = hs_gateway.publish("user.5", {"data": "meanwhile"}).json()["id"]
    with live_stream(f"{hs_gateway.url}/events/user.5?token={token_for('user.5')}"
                     f"&lastEventId={event_id}") as stream:
        [event] = stream.wait_events(1)
        assert (event.data, event.last_event_id) == ("meanwhile", missed)


def test_a_padded_stream_ends_with_the_expiry_event_too(hs_gateway):
    token = token_for("user.5", ttl=2)
    with Stream(f"{hs_gateway.url}/events/user.5?transport=stream&token={token}") as stream:
        stream.read_to_end(10)
        assert [e.type for e in stream.events] == ["gateway-auth-expired"]


def test_public_streams_have_no_expiry(hs_gateway):
    token = token_for("user.5", ttl=1)
    # A token on a public channel does not limit it.
    with live_stream(f"{hs_gateway.url}/events/news?token={token}") as stream:
        stream.wait_for(lambda s: s.body.count(b": keepalive") >= 3, 10)
        assert not stream.ended and stream.events == []


def test_a_long_poll_held_past_its_expiry_is_answered_with_the_expiry_event(hs_gateway):
    token = token_for("user.5", ttl=2)
    exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    response = get(f"{hs_gateway.url}/poll/user.5?token={token}&timeout=20")
    assert response.status_code == 200
    assert time.time() >= exp - 0.05
    body = response.json()
    assert body["events"] == [{"event": "gateway-auth-expired",
                               "data": '{"channels":["user.5"],"reason":"expired"}'}]
    assert body["lastEventId"]  # the cursor comes back, to resume from with a fresh token
    # Events before the expiry come as usual, without it.
    early = get(f"{hs_gateway.url}/poll/user.5?token={token_for('user.5')}"
                f"&lastEventId={body['lastEventId']}&timeout=0")
    assert early.json()["events"] == []


# -- publishing with a token ---------------------------------------------------------------------


def test_a_publish_token_is_scoped_to_its_channels(start_gateway):
    gateway = start_gateway("--subscribe-key", SECRET, "--publish-token", "static-token")
    url = f"{gateway.url}/publish/"

    def publish(channel, token):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(url + channel, json={"data": "x"}, headers=headers, timeout=10)

    scoped = publish_token(["orders.*"], SECRET)
    assert publish("orders.1", scoped).status_code == 200
    assert publish("orders.2", "static-token").status_code == 200
    assert publish("orders.3", None).status_code == 401
    for channel, token, says in [
            ("chat", scoped, "does not allow publishing to channel 'chat'"),
            ("orders.1", token_for("orders.1"), "does not allow publishing"),  # subscribe only
            ("orders.1", publish_token(["orders.*"], OTHER_SECRET), "Signature"),
            ("orders.1", mint(SECRET, publish=["orders.*"], ttl=1, now=time.time() - 10),
             "expired"),
            ("orders.1", "wrong-static", "not valid")]:
        response = publish(channel, token)
        assert response.status_code == 403, (channel, response.text)
        assert says in response.json()["detail"] and token not in response.text


def test_a_batch_publishes_with_a_publish_token_only_to_its_channels(start_gateway):
    gateway = start_gateway("--subscribe-key", SECRET, "--publish-token", "static-token")
    scoped = {"Authorization": f"Bearer {publish_token(['orders.*'], SECRET)}"}

    def batch(*channels):
        body = [{"channel": channel, "data": channel} for channel in channels]
        return requests.post(f"{gateway.url}/publish/", json=body, headers=scoped, timeout=10)

    assert batch("orders.1", "orders.2").json()["count"] == 2
    refused = batch("orders.3", "chat", "orders.4")
    assert refused.status_code == 403
    assert "does not allow publishing to channel 'chat'" in refused.json()["detail"]
    # All or nothing: the refused batch's other events were not published either.
    history = requests.get(f"{gateway.url}/poll/orders.3?lastEventId=0-0&timeout=0",
                           timeout=10).json()
    assert history["events"] == []
    assert requests.get(f"{gateway.url}/poll/orders.1?lastEventId=0-0&timeout=0",
                        timeout=10).json()["events"][0]["data"] == "orders.1"


# -- settings ------------------------------------------------------------------------------------


def serve_error(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", "1", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=30,
                            preexec_fn=die_with_parent())
    assert result.returncode == 2, result
    return result.stderr


@pytest.mark.parametrize("args, says", [
    (["--private-channel", "user.*"], "need a way to authorize"),
    (["--private-channel", "user/*", "--subscribe-key", SECRET], "private-channel"),
    (["--subscribe-key", "short"], "at least 32 bytes"),
    (["--subscribe-public-key", "/nonexistent.pem"], "cannot be read"),
    (["--auth-url", "ftp://app"], "auth-url"),
])
def test_bad_authorization_settings_stop_the_start_with_a_message(args, says):
    assert says in serve_error(*args)


def test_the_token_command_mints_a_token_the_gateway_accepts(start_gateway):
    gateway = start_gateway(*PRIVATE, "--subscribe-key", SECRET)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--subscribe", "user.42", "--ttl", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, preexec_fn=die_with_parent(),
        env={"SSE_GATEWAY_SUBSCRIBE_KEY": SECRET, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert get(f"{gateway.url}/poll/user.42?timeout=0&token={token}").status_code == 200
    assert get(f"{gateway.url}/poll/user.43?timeout=0&token={token}").status_code == 403


def test_streams_refused_leave_nothing_attached(hs_gateway):
    for _ in range(20):
        assert get(f"{hs_gateway.url}/events/user.1").status_code == 401
        with Stream(f"{hs_gateway.url}/events/user.1?transport=stream") as stream:
            stream.read_to_end(5)
            assert stream.ended and [e.type for e in stream.events] == ["gateway-refused"]
    health = get(f"{hs_gateway.url}/healthz").json()
    assert health["subscribers"] == 0 and health["channels"] == 0
