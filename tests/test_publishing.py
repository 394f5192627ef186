"""Publishing: authorization, every client error, /healthz, the Python API and the command line."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import requests
from child_processes import die_with_parent
from conftest import ROOT, Gateway, free_port, wait_until
from sse_client import Stream, subscribed

import gateway as gateway_package
from gateway import Publisher, PublishError
from gateway.redis_schema import history_key


def assert_json_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SSE_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=ROOT, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=timeout, check=False,
        preexec_fn=die_with_parent(),
    )


# -- authorization --------------------------------------------------------------------------


def test_publish_tokens_401_without_one_403_for_a_wrong_one_200_for_either_right_one(
        start_gateway, open_stream):
    gateway = start_gateway("--publish-token", "s3cret", "--publish-token", "n3xt-token")
    stream = open_stream(gateway.url + "/events/chat")
    attempts = [
        ({}, 401),
        ({"Authorization": "Basic s3cret"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": "Bearer s3cre"}, 403),
        ({"Authorization": "Bearer S3CRET"}, 403),
        ({"Authorization": "Bearer s3cret"}, 200),
        ({"Authorization": "Bearer n3xt-token"}, 200),
        # With tokens, where the request comes from does not matter.
        ({"Authorization": "Bearer s3cret", "X-Forwarded-For": "203.0.113.7"}, 200),
    ]
    accepted = []
    for number, (headers, status) in enumerate(attempts):
        response = gateway.publish("chat", {"data": f"attempt {number}"}, headers=headers)
        if status == 200:
            assert response.status_code == 200, (headers, response.text)
            accepted.append(f"attempt {number}")
        else:
            assert_json_error(response, status)
    events = stream.wait_events(len(accepted))
    assert [e.data for e in events] == accepted
    publish_marker = gateway.publish("chat", {"data": "end"},
                                     headers={"Authorization": "Bearer s3cret"})
    assert publish_marker.status_code == 200
    stream.wait_for(lambda s: s.events[-1].data == "end")
    assert [e.data for e in stream.events] == accepted + ["end"]


def test_without_a_token_loopback_may_publish_but_forwarded_requests_may_not(
        start_gateway, open_stream):
    gateway = start_gateway()
    stream = open_stream(gateway.url + "/events/chat")
    for headers in ({"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "127.0.0.1"},
                    {"X-Real-IP": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
        response = gateway.publish("chat", {"data": f"forwarded {headers}"}, headers=headers)
        body = assert_json_error(response, 403)
        assert "loopback" in body["detail"]
    response = gateway.publish("chat", {"data": "local"})
    assert response.status_code == 200, response.text
    [event] = stream.wait_events(1)
    assert event.data == "local"


def non_loopback_ipv4() -> str | None:
    candidates = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            candidates.add(info[4][0])
    except OSError:
        pass
    try:
        listing = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                                 text=True, timeout=10, check=False,
                                 preexec_fn=die_with_parent()).stdout
        candidates.update(re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", listing))
    except (OSError, subprocess.SubprocessError):
        pass
    usable = sorted(a for a in candidates if not ipaddress.ip_address(a).is_loopback)
    return usable[0] if usable else None


def test_without_a_token_a_request_to_a_non_loopback_address_is_refused(start_gateway):
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    gateway = start_gateway("--host", "0.0.0.0")
    response = requests.post(f"http://{address}:{gateway.port}/publish/chat",
                             json={"data": "from outside"}, timeout=10)
    body = assert_json_error(response, 403)
    assert "loopback" in body["detail"]
    assert gateway.publish("chat", {"data": "from inside"}).status_code == 200


# -- every client error --------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
MAX_MESSAGE_SIZE = 1024


def _case(method: str, path: str, status: int, body: bytes | None = None,
          headers: dict[str, str] | None = None, params=None):
    return {"method": method, "path": path, "status": status, "data": body,
            "headers": headers or {}, "params": params}


CLIENT_ERRORS = {
    "invalid_json": _case("POST", "/publish/chat", 400, b'{"data": "x",', JSON),
    "json_array": _case("POST", "/publish/chat", 400, b'["data", "x"]', JSON),
    "json_string": _case("POST", "/publish/chat", 400, b'"just a string"', JSON),
    "json_not_utf8": _case("POST", "/publish/chat", 400, b'{"data": "\xff\xfe"}', JSON),
    "missing_data": _case("POST", "/publish/chat", 400, b'{"event": "x"}', JSON),
    "null_data": _case("POST", "/publish/chat", 400, b'{"data": null}', JSON),
    "unknown_field": _case("POST", "/publish/chat", 400, b'{"data": "x", "colour": 1}', JSON),
    "negative_retry": _case("POST", "/publish/chat", 400, b'{"data": "x", "retry": -1}', JSON),
    "string_retry": _case("POST", "/publish/chat", 400, b'{"data": "x", "retry": "9"}', JSON),
    "fractional_retry": _case("POST", "/publish/chat", 400, b'{"data": "x", "retry": 1.5}', JSON),
    "boolean_retry": _case("POST", "/publish/chat", 400, b'{"data": "x", "retry": true}', JSON),
    "retry_over_a_day": _case("POST", "/publish/chat", 400,
                              b'{"data": "x", "retry": 86400001}', JSON),
    "text_retry_not_a_number": _case("POST", "/publish/chat", 400, b"x", TEXT,
                                     {"retry": "soon"}),
    "event_not_a_string": _case("POST", "/publish/chat", 400, b'{"data": "x", "event": 5}', JSON),
    "id_not_a_string": _case("POST", "/publish/chat", 400, b'{"data": "x", "id": 5}', JSON),
    "event_and_type_disagree": _case("POST", "/publish/chat", 400,
                                     b'{"data": "x", "event": "a", "type": "b"}', JSON),
    "text_not_utf8": _case("POST", "/publish/chat", 400, b"\xff\xfe\xfd", TEXT),
    "publish_bad_channel": _case("POST", "/publish/bad channel!", 400, b'{"data": "x"}', JSON),
    "publish_129_char_channel": _case("POST", "/publish/" + "c" * 129, 400, b'{"data": "x"}',
                                      JSON),
    "events_bad_channel": _case("GET", "/events/bad channel!", 400),
    "events_bad_channel_in_query": _case("GET", "/events", 400,
                                         params=[("channel", "ok"), ("channel", "bad channel!")]),
    "events_129_char_channel": _case("GET", "/events/" + "c" * 129, 400),
    "events_without_channel": _case("GET", "/events", 400),
    "events_too_many_channels": _case("GET", "/events", 400,
                                      params=[("channel", f"c{i}") for i in range(17)]),
    "unknown_path": _case("GET", "/nowhere", 404),
    "publish_without_channel": _case("POST", "/publish", 404, b'{"data": "x"}', JSON),
    "get_on_publish": _case("GET", "/publish/chat", 405),
    "put_on_publish": _case("PUT", "/publish/chat", 405, b'{"data": "x"}', JSON),
    "post_on_events": _case("POST", "/events/chat", 405, b'{"data": "x"}', JSON),
    "json_over_max_size": _case("POST", "/publish/chat", 413,
                                json.dumps({"data": "z" * MAX_MESSAGE_SIZE}).encode(), JSON),
    "text_over_max_size": _case("POST", "/publish/chat", 413, b"z" * (MAX_MESSAGE_SIZE + 1),
                                TEXT),
    "xml_body": _case("POST", "/publish/chat", 415, b"<data>x</data>",
                      {"Content-Type": "application/xml"}),
    "form_body": _case("POST", "/publish/chat", 415, b"data=x",
                       {"Content-Type": "application/x-www-form-urlencoded"}),
    "no_content_type": _case("POST", "/publish/chat", 415, b'{"data": "x"}'),
}

ALLOWED = {"get_on_publish": "POST", "put_on_publish": "POST", "post_on_events": "GET"}


@pytest.fixture(scope="module", params=["embedded", "redis"])
def limited_gateway(request):
    """One gateway per broker for the whole error table: errors must not disturb it."""
    args = ["--max-message-size", str(MAX_MESSAGE_SIZE), "--heartbeat", "1"]
    if request.param == "redis":
        # Its own prefix: its subscriptions never count as receivers in other tests.
        args += ["--redis-url", request.getfixturevalue("redis_server").url,
                 "--prefix", "client-errors:"]
    started = Gateway(args)
    yield started
    started.cleanup()


def assert_still_serves(gateway, channel: str) -> None:
    stream = Stream(f"{gateway.url}/events/{channel}")
    try:
        stream.wait_for(subscribed, 10)
        response = gateway.publish(channel, {"data": "still serving"})
        assert response.status_code == 200, response.text
        [event] = stream.wait_events(1)
        assert event.data == "still serving"
    finally:
        stream.close()


@pytest.mark.parametrize("name", CLIENT_ERRORS)
def test_client_error_gets_its_status_and_a_json_body_and_the_server_keeps_serving(
        limited_gateway, name):
    case = CLIENT_ERRORS[name]
    # Subscribed before the bad request, which names channel "chat" when it names one:
    # nothing may reach it.
    watcher = Stream(f"{limited_gateway.url}/events/chat")
    try:
        watcher.wait_for(subscribed, 10)
        response = requests.request(case["method"], limited_gateway.url + case["path"],
                                    data=case["data"], headers=case["headers"],
                                    params=case["params"], timeout=10)
        assert_json_error(response, case["status"])
        if name in ALLOWED:
            assert ALLOWED[name] in response.headers.get("Allow", "")
        marker = limited_gateway.publish("chat", {"data": "marker"})
        assert marker.status_code == 200
        [event] = watcher.wait_events(1)
        assert event.data == "marker"
    finally:
        watcher.close()
    assert_still_serves(limited_gateway, f"after-{name}".replace("_", "-"))


def test_body_of_exactly_the_maximum_message_size_is_accepted(limited_gateway):
    prefix, suffix = b'{"data": "', b'"}'
    body = prefix + b"m" * (MAX_MESSAGE_SIZE - len(prefix) - len(suffix)) + suffix
    assert len(body) == MAX_MESSAGE_SIZE
    response = requests.post(limited_gateway.url + "/publish/sized", data=body, headers=JSON,
                             timeout=10)
    assert response.status_code == 200, response.text


def test_as_many_channels_as_the_limit_are_accepted(limited_gateway):
    names = [f"c{i}" for i in range(16)]  # the default --max-channels
    stream = Stream(limited_gateway.url + "/events?" + "&".join(f"channel={n}" for n in names))
    try:
        assert stream.status == 200
        stream.wait_for(subscribed, 10)
        assert stream.parser.last_event_id == ",".join(f"{n}=0-0" for n in names)
    finally:
        stream.close()


def test_128_char_channel_name_is_accepted(limited_gateway, open_stream):
    name = "A-z_0.9:" * 16
    assert len(name) == 128
    stream = open_stream(f"{limited_gateway.url}/events/{name}")
    response = limited_gateway.publish(name, {"data": "long name"})
    assert response.status_code == 200, response.text
    assert response.json()["channel"] == name
    assert stream.wait_events(1)[0].data == "long name"


@pytest.mark.parametrize("method, path", [("POST", "/publish/chat%0A"), ("GET", "/events/chat%0A"),
                                          ("GET", "/events?channel=chat%0A")])
def test_channel_name_ending_in_a_newline_is_refused(limited_gateway, method, path):
    response = requests.request(method, limited_gateway.url + path, json={"data": "x"},
                                timeout=10, stream=True)
    try:
        # Checked before reading the body: a 200 here is an endless event stream.
        assert response.status_code == 400
        assert_json_error(response, 400)
    finally:
        response.close()


def test_chunked_body_over_the_maximum_size_is_refused_not_truncated(limited_gateway):
    watcher = Stream(f"{limited_gateway.url}/events/chunked")
    try:
        watcher.wait_for(subscribed, 10)

        def body():  # a generator: requests sends it with Transfer-Encoding: chunked
            for digit in range(10):
                yield str(digit).encode() * 300

        response = requests.post(limited_gateway.url + "/publish/chunked", data=body(),
                                 headers=TEXT, timeout=10)
        marker = limited_gateway.publish("chunked", {"data": "marker"})
        assert marker.status_code == 200
        [event] = watcher.wait_events(1)
        assert event.data == "marker", f"published {len(event.data)} of 3000 bytes"
        assert_json_error(response, 413)
    finally:
        watcher.close()


def test_deeply_nested_json_is_a_client_error_not_a_server_failure(gateway):
    depth = 20_000
    body = b'{"data": ' + b"[" * depth + b"]" * depth + b"}"
    response = requests.post(gateway.url + "/publish/chat", data=body, headers=JSON, timeout=10)
    assert response.status_code < 500, response.text
    assert "Traceback" not in gateway.log()


# -- /healthz ---------------------------------------------------------------------------------


def test_healthz_names_the_broker_and_counts_subscribers(gateway, broker_args, open_stream):
    expected = "redis" if broker_args else "embedded"
    response = requests.get(gateway.url + "/healthz", timeout=10)
    assert response.status_code == 200
    state = response.json()
    assert (state["status"], state["broker"]) == ("ok", expected)
    assert (state["subscribers"], state["channels"], state["dropped_slow"]) == (0, 0, 0)
    open_stream(gateway.url + "/events?channel=one&channel=two")
    state = requests.get(gateway.url + "/healthz", timeout=10).json()
    assert (state["subscribers"], state["channels"]) == (1, 2)


# -- the Python API -------------------------------------------------------------------------


def test_publisher_is_the_package_api():
    assert gateway_package.Publisher is Publisher
    assert "Publisher" in gateway_package.__all__


def test_python_publisher_through_redis_reaches_a_redis_backed_stream(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(gateway.url + "/events/chat")
    result = Publisher(redis_db.url).publish("chat", {"q": 1}, event="new_answer")
    assert (result["channel"], result["receivers"]) == ("chat", 1)
    [event] = stream.wait_events(1)
    assert (event.type, event.data, event.last_event_id) == ("new_answer", '{"q":1}', result["id"])


def test_python_publisher_over_http_reaches_an_embedded_gateway(start_gateway, open_stream):
    gateway = start_gateway()
    stream = open_stream(gateway.url + "/events/chat")
    result = Publisher(f"http://127.0.0.1:{gateway.port}").publish(
        "chat", "hello", event="greet", id="p-1")
    assert result["channel"] == "chat"
    [event] = stream.wait_events(1)
    assert (event.type, event.data, event.last_event_id) == ("greet", "hello", f"{result['id']} p-1")


def test_python_publisher_refuses_invalid_fields_and_sends_nothing(start_gateway, open_stream):
    gateway = start_gateway()
    stream = open_stream(gateway.url + "/events/chat")
    publisher = Publisher(gateway.url)
    for kwargs in ({"event": "bad\nname"}, {"event": "nul\0"}, {"id": "x\ry"}, {"retry": -5}):
        with pytest.raises(ValueError):
            publisher.publish("chat", "refused", **kwargs)
    with pytest.raises(ValueError):
        publisher.publish("bad channel!", "refused")
    with pytest.raises(ValueError):
        publisher.publish("chat", None)
    publisher.publish("chat", "accepted")
    [event] = stream.wait_events(1)
    assert event.data == "accepted"
    assert b"refused" not in stream.body


def test_python_publisher_refuses_an_event_larger_than_the_gateway_delivers(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--max-message-size", "1000")
    publisher = Publisher(redis_db.url, max_message_size=1000)
    with Stream(gateway.url + "/events/chat") as stream:
        stream.wait_for(subscribed)
        with pytest.raises(ValueError, match="more than max_message_size"):
            publisher.publish("chat", "refused" * 200)
        with pytest.raises(ValueError, match="^item 1: .*more than max_message_size"):
            publisher.publish_many([{"channel": "chat", "data": "fits"},
                                    {"channel": "chat", "data": "refused" * 200}])
        publisher.publish("chat", "x" * 980)  # {"data":"..."} is 991 bytes
        assert [e.data for e in stream.wait_events(1)] == ["x" * 980]
    assert redis_db.client.xlen(history_key("", "chat")) == 1  # nothing else was sent


def test_python_publisher_refuses_a_channel_name_ending_in_a_newline(redis_db):
    with pytest.raises(ValueError):
        Publisher(redis_db.url).publish("chat\n", "x")


def test_python_publisher_sends_its_token_and_reports_refusals(start_gateway, open_stream):
    gateway = start_gateway("--publish-token", "s3cret")
    stream = open_stream(gateway.url + "/events/chat")
    with pytest.raises(PublishError, match="401"):
        Publisher(gateway.url).publish("chat", "no token")
    with pytest.raises(PublishError, match="403"):
        Publisher(gateway.url, token="wrong").publish("chat", "wrong token")
    Publisher(gateway.url, token="s3cret").publish("chat", "with token")
    [event] = stream.wait_events(1)
    assert event.data == "with token"


def test_python_publisher_reports_an_unreachable_gateway():
    with pytest.raises(PublishError, match="could not reach"):
        Publisher(f"http://127.0.0.1:{free_port()}", timeout=5).publish("chat", "lost")


def test_python_publisher_refuses_an_unsupported_url():
    with pytest.raises(ValueError):
        Publisher("ftp://127.0.0.1/")


# -- the command line -------------------------------------------------------------------------


def test_cli_publish_through_the_gateway_url(start_gateway, open_stream):
    gateway = start_gateway()
    stream = open_stream(gateway.url + "/events/chat")
    result = run_cli("publish", "chat", "hello", "--event", "greet", "--url", gateway.url)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    [event] = stream.wait_events(1)
    assert (event.type, event.data, event.last_event_id) == ("greet", "hello", answer["id"])


def test_cli_publish_through_redis(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(gateway.url + "/events/chat")
    result = run_cli("publish", "chat", '{"q": 1}', "--json", "--event", "new_answer",
                     "--id", "cli-7", "--redis-url", redis_db.url)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["receivers"] == 1
    [event] = stream.wait_events(1)
    assert (event.type, event.data) == ("new_answer", '{"q":1}')
    assert event.last_event_id == f"{answer['id']} cli-7"


def test_cli_publish_to_an_unreachable_gateway_fails_with_a_message():
    result = run_cli("publish", "chat", "hello", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "could not reach" in result.stderr


CORE_OPTIONS = ["host", "port", "redis-url", "prefix", "publish-token", "heartbeat", "retry",
                "max-message-size", "max-pending", "max-channels", "history-length",
                "history-age", "shutdown-timeout", "log-level", "demo"]


def test_serve_help_lists_every_option_with_its_environment_variable():
    result = run_cli("serve", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    blocks: dict[str, str] = {}
    for block in re.split(r"\n(?=  -)", result.stdout):
        match = re.match(r"\s+(--[a-z][a-z-]*)", block)
        if match:
            blocks[match.group(1)] = " ".join(block.split())
    for name in CORE_OPTIONS:
        assert f"--{name}" in blocks, f"--{name} is not in serve --help"
    for flag, text in blocks.items():
        if flag == "--help":
            continue
        variable = "SSE_GATEWAY_" + flag[2:].upper().replace("-", "_")
        assert f"env {variable}" in text, f"{flag} does not name {variable}: {text}"


def test_environment_variable_sets_the_heartbeat(start_gateway, open_stream):
    gateway = start_gateway(env={"SSE_GATEWAY_HEARTBEAT": "1"})
    stream = open_stream(gateway.url + "/events/quiet")
    # The default heartbeat is 15 s: two keepalives within 10 s come from the variable.
    stream.wait_for(lambda s: s.body.count(b"\n: keepalive\n\n") >= 2, timeout=10)
    assert "heartbeat 1s" in gateway.log()


def test_command_line_option_wins_over_the_environment_variable(start_gateway):
    gateway = start_gateway("--heartbeat", "2", env={"SSE_GATEWAY_HEARTBEAT": "30"})
    wait_until(lambda: "listening on" in gateway.log(), 10, message="the startup log line")
    assert "heartbeat 2s" in gateway.log()


@pytest.mark.parametrize("args, env, message", [
    (["--heartbeat", "60"], {}, "heartbeat must be above 0 and below 45"),
    ([], {"SSE_GATEWAY_HEARTBEAT": "60"}, "heartbeat must be above 0 and below 45"),
    (["--heartbeat", "0"], {}, "heartbeat must be above 0 and below 45"),
    (["--max-pending", "0"], {}, "max-pending must be at least 1"),
    ([], {"SSE_GATEWAY_PORT": "eighty"}, "SSE_GATEWAY_PORT='eighty' is not a valid value"),
    (["--retry", "soon"], {}, "invalid int value"),
], ids=["heartbeat_60", "env_heartbeat_60", "heartbeat_0", "max_pending_0", "env_port_word",
        "retry_word"])
def test_invalid_setting_makes_serve_exit_nonzero_with_a_clear_message(args, env, message):
    port = [] if "SSE_GATEWAY_PORT" in env else ["--port", str(free_port())]
    result = run_cli("serve", *port, *args, env=env, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "listening on" not in result.stderr
