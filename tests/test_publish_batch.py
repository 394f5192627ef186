"""Batch publishing: POST /publish/ with NDJSON or a JSON array, the Python Publisher's
publish_many and the CLI's several events. Real gateways, a real redis-server.

A batch is checked whole before anything is stored: one bad item refuses it with a 4xx naming
the item's index, and nothing of it reaches history or a subscriber. An accepted batch is
stored in its order, each channel's events keeping theirs.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
import redis
import requests
from conftest import health
from sse_client import Stream, subscribed
from test_publishing import run_cli

from gateway import Publisher, PublishError
from gateway.publisher import CHUNK_EVENTS
from gateway.redis_schema import PUBLISH_SCRIPT, history_key, publish_many_args

NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}


def ndjson(items) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def post_batch(gateway, body: bytes, headers=None, **kwargs) -> requests.Response:
    return requests.post(f"{gateway.url}/publish/", data=body, headers=NDJSON if headers is None else headers,
                         timeout=10, **kwargs)


def stored(redis_db, channel: str) -> list[tuple[str, dict]]:
    """The channel's history in Redis: (id, message) per entry."""
    return [(raw_id.decode(), json.loads(fields[b"m"]))
            for raw_id, fields in redis_db.client.xrange(history_key("", channel))]


def as_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


# -- accepted batches ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["ndjson", "array"])
def test_a_batch_reaches_every_channel_in_order_with_the_ids_it_answers(
        start_gateway, broker_args, open_stream, encoding):
    gateway = start_gateway(*broker_args)
    streams = {name: open_stream(f"{gateway.url}/events/{name}") for name in ("a", "b", "c")}
    items = [{"channel": "abc"[i % 3], "data": f"m{i}"} for i in range(30)]
    items[4].update(event="special", id="mine-4", retry=2500)
    items[7]["data"] = {"nested": [1, "two"]}
    if encoding == "ndjson":
        response = post_batch(gateway, ndjson(items).replace(b"\n", b"\r\n", 3) + b"\n  \n")
    else:
        response = post_batch(gateway, json.dumps(items).encode(), JSON)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["count"] == 30 and len(answer["ids"]) == 30
    for name, stream in streams.items():
        mine = [(i, item) for i, item in enumerate(items) if item["channel"] == name]
        events = stream.wait_events(len(mine))
        expected_data = [item["data"] if isinstance(item["data"], str)
                         else json.dumps(item["data"], separators=(",", ":")) for _, item in mine]
        assert [e.data for e in events] == expected_data
        cursors = [answer["ids"][i] + (" mine-4" if i == 4 else "") for i, _ in mine]
        assert [e.last_event_id for e in events] == cursors
        ids = [as_id(answer["ids"][i]) for i, _ in mine]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e.data for e in streams["b"].events if e.type == "special"] == ["m4"]
    assert b"\nretry: 2500\n" in streams["b"].body


def test_a_batch_is_stored_in_history_in_its_order(start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url)
    items = [{"channel": f"h{i % 4}", "data": f"e{i}", "type": "t"} for i in range(200)]
    response = post_batch(gateway, ndjson(items))
    assert response.status_code == 200, response.text
    ids = response.json()["ids"]
    for k in range(4):
        entries = stored(redis_db, f"h{k}")
        assert [message["data"] for _, message in entries] == [f"e{i}" for i in range(k, 200, 4)]
        assert [raw_id for raw_id, _ in entries] == ids[k::4]
        assert all(message == {"data": message["data"], "type": "t"} for _, message in entries)


