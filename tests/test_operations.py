"""What an operator sees: GET /metrics, presence (GET /channels), their guard, on real gateway
processes and a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Dict, List, Tuple

import pytest
import requests
from conftest import wait_until
from prometheus_client.parser import text_string_to_metric_families
from sse_client import Stream, subscribed

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(gateway, **kwargs) -> Samples:
    response = requests.get(gateway.url + "/metrics", timeout=5, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def connections(samples: Samples) -> Dict[str, float]:
    return {transport: value(samples, "sse_gateway_connections", transport=transport)
            for transport in ("native", "padded", "long-poll", "jsonp")}


class HeldPoll(threading.Thread):
    """A long-poll held by the gateway until an event comes (or 10 s)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answer = None
        self.start()

    def run(self) -> None:
        self.answer = requests.get(self.url, timeout=20)


def open_streams(url: str, count: int) -> List[Stream]:
    streams = [Stream(url) for _ in range(count)]
    for stream in streams:
        stream.wait_for(subscribed)
    return streams


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_connections_by_transport_and_every_event_on_each_broker(
        start_gateway, broker_args):
    gateway = start_gateway(*broker_args)
    base = gateway.url
    streams = open_streams(f"{base}/events/news", 2) + open_streams(
        f"{base}/events/news?transport=stream", 1)
    polls = [HeldPoll(f"{base}/poll/news?timeout=10"),
             HeldPoll(f"{base}/poll/news?timeout=10&callback=cb")]
    try:
        wait_until(lambda: value(scrape(gateway), "sse_gateway_subscribers") == 5, 10,
                   message="both long-polls to be held")
        samples = scrape(gateway)
        assert connections(samples) == {"native": 2, "padded": 1, "long-poll": 1, "jsonp": 1}
        assert value(samples, "sse_gateway_channels") == 1
        assert value(samples, "sse_gateway_broker_connected") == 1
        # Three streams and two long-polls, plus this scrape's own connection at least.
        assert value(samples, "sse_gateway_http_connections") >= 6

        # The first event answers both long-polls; two more reach the three streams only.
        assert gateway.publish("news", {"data": "one"}).status_code == 200
        for poll in polls:
            poll.join(10)
            assert poll.answer.status_code == 200
        wait_until(lambda: value(scrape(gateway), "sse_gateway_subscribers") == 3, 10,
                   message="the long-polls to leave")
        for data in ("two", "three"):
            assert gateway.publish("news", {"data": data}).status_code == 200
        for stream in streams:
            assert [e.data for e in stream.wait_events(3)] == ["one", "two", "three"]
        samples = scrape(gateway)
        assert value(samples, "sse_gateway_events_published_total") == 3
        assert value(samples, "sse_gateway_events_dispatched_total") == 3
        assert value(samples, "sse_gateway_deliveries_total") == 5 + 3 + 3
        assert value(samples, "sse_gateway_dispatch_latency_seconds_count") == 3
        assert connections(samples) == {"native": 2, "padded": 1, "long-poll": 0, "jsonp": 0}
    finally:
        for stream in streams:
            stream.close()
        for poll in polls:
            poll.join(15)
    wait_until(lambda: connections(scrape(gateway))["native"] == 0, 10,
               message="closed streams to be counted out")


def test_metrics_count_resets_and_refusals_by_reason(start_gateway, broker_args):
    gateway = start_gateway(*broker_args, "--history-length", "1")
    first = gateway.publish("log", {"data": "first"}).json()["id"]
    for data in ("second", "third"):
        gateway.publish("log", {"data": data})
    with Stream(gateway.url + "/events/log", headers={"Last-Event-ID": "not-an-id"}) as unknown:
        unknown.wait_for(subscribed)
    with Stream(gateway.url + "/events/log", headers={"Last-Event-ID": first}) as behind:
        behind.wait_for(subscribed)
        assert behind.events[0].type == "gateway-reset"
    assert requests.post(gateway.url + "/publish/log", data=b"{not json",
                         headers={"Content-Type": "application/json"}, timeout=5).status_code == 400
    samples = scrape(gateway)
    assert value(samples, "sse_gateway_resets_total", reason="unknown-id") == 1
    assert value(samples, "sse_gateway_resets_total", reason="history-lost") == 1
    assert value(samples, "sse_gateway_refused_total", source="publish") == 1
    assert value(samples, "sse_gateway_refused_total", source="broker") == 0
    assert value(samples, "sse_gateway_events_published_total") == 3
    for reason in ("slow", "stalled", "memory"):
        assert value(samples, "sse_gateway_dropped_total", reason=reason) == 0


