"""The gateway on a real Redis Cluster (3 masters, 3 replicas): sharded pub/sub, resharding and
failover, publishers."""

import json
import os
import subprocess
import sys
import threading
from typing import Dict, List

import pytest
import redis
import requests
from conftest import ROOT, health, wait_until
from redis.crc import key_slot
from redis_cluster import RedisCluster, channels_on_every_shard, slot_of

from gateway import Publisher
from gateway.publisher import PublishError
from gateway.redis_schema import PUBLISH_SCRIPT


@pytest.fixture(scope="session")
def redis_cluster_server():
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_server):
    """The session's cluster, emptied."""
    redis_cluster_server.wait_ok()
    redis_cluster_server.flush()
    return redis_cluster_server


def cluster_gateway(start_gateway, cluster: RedisCluster, *args: str):
    return start_gateway("--redis-url", cluster.url, "--redis-cluster", "--heartbeat", "1", *args)


def events_url(gateway, channels: List[str]) -> str:
    return f"{gateway.url}/events?" + "&".join(f"channel={c}" for c in channels)


def received(stream) -> Dict[str, List[str]]:
    """Each channel's data in the order the stream received them (the data name the channel)."""
    return by_channel(stream.events)


def by_channel(events) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for event in events:
        found.setdefault(event.data.split(" ")[0], []).append(event.data)
    return found


def pubsub_connections(cluster: RedisCluster, pid: int) -> Dict[int, int]:
    """Node port -> the pub/sub connections process `pid` holds there."""
    name = f"sse-gateway-pubsub-{pid}"
    return {port: cluster.pubsub_clients(port).count(name) for port in cluster.alive()}


def unavailable(gateway):
    """The /healthz body when it answers 503, else None."""
    response = requests.get(gateway.url + "/healthz", timeout=5)
    return response.json() if response.status_code == 503 else None


