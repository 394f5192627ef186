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
from child_processes import die_with_parent
from conftest import ROOT, free_port, health, wait_until
from redis.crc import key_slot
from redis_cluster import RedisCluster, channels_on_every_shard, slot_of
from test_http_hostile import connect
from test_operations import presence
from test_publish_coalesced import events_per_chunk, open_raw
from test_publish_pipelined import message, publish_request, read_answers

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


def reads_processed(masters: Dict[int, redis.Redis]) -> Dict[int, int]:
    """Master port -> the reads of its clients' sockets it has made so far (connected already,
    so that asking adds one read: the question)."""
    return {port: node.info("stats")["total_reads_processed"] for port, node in masters.items()}


def moved_answers(cluster: RedisCluster, port: int) -> int:
    """How many MOVED redirections the node on `port` has answered."""
    errors = cluster.node(port).info("errorstats")
    return errors.get("errorstat_MOVED", {}).get("count", 0)


def pipelined(gateway, plan: List[str]):
    """Publish `plan`'s channels in turn, the data naming the channel and the index, as
    requests pipelined on one connection; their answers, in order."""
    burst = b"".join(publish_request(c, message(f"{c} {i}")) for i, c in enumerate(plan))
    with connect(gateway.port) as sock:
        sock.sendall(burst)
        return read_answers(sock, len(plan))


def test_pipelined_publishes_share_a_round_trip_per_master_and_keep_each_channels_order(
        redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 2, stem="pipe")
    gateway = cluster_gateway(start_gateway, redis_cluster)
    stream = open_stream(events_url(gateway, channels))
    plan = [channels[i % len(channels)] for i in range(90)]
    masters = {port: redis_cluster.node(port) for port in redis_cluster.master_ports()}
    before = reads_processed(masters)
    answers = pipelined(gateway, plan)
    after = reads_processed(masters)
    assert [(status, body["channel"]) for status, _, body in answers] == [(200, c) for c in plan]
    stream.wait_events(len(plan), 15)
    expected = {c: [f"{c} {i}" for i, p in enumerate(plan) if p == c] for c in channels}
    assert received(stream) == expected
    # Each answer's id is its event's: the stream's cursor holds it for the event's channel.
    ids = {f"{body['channel']} {i}": body["id"] for i, (_, _, body) in enumerate(answers)}
    assert all(f"{event.data.split()[0]}={ids[event.data]}" in event.last_event_id.split(",")
               for event in stream.events)
    # 30 publishes per master: one at a time, each is a read of its own for the master (36
    # were seen so); here those that arrived together leave together, a few writes per master
    # (8 seen; a replica's acknowledgements and these INFO commands are reads too).
    for port in masters:
        assert after[port] - before[port] < 15, (port, after[port] - before[port])
        masters[port].close()


def test_pipelined_publishes_on_one_shard_reach_each_stream_in_runs_in_order_and_once(
        redis_cluster, start_gateway):
    channels = channels_on_every_shard(redis_cluster, 2, stem="runs")
    first, second, elsewhere = channels[0], channels[1], channels[2]
    assert redis_cluster.master_of(slot_of(first)) == redis_cluster.master_of(slot_of(second))
    assert redis_cluster.master_of(slot_of(elsewhere)) != redis_cluster.master_of(slot_of(first))
    gateway = cluster_gateway(start_gateway, redis_cluster, "--heartbeat", "30")
    streams = {c: open_raw(f"{gateway.url}/events/{c}") for c in (first, second, elsewhere)}
    try:
        # Their messages come back from the shard together, in one read of its connection;
        # another shard's listener dispatches meanwhile.
        plan = [first] * 12 + [second] * 12 + [elsewhere] * 4 + [first] * 6
        answers = pipelined(gateway, plan)
        assert [status for status, _, _ in answers] == [200] * len(plan)
        for channel, stream in streams.items():
            expected = [f"{channel} {i}" for i, c in enumerate(plan) if c == channel]
            events = stream.wait_events(len(expected), 15)
            assert [event.data for event in events] == expected
            if channel != elsewhere:
                writes = [n for n in events_per_chunk(stream) if n]
                assert sum(writes) == len(expected)
                assert len(writes) < len(expected), writes  # runs, not one write per event
        assert health(gateway)["dropped_slow"] == 0
    finally:
        for stream in streams.values():
            stream.close()