def test_metrics_of_every_worker_add_up_and_a_killed_workers_connections_drop_out(
        start_gateway, redis_db):
    gateway = start_gateway("--workers", "2", "--redis-url", redis_db.url,
                            "--presence-interval", "0.5")
    wait_until(lambda: gateway.log().count("listening on") == 2, 15, message="2 workers")
    streams: List[Stream] = []
    try:
        # The kernel spreads connections over the workers: open until both hold some.
        for _ in range(10):
            streams += open_streams(gateway.url + "/events/spread", 4)
            # Presence is as fresh as the last write of the other worker: wait for it.
            opened = len(streams)
            wait_until(lambda n=opened: presence(gateway, "spread")["subscribers"] == n, 10,
                       message=f"presence to count {opened} streams")
            if presence(gateway, "spread")["processes"] == 2:
                break
        both = {"channel": "spread", "subscribers": len(streams), "processes": 2}
        # Either worker may answer: each is as fresh as the other's last write.
        wait_until(lambda: all(presence(gateway, "spread") == both for _ in range(4)), 10,
                   message=f"{both} from both workers")
        wait_until(lambda: connections(scrape(gateway))["native"] == len(streams), 10,
                   message=f"{len(streams)} native streams summed over both workers")
        assert gateway.publish("spread", {"data": "to all"}).status_code == 200
        for stream in streams:
            stream.wait_events(1)
        wait_until(lambda: value(scrape(gateway), "sse_gateway_deliveries_total")
                   == len(streams), 10, message="deliveries summed over both workers")
        samples = scrape(gateway)
        assert value(samples, "sse_gateway_events_published_total") == 1
        assert value(samples, "sse_gateway_events_dispatched_total") == 2  # one per worker
        assert value(samples, "sse_gateway_broker_connected") == 2

        with open(f"/proc/{gateway.proc.pid}/task/{gateway.proc.pid}/children") as f:
            victim = min(int(pid) for pid in f.read().split())
        os.kill(victim, signal.SIGKILL)
        survivors = []
        for stream in streams:
            try:
                stream.read_to_end(0.5)
                if not stream.ended:
                    survivors.append(stream)
            except TimeoutError:
                survivors.append(stream)
        assert 0 < len(survivors) < len(streams)
        # The supervisor removed the dead worker's gauges; its counters stay counted.
        wait_until(lambda: connections(scrape(gateway))["native"] == len(survivors), 10,
                   message=f"the {len(survivors)} streams of the surviving worker")
        assert value(scrape(gateway), "sse_gateway_deliveries_total") == len(streams)
    finally:
        for stream in streams:
            stream.close()


# -- presence --------------------------------------------------------------------------------