class Publishing:
    """Publishes `data` events in turn on the channels from a thread, until stopped, every other
    one through a Publisher and through the gateway; keeps what was acknowledged and what
    failed."""

    def __init__(self, cluster: RedisCluster, channels: List[str], gateway) -> None:
        self.publisher = Publisher(cluster.url, cluster=True, timeout=2)
        self.through_gateway = Publisher(gateway.url, timeout=5)
        self.channels = channels
        self.acknowledged: Dict[str, List[str]] = {c: [] for c in channels}
        self.ids: Dict[str, str] = {}
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set() and number < 100000:
            channel = self.channels[number % len(self.channels)]
            data = f"{channel} {number}"
            publisher = self.through_gateway if number % 2 else self.publisher
            try:
                result = publisher.publish(channel, data)
            except PublishError:
                self.failed += 1
                self._stop.wait(0.02)
            else:
                self.acknowledged[channel].append(data)
                self.ids[data] = result["id"]
            number += 1
            self._stop.wait(0.002)

    def count(self) -> int:
        return sum(map(len, self.acknowledged.values()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_events_spread_over_every_shard_arrive_once_in_order_over_few_connections(
        redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 2)
    owners = {redis_cluster.master_of(slot_of(c)) for c in channels}
    assert owners == set(redis_cluster.master_ports()) and len(owners) == 3
    # The second keeps no recent events in memory: it resumes from the cluster's history.
    gateways = [cluster_gateway(start_gateway, redis_cluster),
                cluster_gateway(start_gateway, redis_cluster, "--recent-events", "0")]
    streams = [open_stream(events_url(g, channels)) for g in gateways for _ in range(2)]
    publisher = Publisher(redis_cluster.url, cluster=True)
    per_channel = 20
    for number in range(per_channel):
        for index, channel in enumerate(channels):
            data = f"{channel} {number}"
            if index % 3 == 0:
                assert gateways[number % 2].publish(channel, {"data": data}).status_code == 200
            elif index % 3 == 1:
                assert publisher.publish(channel, data)["receivers"] == 2
    # A batch over every shard, each channel in its order: atomic per slot.
    batch = [{"channel": c, "data": f"{c} {n}"} for n in range(per_channel)
             for index, c in enumerate(channels) if index % 3 == 2]
    results = publisher.publish_many(batch)
    assert [r["channel"] for r in results] == [e["channel"] for e in batch]
    expected = {c: [f"{c} {n}" for n in range(per_channel)] for c in channels}
    for stream in streams:
        stream.wait_events(per_channel * len(channels), 15)
        assert received(stream) == expected
    # A client that resumes from the middle, on the other gateway, gets the rest once.
    middle = streams[0].events[len(streams[0].events) // 2]
    resumed = open_stream(events_url(gateways[1], channels), {"Last-Event-ID": middle.last_event_id})
    rest = streams[0].events[len(streams[0].events) // 2 + 1:]
    resumed.wait_events(len(rest), 10)
    # Each channel in its order; channels of different shards have no common order.
    assert by_channel(resumed.events) == by_channel(rest)
    assert health(gateways[1])["history_from_broker"] >= 1
    # One pub/sub connection per shard and process, whatever the channels and clients.
    for gateway in gateways:
        connections = pubsub_connections(redis_cluster, gateway.proc.pid)
        assert sum(connections.values()) == 3, connections
        assert all(n <= 1 for n in connections.values()), connections
        assert all(connections[port] == 1 for port in redis_cluster.master_ports())


def test_raw_publish_reaches_subscribers_on_every_shard(redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 1)
    gateway = cluster_gateway(start_gateway, redis_cluster)
    stream = open_stream(events_url(gateway, channels))
    # A classic PUBLISH on any node: the cluster forwards it to every node.
    any_node = redis_cluster.node(redis_cluster.master_ports()[0])
    for channel in channels:
        any_node.publish(channel, json.dumps({"data": f"{channel} raw"}))
    stream.wait_events(len(channels), 10)
    assert sorted(e.data for e in stream.events) == sorted(f"{c} raw" for c in channels)


def test_slot_migrated_while_publishing_loses_and_repeats_nothing(
        redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 1, stem="busy")
    busy = channels[0]
    slot = slot_of(busy)
    source = redis_cluster.master_of(slot)
    target = next(p for p in redis_cluster.master_ports() if p != source)
    gateways = [cluster_gateway(start_gateway, redis_cluster) for _ in range(2)]
    streams = [open_stream(events_url(g, channels)) for g in gateways]
    publishing = Publishing(redis_cluster, channels, gateways[1])
    try:
        wait_until(lambda: len(publishing.acknowledged[busy]) >= 30, 10, message="publishes")
        redis_cluster.migrate_slot(slot, target)
        moved_at = len(publishing.acknowledged[busy])
        wait_until(lambda: len(publishing.acknowledged[busy]) >= moved_at + 30, 10,
                   message="publishes after the migration")
    finally:
        publishing.stop()
    acknowledged = publishing.acknowledged
    for stream in streams:
        stream.wait_for(lambda s: all(received(s).get(c, [])[-1:] == acknowledged[c][-1:]
                                      for c in channels), 15)
        assert received(stream) == acknowledged
    # Each process now reads the busy channel from the slot's new master.
    live = f"sse-gateway/live/{{{busy}}}".encode()
    assert redis_cluster.node(target).execute_command("PUBSUB", "SHARDNUMSUB", live)[1] == 2
    assert redis_cluster.node(source).execute_command("PUBSUB", "SHARDNUMSUB", live)[1] == 0
    # Move it back, so the session's cluster keeps its shape.
    redis_cluster.migrate_slot(slot, source)


def test_master_killed_while_publishing_then_events_arrive_once_or_are_reported_lost(
        start_gateway, open_stream):
    cluster = RedisCluster()
    try:
        cluster.start()
        channels = channels_on_every_shard(cluster, 1, stem="f")
        victim_channel = channels[0]
        victim = cluster.master_of(slot_of(victim_channel))
        gateways = [cluster_gateway(start_gateway, cluster) for _ in range(2)]
        streams = [open_stream(events_url(g, channels)) for g in gateways]
        publishing = Publishing(cluster, channels, gateways[1])
        try:
            wait_until(lambda: len(publishing.acknowledged[victim_channel]) >= 20, 10,
                       message="publishes")
            cluster.kill(victim)
            # Until a replica takes over, /healthz names the master that is down.
            down = wait_until(lambda: unavailable(gateways[0]), 10, 0.01,
                              message="/healthz to report the dead master")
            assert f"127.0.0.1:{victim}" in down["detail"], down
            cluster.wait_failover(victim)
            assert cluster.master_of(slot_of(victim_channel)) != victim
            after = len(publishing.acknowledged[victim_channel])
            wait_until(lambda: len(publishing.acknowledged[victim_channel]) >= after + 20, 20,
                       message="publishes after the failover")
        finally:
            publishing.stop()
        acknowledged = publishing.acknowledged
        # What the promoted replica holds: an acknowledged event it lacks was lost by Redis
        # (replication is asynchronous; the gateway cannot deliver what nobody has).
        new_master = cluster.node(cluster.master_of(slot_of(victim_channel)))
        stored = {fields[b"m"] for _, fields in new_master.xrange(
            f"sse-gateway:history:{{{victim_channel}}}")}
        kept = {c: [d for d in acknowledged[c]
                    if c != victim_channel or json.dumps({"data": d}, separators=(",", ":"))
                    .encode() in stored] for c in channels}
        for stream in streams:
            stream.wait_for(lambda s: all(received(s).get(c, [])[-1:] == acknowledged[c][-1:]
                                          for c in channels), 20)
            got = received(stream)
            for channel in channels:
                # Once each, in order, and nothing acknowledged missing but what Redis lost.
                assert len(set(got[channel])) == len(got[channel])
                assert got[channel] == sorted(got[channel], key=lambda d: int(d.split()[1]))
                assert set(kept[channel]) <= set(got[channel]) <= set(acknowledged[channel]), (
                    sorted(set(kept[channel]) - set(got[channel])),
                    [gateway.log()[-4000:] for gateway in gateways])
            resets = [e for e in stream.events if e.type == "gateway-reset"]
            assert not resets or kept != acknowledged, "a reset, but Redis lost nothing"
        lost = sum(len(acknowledged[c]) - len(kept[c]) for c in channels)
        print(f"failover: {publishing.count()} events acknowledged, {publishing.failed} publishes "
              f"refused during it, {lost} acknowledged event(s) lost by Redis")
        # Both processes read the channel from the promoted replica now, over few connections.
        live = f"sse-gateway/live/{{{victim_channel}}}".encode()
        assert new_master.execute_command("PUBSUB", "SHARDNUMSUB", live)[1] == 2
        for gateway in gateways:
            connections = pubsub_connections(cluster, gateway.proc.pid)
            assert sum(connections.values()) <= 3, connections
    finally:
        cluster.stop()


def test_publisher_and_cli_publish_on_the_cluster(redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 1)
    gateway = cluster_gateway(start_gateway, redis_cluster)
    stream = open_stream(events_url(gateway, channels))
    for channel in channels:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "publish", channel, f"{channel} cli",
             "--redis-url", redis_cluster.url, "--redis-cluster"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["receivers"] == 1
    many = subprocess.run(
        [sys.executable, "-m", "gateway", "publish", channels[1], f"{channels[1]} a",
         f"{channels[1]} b", "--redis-url", redis_cluster.url],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "SSE_GATEWAY_REDIS_CLUSTER": "1"})
    assert many.returncode == 0, many.stderr
    stream.wait_events(len(channels) + 2, 10)
    got = received(stream)
    assert got[channels[1]] == [f"{channels[1]} cli", f"{channels[1]} a", f"{channels[1]} b"]
    # The script refuses names of the wrong shape, on a cluster as on one Redis.
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.master_ports()[0])
    with pytest.raises(redis.ResponseError, match="INVALID"):
        client.eval(PUBLISH_SCRIPT, 1, "sse-gateway:history:{a b}", "sse-gateway/live/{a b}",
                    '{"data":"x"}', 10, 1000)
    client.close()


@pytest.mark.parametrize("args, problem", [
    (["--redis-cluster"], "redis-cluster needs --redis-url"),
    (["--redis-cluster", "--redis-url", "redis://127.0.0.1:1", "--prefix", "{x}"],
     "prefix must not contain { or }"),
])
def test_cluster_settings_that_cannot_work_are_refused(args, problem):
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert problem in done.stderr


def test_cluster_names_carry_the_channel_as_hash_tag_and_single_redis_names_are_unchanged():
    from gateway import redis_schema

    assert redis_schema.history_key("p:", "chat", cluster=True) == "p:sse-gateway:history:{chat}"
    assert redis_schema.live_channel("p:", "chat", cluster=True) == "p:sse-gateway/live/{chat}"
    assert redis_schema.history_key("p:", "chat") == "p:sse-gateway:history:chat"
    assert redis_schema.live_channel("p:", "chat") == "p:sse-gateway/live/chat"
    keys, args = redis_schema.publish_many_args("", [("a", "{}"), ("b", "{}")], 10, 1000,
                                                checked=True, cluster=True)
    assert keys == ["sse-gateway:history:{a}", "sse-gateway:history:{b}"]
    assert args == ["sse-gateway/live/{a}", "{}", "sse-gateway/live/{b}", "{}", 10, 1000,
                    "checked"]
    assert slot_of("chat") == key_slot(keys[0].replace("{a}", "{chat}").encode())