def test_pipelined_publishes_to_a_slot_that_moved_are_sent_to_its_new_master_in_order(
        redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 1, stem="moving")
    moving, others = channels[0], channels[1:]
    slot = slot_of(moving)
    source = redis_cluster.master_of(slot)
    target = next(p for p in redis_cluster.master_ports() if p != source)
    gateway = cluster_gateway(start_gateway, redis_cluster)
    # Nobody here reads the moving channel, so nothing tells the gateway that its slot moves:
    # its publishes go where the slot map says, the source, which answers MOVED.
    stream = open_stream(events_url(gateway, others))
    redis_cluster.migrate_slot(slot, target)
    try:
        plan = [moving, moving, others[0], moving, others[1]] * 8
        answers = pipelined(gateway, plan)
        assert [(status, body.get("channel")) for status, _, body in answers] == [
            (200, c) for c in plan], gateway.log()[-3000:]
        stream.wait_events(len(plan) - plan.count(moving), 15)
        assert received(stream) == {
            c: [f"{c} {i}" for i, p in enumerate(plan) if p == c] for c in others}
        # Stored where the slot is now, in their order, under the ids they were answered with.
        stored = redis_cluster.node(target).xrange(f"sse-gateway:history:{{{moving}}}")
        assert [json.loads(fields[b"m"])["data"] for _, fields in stored] == [
            f"{moving} {i}" for i, p in enumerate(plan) if p == moving]
        assert [entry_id.decode() for entry_id, _ in stored] == [
            body["id"] for _, _, body in answers if body["channel"] == moving]
        # The gateway has learnt where the slot is: the next ones go there at once.
        moved = moved_answers(redis_cluster, source)
        assert moved > 0
        assert [status for status, _, _ in pipelined(gateway, [moving] * 10)] == [200] * 10
        assert moved_answers(redis_cluster, source) == moved
    finally:
        redis_cluster.migrate_slot(slot, source)