def presence(gateway, channel: str) -> dict:
    response = requests.get(f"{gateway.url}/channels/{channel}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_presence_sums_every_process_on_one_redis_and_forgets_a_killed_one_in_time(
        start_gateway, redis_db):
    interval = 0.5
    args = ("--redis-url", redis_db.url, "--presence-interval", str(interval))
    first, second = start_gateway(*args), start_gateway(*args)
    on_first = open_streams(first.url + "/events/room", 2)
    on_second = open_streams(second.url + "/events/room", 3) + open_streams(
        second.url + "/events/lobby", 1)
    try:
        both = {"channel": "room", "subscribers": 5, "processes": 2}
        for gateway in (first, second):
            wait_until(lambda g=gateway: presence(g, "room") == both, 10,
                       message=f"{both} from {gateway.url}")
        assert presence(first, "lobby") == {"channel": "lobby", "subscribers": 1, "processes": 1}
        assert presence(first, "nobody") == {"channel": "nobody", "subscribers": 0,
                                             "processes": 0}
        busiest = requests.get(first.url + "/channels", timeout=5).json()
        assert busiest == {"channels": [{"channel": "room", "subscribers": 5, "processes": 2},
                                        {"channel": "lobby", "subscribers": 1, "processes": 1}],
                           "processes": 2}
        limited = requests.get(first.url + "/channels?limit=1", timeout=5).json()
        assert [c["channel"] for c in limited["channels"]] == ["room"]

        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(5)
        killed = time.monotonic()
        alone = {"channel": "room", "subscribers": 2, "processes": 1}
        wait_until(lambda: presence(first, "room") == alone, 10,
                   message="the killed process's share to expire")
        # Its share expires three intervals after its last write, at most: allow for a loaded
        # machine's scheduling, not for another interval.
        assert time.monotonic() - killed < 3 * interval + 1.0
        assert requests.get(first.url + "/channels", timeout=5).json()["processes"] == 1
    finally:
        for stream in on_first + on_second:
            stream.close()


def test_a_stopped_process_leaves_presence_at_once(start_gateway, redis_db):
    args = ("--redis-url", redis_db.url, "--presence-interval", "30")
    first, second = start_gateway(*args), start_gateway(*args)
    with Stream(second.url + "/events/room") as stream:
        stream.wait_for(subscribed)
        # A long interval: the share is written when the process starts its beats and ...
        wait_until(lambda: requests.get(first.url + "/channels", timeout=5).json()["processes"]
                   == 2, 10, message="the second process to be seen")
        assert second.stop() == 0
    # ... removed when it stops, not thirty seconds later.
    assert requests.get(first.url + "/channels", timeout=5).json() == {"channels": [],
                                                                       "processes": 1}


def test_presence_refuses_a_bad_channel_name_or_limit(start_gateway):
    gateway = start_gateway()
    for path, error in (("/channels/bad%20name", "invalid channel"),
                        ("/channels?limit=0", "invalid limit"),
                        ("/channels?limit=many", "invalid limit")):
        response = requests.get(gateway.url + path, timeout=5)
        assert response.status_code == 400, path
        assert response.json()["error"] == error


# -- the guard -------------------------------------------------------------------------------

GUARDED = ("/metrics", "/channels", "/channels/room", "/status")


def test_operations_routes_are_refused_to_a_remote_client_without_a_token(start_gateway):
    gateway = start_gateway("--trusted-proxy", "127.0.0.1")
    remote = {"X-Forwarded-For": "203.0.113.9"}
    for path in GUARDED:
        response = requests.get(gateway.url + path, headers=remote, timeout=5)
        assert response.status_code == 403, path
        assert response.json()["error"] == "forbidden"
        local = requests.get(gateway.url + path, headers={"X-Forwarded-For": "127.0.0.1"},
                             timeout=5)
        assert local.status_code == 200, path
    samples = scrape(gateway)
    assert value(samples, "sse_gateway_auth_refusals_total", endpoint="metrics_text",
                 status="403") == 1
    assert value(samples, "sse_gateway_auth_refusals_total", endpoint="channel",
                 status="403") == 1