def test_a_resumed_stream_replays_a_batch_like_single_publishes(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    first = gateway.publish("replay", {"data": "before"}).json()["id"]
    response = post_batch(gateway, ndjson({"channel": "replay", "data": f"r{i}"}
                                          for i in range(5)))
    assert response.status_code == 200, response.text
    with Stream(f"{gateway.url}/events/replay", {"Last-Event-ID": first}) as stream:
        stream.wait_for(subscribed)
        assert [e.data for e in stream.events] == [f"r{i}" for i in range(5)]
        assert [e.last_event_id for e in stream.events] == response.json()["ids"]


def test_an_empty_batch_publishes_nothing_and_says_so(start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    for body, headers in ((b"", NDJSON), (b"\n\n", NDJSON), (b" [ ] ", JSON)):
        response = post_batch(gateway, body, headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"count": 0, "ids": []}


def test_concurrent_batches_keep_each_publishers_order_on_every_channel(start_gateway,
                                                                        redis_db):
    gateway = start_gateway("--redis-url", redis_db.url)
    errors = []

    def publisher(name: str) -> None:
        with requests.Session() as session:
            for batch in range(10):
                items = [{"channel": f"shared{i % 2}", "data": f"{name}:{batch * 20 + i}"}
                         for i in range(20)]
                response = session.post(f"{gateway.url}/publish/", data=ndjson(items),
                                        headers=NDJSON, timeout=10)
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=publisher, args=(f"p{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    for channel in ("shared0", "shared1"):
        entries = stored(redis_db, channel)
        assert len(entries) == 4 * 100
        for n in range(4):
            seqs = [int(m["data"].split(":")[1]) for _, m in entries
                    if m["data"].startswith(f"p{n}:")]
            assert seqs == sorted(seqs) and len(seqs) == 100


# -- refused batches: all or nothing ----------------------------------------------------------

GOOD = {"channel": "kept", "data": "fine"}
BAD_ITEMS = {
    "no_channel": ({"data": "x"}, 400, "invalid message", "'channel'"),
    "channel_not_a_string": ({"channel": 5, "data": "x"}, 400, "invalid message", "'channel'"),
    "bad_channel": ({"channel": "bad channel!", "data": "x"}, 400, "invalid channel",
                    "invalid channel name"),
    "no_data": ({"channel": "kept"}, 400, "invalid message", "'data' is required"),
    "unknown_field": ({"channel": "kept", "data": "x", "colour": 1}, 400, "invalid message",
                      "unknown field"),
    "newline_in_event": ({"channel": "kept", "data": "x", "event": "a\nb"}, 400,
                         "invalid message", "event"),
    "lone_surrogate": ({"channel": "kept", "data": "\ud83d"}, 400, "invalid message",
                       "lone surrogate"),
    "not_an_object": (["channel", "kept"], 400, "invalid message", "JSON object"),
    "too_large": ({"channel": "kept", "data": "z" * 2000}, 413, "request entity too large",
                  "maximum message size of 1024 bytes"),
}


def encode_item(item) -> bytes:
    return json.dumps(item).encode()


@pytest.mark.parametrize("encoding", ["ndjson", "array"])
@pytest.mark.parametrize("name", BAD_ITEMS)
def test_one_bad_item_refuses_the_whole_batch_naming_its_index(
        start_gateway, redis_db, open_stream, name, encoding):
    gateway = start_gateway("--redis-url", redis_db.url, "--max-message-size", "1024")
    stream = open_stream(f"{gateway.url}/events/kept")
    item, status, error, names = BAD_ITEMS[name]
    parts = [encode_item(GOOD), encode_item(GOOD), encode_item(item), encode_item(GOOD)]
    if encoding == "ndjson":
        body, headers = b"\n".join(parts), NDJSON
    else:
        body, headers = b"[" + b",".join(parts) + b"]", JSON
    refused_before = health(gateway)["refused"]
    response = post_batch(gateway, body, headers)
    assert response.status_code == status, response.text
    answer = response.json()
    assert (answer["error"], answer["index"]) == (error, 2), answer
    assert answer["detail"].startswith("item 2") and names in answer["detail"], answer
    assert health(gateway)["refused"] == refused_before + 1
    assert not redis_db.client.exists(history_key("", "kept"))
    # Nothing reached the subscriber: the next event it gets is the next one published.
    assert gateway.publish("kept", {"data": "after"}).status_code == 200
    assert [e.data for e in stream.wait_events(1)] == ["after"]


@pytest.mark.parametrize("body, headers, error, names", [
    (b'{"channel": "kept", "data": "x"}\n{"channel": "kept", "data": ', NDJSON, "invalid json",
     "item 1 (line 2): not valid JSON"),
    (b'{"channel": "kept", "data": "x"}\n\n{"channel": "kept", "data": "\xff"}', NDJSON,
     "invalid json", "item 1 (line 3): not UTF-8"),
    (b'{"channel": "kept", "data": NaN}', NDJSON, "invalid json", "item 0 (line 1): not valid JSON"),
    (b'[{"channel": "kept", "data": "x"} {"channel": "kept", "data": "y"}]', JSON,
     "invalid json", "item 1: expected ',' or ']'"),
    (b'[{"channel": "kept", "data": "x"}, ]', JSON, "invalid json", "item 1: not valid JSON"),
])
def test_a_batch_that_is_not_valid_json_names_the_item(start_gateway, body, headers, error,
                                                       names):
    gateway = start_gateway()
    response = post_batch(gateway, body, headers)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"] == error and names in answer["detail"], answer


@pytest.mark.parametrize("body", [b'{"channel": "kept", "data": "x"}', b'[1, 2] [3]',
                                  b'\xff[]', b'[{"channel": "kept", "data": "x"}'])
def test_a_json_batch_must_be_one_array(start_gateway, body):
    gateway = start_gateway()
    response = post_batch(gateway, body, JSON)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid json", "invalid message")


def test_a_batch_over_the_size_limit_is_413_and_nothing_is_stored(start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--max-publish-batch-size", "2048")
    items = [{"channel": "big", "data": "x" * 50} for _ in range(40)]  # about 2,800 bytes
    body = ndjson(items)
    assert len(body) > 2048
    response = post_batch(gateway, body)
    assert response.status_code == 413, response.text
    assert "maximum batch size of 2048 bytes" in response.json()["detail"]
    assert response.headers["Connection"] == "close"
    # A chunked body has no length to check first: it is cut at the limit all the same.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /publish/ HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-ndjson"
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert not redis_db.client.exists(history_key("", "big"))
    assert post_batch(gateway, ndjson(items[:20])).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_a_batch_of_another_type_is_415(start_gateway, content_type):
    gateway = start_gateway()
    headers = {"Content-Type": content_type} if content_type else {}
    response = post_batch(gateway, ndjson([GOOD]), headers)
    assert response.status_code == 415, response.text
    assert "application/x-ndjson" in response.json()["detail"]


def test_a_batch_is_authorized_like_a_single_publish(start_gateway):
    gateway = start_gateway("--publish-token", "s3cret")
    assert post_batch(gateway, ndjson([GOOD])).status_code == 401
    wrong = {**NDJSON, "Authorization": "Bearer wrong"}
    assert post_batch(gateway, ndjson([GOOD]), wrong).status_code == 403
    page = {**NDJSON, "Authorization": "Bearer s3cret", "Origin": "https://evil.example"}
    refused = post_batch(gateway, ndjson([GOOD]), page)
    assert refused.status_code == 403 and "evil.example" in refused.json()["detail"]
    right = {**NDJSON, "Authorization": "Bearer s3cret"}
    assert post_batch(gateway, ndjson([GOOD]), right).json()["count"] == 1


def test_the_batch_path_answers_other_methods_and_deeper_paths(start_gateway):
    gateway = start_gateway()
    got = requests.get(f"{gateway.url}/publish/", timeout=10)
    assert got.status_code == 405 and got.headers["Allow"] == "POST, OPTIONS"
    assert requests.options(f"{gateway.url}/publish/", timeout=10).status_code == 200
    deeper = requests.post(f"{gateway.url}/publish/a/b", data=ndjson([GOOD]), headers=NDJSON,
                           timeout=10)
    assert deeper.status_code == 404 and deeper.json()["error"] == "not found"


def test_the_script_refuses_a_batch_with_one_bad_message_and_stores_none(redis_db):
    script = redis_db.client.register_script(PUBLISH_SCRIPT)
    messages = [("s1", '{"data":"a"}'), ("s2", '{"data":"b"}'), ("s1", '{"type":"no data"}')]
    keys, args = publish_many_args("", messages, 100, 60_000)
    with pytest.raises(redis.ResponseError, match=r"^INVALID item 2: 'data' is required"):
        script(keys=keys, args=args)
    assert redis_db.client.exists(history_key("", "s1"), history_key("", "s2")) == 0
    keys, args = publish_many_args("", messages[:2], 100, 60_000)
    first, receivers_a, second, receivers_b = script(keys=keys, args=args)
    assert (receivers_a, receivers_b) == (0, 0)
    assert [raw for raw, _ in redis_db.client.xrange(history_key("", "s2"))] == [second]
    assert [raw for raw, _ in redis_db.client.xrange(history_key("", "s1"))] == [first]


def test_the_script_trims_a_batch_to_the_history_length_and_records_what_went(redis_db):
    script = redis_db.client.register_script(PUBLISH_SCRIPT)
    keys, args = publish_many_args("", [("t", '{"data":"%d"}' % i) for i in range(25)], 10,
                                   60_000)
    reply = script(keys=keys, args=args)
    ids = reply[0::2]
    info = redis_db.client.xinfo_stream(history_key("", "t"))
    assert info["length"] == 10
    assert info["first-entry"][0] == ids[15] and info["last-generated-id"] == ids[24]
    assert info["max-deleted-entry-id"] == ids[14]


@pytest.mark.parametrize("max_length", [3, 100])
def test_the_script_trims_expired_entries_after_the_length_and_records_the_last(
        redis_db, max_length):
    script = redis_db.client.register_script(PUBLISH_SCRIPT)
    key = history_key("", "aged")
    old = [redis_db.client.xadd(key, {"m": '{"data":"old"}'}, id=f"{i}-0") for i in range(1, 6)]
    keys, args = publish_many_args("", [("aged", '{"data":"new"}')] * 2, max_length, 60_000)
    new = script(keys=keys, args=args)[0::2]
    info = redis_db.client.xinfo_stream(key)
    # By length first (3: the four oldest), then by age (what is left of the old ones).
    assert info["length"] == 2 and info["first-entry"][0] == new[0]
    assert info["max-deleted-entry-id"] == old[-1]
    # Nothing expired now: only the length trims (when 4 are too many), and what it records.
    script(keys=keys, args=args)
    info = redis_db.client.xinfo_stream(key)
    assert info["length"] == min(4, max_length)
    assert info["max-deleted-entry-id"] == (old[-1] if max_length == 100 else new[0])


# -- the Python publisher and the CLI ---------------------------------------------------------


def test_publish_many_stores_what_single_publishes_store(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    events = [{"channel": "one", "data": "plain"},
              {"channel": "one", "data": {"q": [1, 2]}, "event": "e", "id": "src", "retry": 40},
              {"channel": "one", "data": "multi\nline", "type": "t"}]
    publisher = Publisher(redis_db.url)
    singles = [publisher.publish(e["channel"].replace("one", "two"), e["data"],
                                 event=e.get("event") or e.get("type"), id=e.get("id"),
                                 retry=e.get("retry")) for e in events]
    stream = open_stream(f"{gateway.url}/events/one")
    many = publisher.publish_many(events)
    assert [r["channel"] for r in many] == ["one"] * 3
    assert all(r["receivers"] == 1 for r in many)
    assert [m for _, m in stored(redis_db, "one")] == [m for _, m in stored(redis_db, "two")]
    assert [raw_id for raw_id, _ in stored(redis_db, "one")] == [r["id"] for r in many]
    got = stream.wait_events(3)
    assert [(e.type, e.data) for e in got] == [
        ("message", "plain"), ("e", '{"q":[1,2]}'), ("t", "multi\nline")]
    assert stream.body.count(b"\nretry: 40\n") == 1
    assert got[1].last_event_id == f"{many[1]['id']} src"
    assert [r["id"] for r in singles] != [r["id"] for r in many]


def test_publish_many_goes_in_chunks_and_keeps_each_channels_order(redis_db):
    publisher = Publisher(redis_db.url, history_length=5000)
    count = CHUNK_EVENTS * 2 + 7
    results = publisher.publish_many({"channel": f"c{i % 3}", "data": str(i)}
                                     for i in range(count))
    assert len(results) == count
    for k in range(3):
        entries = stored(redis_db, f"c{k}")
        assert [int(m["data"]) for _, m in entries] == list(range(k, count, 3))
        assert [raw for raw, _ in entries] == [r["id"] for r in results[k::3]]


def test_publish_many_checks_every_event_before_sending_any(redis_db):
    publisher = Publisher(redis_db.url)
    events = [{"channel": "v", "data": "ok"}, {"channel": "v", "data": "ok"},
              {"channel": "v", "data": "x", "retry": -1}]
    with pytest.raises(ValueError, match=r"^item 2: 'retry'"):
        publisher.publish_many(events)
    with pytest.raises(ValueError, match=r"^item 0: 'channel'"):
        publisher.publish_many([{"data": "no channel"}])
    assert not redis_db.client.exists(history_key("", "v"))


def test_publish_many_loads_the_script_again_when_redis_forgot_it(redis_db):
    publisher = Publisher(redis_db.url)
    publisher.publish("f", "first")
    redis_db.client.script_flush()
    results = publisher.publish_many([{"channel": "f", "data": str(i)} for i in range(3)])
    assert [m["data"] for _, m in stored(redis_db, "f")] == ["first", "0", "1", "2"]
    assert [raw for raw, _ in stored(redis_db, "f")][1:] == [r["id"] for r in results]


def test_publish_many_reports_an_unreachable_redis(redis_server):
    publisher = Publisher(f"redis://127.0.0.1:{redis_server.port + 1}/0", timeout=2)
    with pytest.raises(PublishError) as raised:
        publisher.publish_many([{"channel": "x", "data": "lost"}])
    assert raised.value.published == []


def test_publish_many_over_http_reaches_an_embedded_gateway(start_gateway, open_stream):
    gateway = start_gateway()
    stream = open_stream(f"{gateway.url}/events/web")
    results = Publisher(gateway.url).publish_many(
        [{"channel": "web", "data": f"w{i}", "event": "greet"} for i in range(CHUNK_EVENTS + 3)])
    events = stream.wait_events(CHUNK_EVENTS + 3)
    assert [e.data for e in events] == [f"w{i}" for i in range(CHUNK_EVENTS + 3)]
    assert [e.last_event_id for e in events] == [r["id"] for r in results]


def test_publish_many_over_http_reports_a_refusal(start_gateway):
    gateway = start_gateway("--publish-token", "s3cret")
    with pytest.raises(PublishError, match="401") as raised:
        Publisher(gateway.url).publish_many([{"channel": "web", "data": "no token"}])
    assert raised.value.published == []


def test_cli_publishes_several_events_in_order(start_gateway, redis_db, open_stream):
    gateway = start_gateway("--redis-url", redis_db.url)
    stream = open_stream(f"{gateway.url}/events/cli")
    result = run_cli("publish", "cli", "one", "two", "three", "--event", "e",
                     "--redis-url", redis_db.url)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    events = stream.wait_events(3)
    assert [(e.type, e.data) for e in events] == [("e", "one"), ("e", "two"), ("e", "three")]
    assert [e.last_event_id for e in events] == [a["id"] for a in answers]


def test_concurrent_single_publishes_share_the_connection_and_all_land(start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url)
    answered: dict[str, str] = {}  # id -> the data its publish sent
    lock = threading.Lock()
    start = threading.Barrier(8)

    def publish(n: int) -> None:
        with requests.Session() as session:
            start.wait(10)
            for i in range(25):
                data = f"{n}:{i}"
                response = session.post(f"{gateway.url}/publish/many", json={"data": data},
                                        timeout=10)
                assert response.status_code == 200, response.text
                with lock:
                    answered[response.json()["id"]] = data

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answered) == 200
    entries = stored(redis_db, "many")
    # Each publish was answered with its own event's id.
    assert {raw: message["data"] for raw, message in entries} == answered
    for n in range(8):
        seqs = [int(m["data"].split(":")[1]) for _, m in entries if m["data"].startswith(f"{n}:")]
        assert seqs == list(range(25))