def test_a_dead_master_fails_only_the_pipelined_publishes_of_its_slots(
        start_gateway, open_stream):
    # No replicas, and the other masters keep serving their slots without it.
    cluster = RedisCluster(replicas=0, full_coverage=False)
    try:
        cluster.start()
        channels = channels_on_every_shard(cluster, 1, stem="dead")
        victim = cluster.master_of(slot_of(channels[0]))
        gateway = cluster_gateway(start_gateway, cluster)
        stream = open_stream(events_url(gateway, channels))
        assert all(s == 200 for s, _, _ in pipelined(gateway, channels))  # connections made
        stream.wait_events(len(channels), 10)
        cluster.kill(victim)
        plan = channels * 10
        answers = pipelined(gateway, plan)
        for (status, _, body), channel in zip(answers, plan):
            if channel == channels[0]:
                assert status == 503 and body["error"] == "broker unavailable", body
                assert "nothing was published" in body["detail"]
            else:
                assert (status, body["channel"]) == (200, channel), body
        alive = [c for c in channels if c != channels[0]]
        stream.wait_for(lambda s: all(len(received(s).get(c, [])) == 11 for c in alive), 15)
        got = received(stream)
        for channel in alive:
            assert got[channel] == [f"{channel} {i}" for i in range(len(channels))
                                    if channels[i] == channel] + [
                f"{channel} {i}" for i, p in enumerate(plan) if p == channel]
    finally:
        cluster.stop()


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
        masters_before = {c: cluster.master_of(slot_of(c)) for c in channels}
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
        # What each channel's master holds now: an acknowledged event it lacks was lost by
        # Redis (replication is asynchronous; the gateway cannot deliver what nobody has). On
        # a loaded machine a master other than the victim may be failed over too.
        masters = {c: cluster.master_of(slot_of(c)) for c in channels}
        kept = {}
        for channel in channels:
            stored = {fields[b"m"] for _, fields in cluster.node(masters[channel]).xrange(
                f"sse-gateway:history:{{{channel}}}")}
            kept[channel] = [d for d in acknowledged[channel]
                             if json.dumps({"data": d}, separators=(",", ":")).encode() in stored]
        new_master = cluster.node(masters[victim_channel])
        for stream in streams:
            stream.wait_for(lambda s: all(received(s).get(c, [])[-1:] == acknowledged[c][-1:]
                                          for c in channels), 20)
            got = received(stream)
            for channel in channels:
                # Once each, in order, and nothing acknowledged missing but what Redis lost.
                assert len(set(got[channel])) == len(got[channel])
                assert got[channel] == sorted(got[channel], key=lambda d: int(d.split()[1]))
                assert set(kept[channel]) <= set(got[channel]) <= set(acknowledged[channel]), (
                    channel, sorted(set(kept[channel]) - set(got[channel])),
                    {"masters before": masters_before, "after": masters},
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


def test_presence_is_summed_over_every_gateway_on_the_cluster(
        redis_cluster, start_gateway, open_stream):
    channels = channels_on_every_shard(redis_cluster, 1, stem="here")
    first, second = [cluster_gateway(start_gateway, redis_cluster, "--presence-interval", "0.5")
                     for _ in range(2)]
    for gateway, names in ((first, channels), (first, channels[:1]), (second, channels)):
        open_stream(events_url(gateway, names))
    both = {c: {"channel": c, "subscribers": 3 if c == channels[0] else 2, "processes": 2}
            for c in channels}
    for gateway in (first, second):
        wait_until(lambda g=gateway: all(presence(g, c) == both[c] for c in channels), 10,
                   message="presence to count both gateways")
    listed = requests.get(f"{second.url}/channels", timeout=5).json()
    assert listed["processes"] == 2
    assert {entry["channel"]: entry for entry in listed["channels"]} == both
    # On one slot, whatever the prefix: every gateway's presence is on one master.
    slots = {key_slot(key) for port in redis_cluster.master_ports()
             for key in redis_cluster.node(port).keys("*presence*")}
    assert len(slots) == 1, slots
    assert second.stop() == 0
    alone = {c: {"channel": c, "subscribers": 2 if c == channels[0] else 1, "processes": 1}
             for c in channels}
    wait_until(lambda: all(presence(first, c) == alone[c] for c in channels), 10,
               message="the stopped gateway to leave presence")


def test_a_gateway_started_before_its_cluster_serves_once_the_cluster_is_up(tmp_path):
    cluster = RedisCluster(replicas=0)
    port = free_port()
    with open(tmp_path / "gateway.log", "wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--redis-url",
             cluster.url, "--redis-cluster", "--presence-interval", "0.5"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    url = f"http://127.0.0.1:{port}"

    def status() -> int:
        assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
        try:
            return requests.get(url + "/healthz", timeout=2).status_code
        except requests.RequestException:
            return 0

    try:
        # Up without its cluster (nothing answers on the seeds' ports): unavailable, not gone.
        assert wait_until(lambda: status() == 503, 15, message="the gateway to answer 503")
        cluster.start()
        wait_until(lambda: status() == 200, 30, message="the gateway to reach the cluster")
        answer = wait_until(lambda: requests.get(url + "/channels", timeout=5), 10)
        assert answer.status_code == 200 and answer.json()["processes"] == 1, answer.text
    finally:
        gateway.kill()
        gateway.wait(10)
        cluster.stop()


CLUSTER_PASSWORD = "cl-SECRET-5b3e"


def test_a_cluster_with_a_password_serves_publishes_and_resumes_and_never_shows_it(
        start_gateway, open_stream):
    cluster = RedisCluster(password=CLUSTER_PASSWORD)  # replicas sync with --masterauth
    try:
        cluster.start()
        channels = channels_on_every_shard(cluster, 1, stem="locked")
        gateway = cluster_gateway(start_gateway, cluster, "--log-level", "debug")
        stream = open_stream(events_url(gateway, channels))
        publisher = Publisher(cluster.url, cluster=True)
        for channel in channels:
            assert gateway.publish(channel, {"data": f"{channel} 0"}).status_code == 200
            assert publisher.publish(channel, f"{channel} 1")["receivers"] == 1
        batch = [{"channel": c, "data": f"{c} 2"} for c in channels]
        assert len(requests.post(f"{gateway.url}/publish/", json=batch, timeout=10)
                   .json()["ids"]) == len(channels)
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "publish", channels[0], f"{channels[0]} 3",
             "--redis-cluster"], cwd=ROOT, capture_output=True, text=True, timeout=30,
            env={**os.environ, "SSE_GATEWAY_REDIS_URL": cluster.url})
        assert done.returncode == 0, done.stderr
        stream.wait_events(3 * len(channels) + 1, 10)
        expected = {c: [f"{c} {n}" for n in range(3)] for c in channels}
        expected[channels[0]].append(f"{channels[0]} 3")
        assert received(stream) == expected
        # Resumed on a gateway that keeps no events in memory: read from the cluster's history.
        reader = cluster_gateway(start_gateway, cluster, "--recent-events", "0")
        first = stream.events[len(channels) - 1]
        resumed = open_stream(events_url(reader, channels), {"Last-Event-ID": first.last_event_id})
        rest = stream.events[len(channels):]
        resumed.wait_events(len(rest), 10)
        assert by_channel(resumed.events) == by_channel(rest)
        assert health(reader)["history_from_broker"] >= 1
        shown = [requests.get(g.url + path, timeout=5).text
                 for g in (gateway, reader) for path in ("/healthz", "/status", "/metrics")]
        for text in shown + [gateway.log(), reader.log()]:
            assert CLUSTER_PASSWORD not in text
        assert "SECRET" not in gateway.log()

        # A wrong password, or none: the gateway does not start, and says why.
        for url, why in ((cluster.url_with("wrong-SECRET-77"), "refused them: "),
                         (cluster.url_with(None), "ask for a password (requirepass), and none")):
            last = refused_cluster_serve(url)
            assert last.startswith("sse-gateway serve: the Redis Cluster refused the "
                                   "credentials of --redis-url ("), last
            assert why in last and "redis://:PASSWORD@host:port" in last
            # So do the publishers.
            with pytest.raises(PublishError, match="refused the credentials of the URL"):
                Publisher(url, cluster=True, timeout=2)
            published = subprocess.run(
                [sys.executable, "-m", "gateway", "publish", channels[0], "x", "--redis-url", url,
                 "--redis-cluster"], cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert published.returncode == 1
            assert "refused the credentials of the URL" in published.stderr, published.stderr
            assert "SECRET" not in published.stderr

        # An ACL user that may run every command on every key but use no pub/sub channel (a
        # new ACL user's default on Redis 7): the gateway does not start either.
        for port in cluster.alive():
            cluster.node(port).acl_setuser("deaf", enabled=True, passwords=[f"+{CLUSTER_PASSWORD}"],
                                           commands=["+@all"], keys=["*"], reset_channels=True)
        last = refused_cluster_serve(cluster.url.replace("redis://:", "redis://deaf:"))
        assert last.startswith("sse-gateway serve: the Redis Cluster refused the ACL user of "
                               "--redis-url (the node 127.0.0.1:"), last
        assert "no permissions to access one of the channels" in last, last
        assert last.endswith("give it the commands, keys and channels the gateway needs"), last
    finally:
        cluster.stop()


def refused_cluster_serve(url: str) -> str:
    """Run `serve` on the cluster of `url`, which must exit 1 saying why, with no password in
    what it prints: its last line."""
    served = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "0", "--redis-url", url,
         "--redis-cluster"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert served.returncode == 1, served.stderr
    assert "SECRET" not in served.stderr
    return served.stderr.strip().splitlines()[-1]