def test_operations_routes_need_the_publish_token_when_one_is_set(start_gateway):
    gateway = start_gateway("--publish-token", "ops-secret")
    for path in GUARDED:
        assert requests.get(gateway.url + path, timeout=5).status_code == 401, path
        wrong = {"Authorization": "Bearer nope"}
        assert requests.get(gateway.url + path, headers=wrong, timeout=5).status_code == 403
        right = {"Authorization": "Bearer ops-secret"}
        assert requests.get(gateway.url + path, headers=right, timeout=5).status_code == 200
    page = requests.get(gateway.url + "/status", headers=right, timeout=5).text
    script = page.split('<script src="')[-1].split('"')[0]
    assert script.startswith("/status/status.")
    assert requests.get(gateway.url + script, timeout=5).status_code == 401
    assert requests.get(gateway.url + script, headers=right, timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/channels"])
def test_operations_routes_refuse_other_methods(start_gateway, path):
    gateway = start_gateway()
    response = requests.post(gateway.url + path, timeout=5)
    assert response.status_code == 405
    assert response.json()["error"] == "method not allowed"


def test_a_closed_stream_of_a_killed_client_is_counted_out(start_gateway):
    gateway = start_gateway()
    stream = Stream(gateway.url + "/events/gone?transport=stream")
    stream.wait_for(subscribed)
    assert connections(scrape(gateway))["padded"] == 1
    stream.close()
    wait_until(lambda: connections(scrape(gateway))["padded"] == 0, 10,
               message="the padded stream to be counted out")


# -- the status feed ---------------------------------------------------------------------------


def status_channel(gateway) -> str:
    page = requests.get(gateway.url + "/status", timeout=5).text
    config = json.loads(page.split('id="status-config">')[1].split("</script>")[0])
    assert config["events"].startswith("/events/sse-gateway.status.")
    return config["events"][len("/events/"):]


def test_every_process_feeds_the_status_channel_while_someone_watches_and_only_then(
        start_gateway, redis_db):
    args = ("--redis-url", redis_db.url, "--presence-interval", "0.5")
    first, second = start_gateway(*args), start_gateway(*args)
    channel = status_channel(first)
    assert status_channel(second) == channel  # one name for every gateway on this Redis
    history = f"sse-gateway:history:{channel}"
    assert redis_db.client.xlen(history) == 0  # nobody watched yet: nothing published
    with Stream(f"{first.url}/events/{channel}") as watcher:
        # Watched on the first process only: the second learns it from presence.
        watcher.wait_for(lambda s: len({json.loads(e.data)["process"] for e in s.events}) == 2, 15)
        figures = json.loads(watcher.events[-1].data)
        assert watcher.events[-1].type == "figures"
        assert set(figures) >= {"process", "time", "connections", "subscribers", "published",
                                "deliveries", "dropped", "resets", "connected"}
        assert figures["connected"] is True
    wait_until(lambda: presence(second, channel)["subscribers"] == 0, 10,
               message="the watcher to be gone from presence, as the second process sees it")
    # The second process reads presence once an interval, and may publish at one more tick.
    time.sleep(0.5 + 1.0)
    published = redis_db.client.xlen(history)
    assert published > 0
    # Not watched: a few seconds (several ticks of the feed) add nothing. This observes an
    # absence, so it can only wait a bounded time.
    time.sleep(2.5)
    assert redis_db.client.xlen(history) == published


DROPS = {
    # A subscriber that reads nothing, behind events of 60 KB: too far behind ...
    "slow": ("--max-pending", "3"),
    # ... holding more than the process may hold for slow subscribers ...
    "memory": ("--max-buffered-bytes", "300000"),
    # ... or holding bytes its socket does not take while the channel is quiet.
    "stalled": ("--heartbeat", "0.5"),
}


@pytest.mark.parametrize("reason", sorted(DROPS))
def test_metrics_count_a_dropped_subscriber_by_reason(start_gateway, reason):
    gateway = start_gateway("--max-message-size", "100000", *DROPS[reason])
    stuck = Stream(gateway.url + "/events/firehose", receive_buffer=4096)
    try:
        stuck.wait_for(subscribed)

        def dropped() -> Dict[str, float]:
            samples = scrape(gateway)
            return {r: value(samples, "sse_gateway_dropped_total", reason=r) for r in DROPS}

        with requests.Session() as session:
            for _ in range(200):  # bounded: the kernel's buffers fill long before
                session.post(gateway.url + "/publish/firehose", json={"data": "x" * 60_000},
                             timeout=10)
                if reason == "stalled" and value(scrape(gateway), "sse_gateway_buffered_bytes"):
                    break  # holding bytes: now the channel stays quiet
                if reason != "stalled" and dropped()[reason]:
                    break
        wait_until(lambda: dropped()[reason] == 1, 10, message=f"a {reason} drop")
        assert dropped() == {r: int(r == reason) for r in DROPS}
        assert value(scrape(gateway), "sse_gateway_subscribers") == 0
    finally:
        stuck.close()
