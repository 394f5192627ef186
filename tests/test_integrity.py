"""No message, id or outage stops, poisons or black-holes delivery: real gateways, a real
redis-server, real sockets.

One validation rule meets every message from outside where it enters (a publish body or query,
a raw PUBLISH, the Lua script, a history entry read back): what fails is refused with a 400
naming the field over HTTP, and skipped, counted and logged from Redis; it never reaches a
client nor stops the others. A cursor the gateway cannot use gets `gateway-reset`, never a 5xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import redis
import requests
from conftest import ROOT, wait_until
from sse_client import Stream, subscribed

from gateway.message import Message
from gateway.redis_schema import PUBLISH_SCRIPT, history_key, publish_args

RESET = "gateway-reset"
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
# What JavaScript's JSON.stringify makes of a string cut in the middle of an emoji.
LONE_SURROGATE = '{"data":"\\ud83d"}'


# -- helpers --------------------------------------------------------------------------------------


def counters(gateway) -> dict:
    """/healthz, which must answer 200."""
    response = requests.get(gateway.url + "/healthz", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def post(gateway, channel: str, body: bytes | str, headers=None, params=None) -> requests.Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return requests.post(f"{gateway.url}/publish/{channel}", data=data, headers=headers or JSON,
                         params=params, timeout=10)


def refused(response: requests.Response, error: str, names: str) -> None:
    """A 400 JSON error of kind `error` whose detail names `names`."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error, body
    assert names in body["detail"], body


def publish_ok(gateway, channel: str, data: str) -> str:
    response = gateway.publish(channel, {"data": data})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def datas(stream: Stream) -> list[str]:
    return [e.data for e in stream.events if e.type != RESET]


def resets(stream: Stream) -> list[dict]:
    return [json.loads(e.data) for e in stream.events if e.type == RESET]


def wait_for_data(stream: Stream, data: str, timeout: float = 10.0) -> None:
    stream.wait_for(lambda s: any(e.data == data for e in s.events), timeout)


def resumed(url: str, cursor: str) -> Stream:
    """A stream resumed from `cursor`, with its whole backlog read (up to the cursor line)."""
    stream = Stream(url, {"Last-Event-ID": cursor})
    try:
        assert stream.status == 200, stream.body
        stream.wait_for(subscribed)
    except BaseException:
        stream.close()
        raise
    return stream


def redis_args(server) -> list[str]:
    return ["--redis-url", server.url, "--heartbeat", "1"]


def no_subscribers_left(gateway) -> bool:
    body = counters(gateway)
    return body["subscribers"] == 0 and body["channels"] == 0


# -- a raw PUBLISH cannot stop delivery ---------------------------------------------------------


def test_raw_publish_of_a_lone_surrogate_is_skipped_and_every_channel_keeps_delivering(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway(*redis_args(redis_db))
    emoji = open_stream(gateway.url + "/events/emoji")
    other = open_stream(gateway.url + "/events/other")
    result = subprocess.run(["redis-cli", "-p", str(redis_db.port), "PUBLISH", "emoji",
                             LONE_SURROGATE], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "1"
    wait_until(lambda: counters(gateway)["refused"] == 1, message="the message to be refused")

    publish_ok(gateway, "other", "on another channel")
    publish_ok(gateway, "emoji", "on the same channel")
    redis_db.client.publish("other", '{"data": "raw, after it"}')
    wait_for_data(other, "raw, after it")
    wait_for_data(emoji, "on the same channel")
    assert datas(other) == ["on another channel", "raw, after it"]
    assert datas(emoji) == ["on the same channel"]
    # New channels are still subscribed at once (a dead listener made them wait 5 s for a 503).
    fresh = open_stream(gateway.url + "/events/fresh")
    publish_ok(gateway, "fresh", "new channel")
    wait_for_data(fresh, "new channel")

    body = counters(gateway)
    assert (body["status"], body["refused"], body["listener_restarts"]) == ("ok", 1, 0)
    log = gateway.log()
    assert "channel 'emoji'" in log and "lone surrogate" in log
    assert "Traceback" not in log


def test_raw_publishes_that_are_not_valid_messages_are_skipped_counted_and_text_still_arrives(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway(*redis_args(redis_db))
    stream = open_stream(gateway.url + "/events/raw")
    refused_payloads = [
        b'{"data": "\xff"}',  # not UTF-8
        b"\xff\xfe plain text that is not UTF-8",
        b'{"data": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8 bytes
        b'{"data": NaN}',
        b'{"data": [1, -Infinity]}',
        b'{"data": 1e999}',
        b'{"data": "x", "type": "\\udfff"}',
        b'{"data": {"\\ud800": 1}}',  # in a key, nested
        b'{"data": "x", "id": "a\\ud800b"}',
        b'{"data": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # too deep
    ]
    for payload in refused_payloads:
        assert redis_db.client.publish("raw", payload) == 1
    # Text that is no JSON object is data, whatever it looks like.
    texts = ["NaN", "Infinity", "[1, NaN]", "[" * 5000]
    for text in texts:
        redis_db.client.publish("raw", text)
    redis_db.client.publish("raw", '{"data": "the last one", "type": "done"}')
    wait_for_data(stream, "the last one")
    assert datas(stream) == texts + ["the last one"]
    wait_until(lambda: counters(gateway)["refused"] == len(refused_payloads),
               message=f"{len(refused_payloads)} refused messages")
    assert gateway.log().count("skipped a malformed message on channel 'raw'") == len(
        refused_payloads)


def test_raw_publish_with_a_stream_id_neither_moves_the_position_nor_hides_later_events(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway(*redis_args(redis_db))
    stream = open_stream(gateway.url + "/events/sid")
    [before] = [publish_ok(gateway, "sid", "before")]
    wait_for_data(stream, "before")
    result = subprocess.run(
        ["redis-cli", "-p", str(redis_db.port), "PUBLISH", "sid",
         '{"data":"x","stream_id":"99999999999999-0"}'],
        capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "1"  # the gateway process has the channel subscribed
    wait_for_data(stream, "x")
    # Delivered as a raw message: no id line, so the client's position stays.
    assert stream.parser.last_event_id == before

    response = gateway.publish("sid", {"data": "after"})
    assert response.status_code == 200
    assert response.json()["receivers"] == 1
    wait_for_data(stream, "after")
    assert [(e.data, e.last_event_id) for e in stream.events] == [
        ("before", before), ("x", before), ("after", response.json()["id"])]
    with resumed(gateway.url + "/events/sid", before) as again:
        assert datas(again) == ["after"] and resets(again) == []


# -- the Lua script -------------------------------------------------------------------------------


def test_lua_script_refuses_what_it_can_check_and_stores_nothing(start_gateway, redis_db,
                                                                 open_stream):
    gateway = start_gateway(*redis_args(redis_db))
    stream = open_stream(gateway.url + "/events/lua")
    script = redis_db.client.register_script(PUBLISH_SCRIPT)

    def run(message: str | bytes, keys=None, live=None):
        default_keys, args = publish_args("", "lua", message, 100, 60_000)
        if live is not None:
            args[0] = live
        return script(keys=keys or default_keys, args=args)

    refusals = {
        LONE_SURROGATE: "not JSON",
        '{"data":"\\udc00"}': "not JSON",
        '{"data":"ok","id":"\\ud83d\\u0041"}': "not JSON",
        '{"data": "x", "retry": NaN}': "NaN",
        '{"data": "x", "extra": [1, Infinity]}': "NaN",
        "[1]": "JSON object",
        "just text": "not JSON",
        '{"type": "x"}': "'data'",
        '{"data": null}': "'data'",
        '{"data": 5}': "'data'",
        '{"data": "x", "type": "a\\nb"}': "'type'",
        '{"data": "x", "id": "a\\u0000b"}': "'id'",
        '{"data": "x", "retry": 1.5}': "'retry'",
        '{"data": "x", "retry": -1}': "'retry'",
    }
    for message, reason in refusals.items():
        with pytest.raises(redis.ResponseError) as raised:
            run(message)
        assert str(raised.value).startswith("INVALID ") and reason in str(raised.value), message
    # Names that are not one channel's: the old layout's plain pub/sub name, or a mismatch.
    for keys, live in ((None, "lua"), (None, "sse-gateway/live/other"),
                       (["sse-gateway:history:other"], None)):
        with pytest.raises(redis.ResponseError, match="^INVALID KEYS"):
            run('{"data": "x"}', keys=keys, live=live)
    assert redis_db.client.exists(history_key("", "lua"), history_key("", "other")) == 0

    event_id, receivers = run('{"data": "\\ud83d\\ude00 漢字", "type": "ok"}')
    assert receivers == 1
    wait_for_data(stream, "😀 漢字")
    assert [(e.type, e.data, e.last_event_id) for e in stream.events] == [
        ("ok", "😀 漢字", event_id.decode())]
    assert counters(gateway)["refused"] == 0


def test_what_the_script_cannot_check_is_skipped_when_read_live_and_from_history(
        start_gateway, redis_db, open_stream):
    # Invalid UTF-8 bytes pass cjson (checking them in Lua costs ~60 ns a byte of Redis time).
    gateway = start_gateway(*redis_args(redis_db))
    stream = open_stream(gateway.url + "/events/bytes")
    cursor = stream.parser.last_event_id
    script = redis_db.client.register_script(PUBLISH_SCRIPT)
    for message in (b'{"data": "\xff"}', b'{"data": "\xed\xa0\x80"}', '{"data": "fine"}'):
        script(*publish_args("", "bytes", message, 100, 60_000))
    wait_for_data(stream, "fine")
    assert datas(stream) == ["fine"]
    wait_until(lambda: counters(gateway)["refused"] == 2, message="two refused live messages")
    with resumed(gateway.url + "/events/bytes", cursor) as again:
        assert datas(again) == ["fine"]
    assert counters(gateway)["skipped"] == 2


# -- history already holding invalid entries ------------------------------------------------------


POISON = [
    {"m": LONE_SURROGATE},
    {"m": b'{"data": "\xff\xfe"}'},
    {"m": '{"data": NaN}'},
    {"m": '{"type": "no data"}'},
    {"m": '{"data": "x", "type": "a\\nb"}'},
    {"other": "no message field"},
]


def poison_history(client, channel: str) -> None:
    """What an older gateway, or a foreign writer, may have left: valid entries around bad ones."""
    key = history_key("", channel)
    client.xadd(key, {"m": '{"data": "first"}'})
    for fields in POISON:
        client.xadd(key, fields)
    client.xadd(key, {"m": '{"data": "last"}'})


def test_invalid_history_entries_are_skipped_and_counted_on_every_resume_never_a_500(
        start_gateway, redis_db):
    gateway = start_gateway(*redis_args(redis_db))
    poison_history(redis_db.client, "poison")
    resumes = 13
    for number in range(resumes):
        with resumed(gateway.url + "/events/poison", "0-0") as stream:
            assert datas(stream) == ["first", "last"], number
            assert resets(stream) == []
    polled = requests.get(gateway.url + "/poll/poison", params={"lastEventId": "0-0"}, timeout=10)
    assert polled.status_code == 200, polled.text
    assert [e["data"] for e in polled.json()["events"]] == ["first", "last"]
    several = requests.get(gateway.url + "/poll", timeout=10, params={
        "channel": ["poison", "calm"], "lastEventId": "poison=0-0,calm=0-0"})
    assert several.status_code == 200, several.text
    assert [e["data"] for e in several.json()["events"]] == ["first", "last"]

    wait_until(lambda: no_subscribers_left(gateway), message="every stream to leave the hub")
    body = counters(gateway)
    assert body["skipped"] == len(POISON) * (resumes + 2)
    assert body["refused"] == 0
    assert "history entry" in gateway.log() and "channel 'poison'" in gateway.log()


def test_invalid_entries_met_while_filling_a_gap_after_a_reconnect_are_skipped(
        start_gateway, redis_db, open_stream):
    gateway = start_gateway(*redis_args(redis_db))
    stream = open_stream(gateway.url + "/events/gap")
    publish_ok(gateway, "gap", "live")
    wait_for_data(stream, "live")
    # Written while nobody listens live: only the gap fill after the reconnect delivers them.
    poison_history(redis_db.client, "gap")
    redis_db.client.client_kill_filter(_type="pubsub")
    wait_for_data(stream, "last", timeout=20)
    assert datas(stream) == ["live", "first", "last"]
    assert counters(gateway)["skipped"] == len(POISON)
    publish_ok(gateway, "gap", "after")
    wait_for_data(stream, "after")


# -- HTTP publishing: refused at the edge, on both brokers ----------------------------------------


LONE_SURROGATE_BODIES = [
    ('{"data": "\\ud800"}', "'data'"),
    ('{"data": "pair then lone \\ud83d\\ude00\\ud83d"}', "'data'"),
    ('{"data": {"list": ["ok", "\\udfff"]}}', "'data'"),
    ('{"data": {"\\ud800": 1}}', "'data'"),
    ('{"data": "x", "event": "\\ud800"}', "'event'"),
    ('{"data": "x", "type": "\\udbff"}', "'event'"),
    ('{"data": "x", "id": "\\udc00"}', "'id'"),
    ('{"data": "x", "\\ud800": 1}', "unknown field"),
]


def test_publish_refuses_a_lone_surrogate_anywhere_and_stores_nothing(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/x")
    for body, field in LONE_SURROGATE_BODIES:
        refused(post(gateway, "x", body), "invalid message", field)
    good = publish_ok(gateway, "x", "valid: \U0001F600")
    wait_for_data(stream, "valid: \U0001F600")
    assert datas(stream) == ["valid: \U0001F600"]
    # Nothing invalid was stored: every resume is served, none fails.
    for _ in range(3):
        with resumed(gateway.url + "/events/x", "0-0") as again:
            assert datas(again) == ["valid: \U0001F600"]
    polled = requests.get(gateway.url + "/poll/x", params={"lastEventId": "0-0"}, timeout=10)
    assert polled.status_code == 200
    assert [(e["data"], e["id"]) for e in polled.json()["events"]] == [("valid: \U0001F600", good)]
    body = counters(gateway)
    assert (body["refused"], body["skipped"]) == (len(LONE_SURROGATE_BODIES), 0)


@pytest.mark.parametrize("body, named", [
    ('{"data": NaN}', "NaN"), ('{"data": Infinity}', "Infinity"),
    ('{"data": [-Infinity]}', "-Infinity"), ('{"data": {"n": 1e999}}', "1e999"),
    ('{"data": "x", "retry": NaN}', "NaN")])
def test_publish_refuses_nan_and_infinity_which_are_not_json(gateway, body, named):
    refused(post(gateway, "n", body), "invalid json", named)
    assert counters(gateway)["refused"] == 1


def test_publish_query_and_body_are_decoded_strictly_as_utf8(gateway, open_stream):
    stream = open_stream(gateway.url + "/events/q")
    refused(post(gateway, "q?event=%ff%fe", "hi", TEXT), "invalid query", "'event'")
    refused(post(gateway, "q?id=ok%c3", "hi", TEXT), "invalid query", "'id'")
    refused(post(gateway, "q?retry=%D9%A3", "hi", TEXT), "invalid message", "'retry'")
    refused(post(gateway, "q", b"\xff\xfe", TEXT), "invalid text", "UTF-8")
    refused(post(gateway, "q", b'{"data": "\xed\xa0\x80"}'), "invalid json", "UTF-8")
    refused(post(gateway, "q", '{"data": "utf-16"}'.encode("utf-16")), "invalid json", "UTF-8")
    assert post(gateway, "q?event=%C3%A9t%C3%A9&retry=5", "\u00e9t\u00e9 data", TEXT).ok
    wait_for_data(stream, "\u00e9t\u00e9 data")
    assert [(e.type, e.data) for e in stream.events] == [("\u00e9t\u00e9", "\u00e9t\u00e9 data")]
    assert counters(gateway)["refused"] == 6


# -- cursors the gateway cannot use ---------------------------------------------------------------


TOO_LARGE = ["99999999999999999999-0", "18446744073709551616-0", "0-18446744073709551616"]
LARGEST = "18446744073709551615-18446744073709551615"


@pytest.mark.parametrize("cursor, reason", [*((c, "unknown-id") for c in TOO_LARGE),
                                            (LARGEST, "history-lost")])
@pytest.mark.parametrize("how", ["header", "query"])
def test_cursor_beyond_64_bits_or_the_largest_id_resets_and_the_stream_goes_on(
        gateway, cursor, reason, how):
    publish_ok(gateway, "big", "old")
    url = gateway.url + "/events/big"
    stream = (Stream(url, {"Last-Event-ID": cursor}) if how == "header"
              else Stream(url + "?lastEventId=" + cursor))
    with stream:
        assert stream.status == 200, stream.body
        stream.wait_for(subscribed)
        assert resets(stream) == [{"channels": ["big"], "reason": reason}]
        assert stream.events[0].type == RESET
        publish_ok(gateway, "big", "live")
        wait_for_data(stream, "live")


@pytest.mark.parametrize("cursor, lost", [
    ("a=99999999999999999999-0,b=0-0", ["a", "b"]),
    ("a=0-0,b=0-18446744073709551616", ["a", "b"]),
    (f"a={LARGEST},b=0-0", ["a"])])
def test_several_channel_cursor_beyond_64_bits_resets_on_events_and_poll(gateway, cursor, lost):
    reason = "history-lost" if LARGEST in cursor else "unknown-id"
    url = gateway.url + "/events?channel=a&channel=b"
    with Stream(url, {"Last-Event-ID": cursor}) as stream:
        assert stream.status == 200, stream.body
        stream.wait_for(subscribed)
        assert resets(stream) == [{"channels": lost, "reason": reason}]
        publish_ok(gateway, "b", "live")
        wait_for_data(stream, "live")
    polled = requests.get(gateway.url + "/poll", timeout=10, params={
        "channel": ["a", "b"], "lastEventId": cursor, "timeout": "0.1"})
    assert polled.status_code == 200, polled.text
    [event] = [e for e in polled.json()["events"] if e["event"] == RESET]
    assert json.loads(event["data"]) == {"channels": lost, "reason": reason}


@pytest.mark.parametrize("cursor", [*TOO_LARGE, LARGEST])
def test_long_poll_with_a_cursor_beyond_64_bits_resets(gateway, cursor):
    publish_ok(gateway, "p", "old")
    polled = requests.get(gateway.url + "/poll/p", timeout=10,
                          params={"lastEventId": cursor, "timeout": "0.1"})
    assert polled.status_code == 200, polled.text
    assert polled.json()["events"][0]["event"] == RESET


# -- a failed stream start leaves nothing behind ----------------------------------------------


def test_failed_stream_starts_leave_no_subscriber_in_the_hub():
    # In process: nothing the gateway accepts can make a start fail any more, so a message is
    # put into the embedded broker's history past the validation, as a bug would.
    from gateway.auth.authorizer import Authorizer
    from gateway.brokers.embedded import EmbeddedBroker
    from gateway.config import Config
    from gateway.cors import subscribe_policy
    from gateway.events_endpoint import EventsEndpoint
    from gateway.hub import Hub
    from gateway.metrics import Metrics

    broker = EmbeddedBroker()
    hub = Hub(broker, Config().max_buffered_bytes)
    broker.start(hub.dispatch)
    broker.publish(Message("leak", "\ud800"))  # cannot be encoded
    endpoint = EventsEndpoint(Config(), hub, subscribe_policy(()), Authorizer.from_config(Config()),
                              Metrics(hub, broker))
    statuses = []
    for _ in range(13):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/events/leak", "QUERY_STRING": "",
                   "HTTP_LAST_EVENT_ID": "0-0"}
        endpoint(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["500 Internal Server Error"] * 13
    assert (hub.subscriber_count, hub.channel_count) == (0, 0)


# -- the listener's supervisor --------------------------------------------------------------------


SUPERVISED = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import json, sys, time
    import gevent
    from gateway import Publisher
    from gateway.brokers import BrokerUnavailable
    from gateway.brokers.redis import RedisBroker

    url = sys.argv[1]
    got = []
    broker = RedisBroker(url)
    broker.start(lambda message: got.append(message.data))
    assert broker.wait_ready(10)
    broker.subscribe("sup")
    publisher = Publisher(url)

    def wait_for(count):
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            gevent.sleep(0.01)

    publisher.publish("sup", "before")
    wait_for(1)
    # The listener ends for a reason nothing handles (as a bug would make it).
    broker._listener.kill(RuntimeError("boom"), block=True)
    deadline = time.monotonic() + 5
    while broker.listener_restarts == 0 and time.monotonic() < deadline:
        gevent.sleep(0.001)
    try:
        broker.check()
        down = None
    except BrokerUnavailable as error:
        down = str(error)
    publisher.publish("sup", "while it was down")
    ready = broker.wait_ready(10)
    broker.check()
    publisher.publish("sup", "after")
    wait_for(3)
    broker.subscribe("new")
    publisher.publish("new", "on a new channel")
    wait_for(4)
    print(json.dumps({"down": down, "ready": ready, "got": got,
                      "restarts": broker.listener_restarts}))
    broker.stop()
""")


def test_listener_that_ends_is_restarted_resubscribes_and_loses_nothing(redis_db):
    result = subprocess.run([sys.executable, "-c", SUPERVISED, redis_db.url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert "RuntimeError('boom')" in outcome["down"] and "restarted" in outcome["down"]
    assert outcome["ready"] is True
    assert outcome["restarts"] == 1
    assert outcome["got"] == ["before", "while it was down", "after", "on a new channel"]
    assert "restarting it" in result.stderr
