"""Redis Sentinel: the gateway and the Python Publisher find the master through sentinels, and
follow a failover.

Real servers on loopback: a master with a password, one replica (`--replicaof`), three
sentinels with a password of their own (each its own config file, which Sentinel rewrites),
quorum 2, a master declared down after 1 s.

The failover tests kill the master with SIGKILL while four clients stream a channel from one
gateway (reconnecting with their last event id, as test_faults' clients do) and a Publisher
writes numbered events through Sentinel. What the new master's history lacks decides what
the clients must have had. On loopback the replica usually has everything; a second test
makes sure it does not (the replica can no longer authenticate to its master while events
are acknowledged), and checks that a client resuming from before the lost events is told.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest
import redis
import requests
from child_processes import die_with_parent
from conftest import ROOT, Gateway, RedisServer, free_port, wait_until
from sse_client import Stream, subscribed
from test_faults import Client

from gateway import Publisher, PublishError
from gateway.config import Config
from gateway.redis_schema import history_key

MASTER = "mymaster"
PASSWORD = "master-secret"  # the master's and the replica's requirepass
SENTINEL_PASSWORD = "sentinel-secret"
CHANNEL = "counted"
HISTORY = 100_000  # no event is trimmed: every loss is the failover's
CLIENTS = 4
FAILOVER = 20.0  # seconds for the sentinels to agree and promote the replica
CATCH_UP = 20.0


class Sentinels:
    """A master, its replica and three sentinels watching them."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sse-gateway-sentinel-")
        self.master = self._server()
        self.replica = self._server()
        # No 5 s wait before the replica's first full sync (diskless, the default).
        auth = ("--requirepass", PASSWORD, "--masterauth", PASSWORD,
                "--repl-diskless-sync-delay", "0")
        self.master.start(*auth)
        self.replica.start(*auth, "--replicaof", "127.0.0.1", str(self.master.port))
        wait_until(lambda: self.replica.client.info("replication")["master_link_status"] == "up",
                   10, message="the replica to sync")
        self.ports = [free_port() for _ in range(3)]
        self.procs: List[Optional[subprocess.Popen]] = [self._sentinel(p) for p in self.ports]
        self.clients = [redis.Redis(port=p, password=SENTINEL_PASSWORD, socket_timeout=2)
                        for p in self.ports]
        wait_until(self._watching, 15, message="the sentinels to see the replica and each other")

    def _server(self) -> RedisServer:
        server = RedisServer()
        server.client = redis.Redis(port=server.port, password=PASSWORD, socket_timeout=5)
        return server

    def _sentinel(self, port: int) -> subprocess.Popen:
        path = os.path.join(self.dir, f"sentinel-{port}.conf")
        with open(path, "w") as handle:
            handle.write(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                         f"requirepass {SENTINEL_PASSWORD}\n"
                         f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 2\n"
                         f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                         f"sentinel down-after-milliseconds {MASTER} 1000\n"
                         f"sentinel failover-timeout {MASTER} 5000\n")
        return subprocess.Popen([shutil.which("redis-server"), path, "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=die_with_parent())

    def _watching(self) -> bool:
        try:
            states = [c.sentinel_master(MASTER) for c in self.clients]
        except redis.RedisError:
            return False
        return all(s["num-slaves"] == 1 and s["num-other-sentinels"] == 2 for s in states)

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def args(self, master: str = MASTER) -> Tuple[str, ...]:
        return ("--redis-sentinel", self.addresses, "--redis-sentinel-master", master,
                "--redis-url", f"redis://:{PASSWORD}@/0",
                "--redis-sentinel-password", SENTINEL_PASSWORD)

    def publisher(self, **options) -> Publisher:
        return Publisher(f"redis://:{PASSWORD}@/0", sentinels=self.addresses, master=MASTER,
                         sentinel_password=SENTINEL_PASSWORD, **options)

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for client in self.clients:
            try:
                return int(client.sentinel_get_master_addr_by_name(MASTER)[1])
            except (redis.RedisError, TypeError):
                continue
        raise AssertionError("no sentinel answers")

    def stop_sentinel(self, index: int) -> None:
        proc = self.procs[index]
        proc.kill()
        proc.wait(10)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for client in self.clients:
            client.close()
        self.master.cleanup()
        self.replica.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinels():
    """A set of one's own, for a test that kills part of it."""
    found = Sentinels()
    try:
        yield found
    finally:
        found.cleanup()


@pytest.fixture(scope="module")
def shared_sentinels():
    """A set for the tests that leave it as they found it."""
    found = Sentinels()
    try:
        yield found
    finally:
        found.cleanup()


def secret_free(text: str) -> bool:
    return PASSWORD not in text and SENTINEL_PASSWORD not in text


class CountingPublisher:
    """Publishes 0, 1, 2, ... through Sentinel's master, one every 20 ms, in a thread."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.acked: List[Tuple[int, str]] = []  # (seq, id) that Redis acknowledged
        self.failed = 0
        self.attempted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def last_acked(self) -> int:
        return self.acked[-1][0] if self.acked else -1

    def _run(self) -> None:
        while not self._stop.is_set():
            seq = self.attempted
            self.attempted += 1
            try:
                reply = self._publisher.publish(CHANNEL, str(seq))
            except PublishError:
                self.failed += 1  # not acknowledged: it may or may not be stored
            else:
                self.acked.append((seq, reply["id"]))
            self._stop.wait(0.02)


def test_a_gateway_on_sentinels_serves_and_publishes(shared_sentinels, start_gateway,
                                                     open_stream):
    sentinels = shared_sentinels
    gateway = start_gateway(*sentinels.args(), "--heartbeat", "1")
    stream = open_stream(f"{gateway.url}/events/{CHANNEL}")
    assert gateway.publish(CHANNEL, {"data": "over http"}).status_code == 200
    publisher = sentinels.publisher()
    sent = publisher.publish(CHANNEL, "from Python")
    stream.wait_events(2)
    assert [e.data for e in stream.events] == ["over http", "from Python"]
    assert stream.events[1].last_event_id == sent["id"]
    # Both went to the master, and from it to the replica.
    assert sentinels.master.client.xlen(history_key("", CHANNEL)) == 2
    wait_until(lambda: sentinels.replica.client.xlen(history_key("", CHANNEL)) == 2, 5,
               message="the replica to have both events")
    body = requests.get(gateway.url + "/healthz", timeout=5).json()
    assert body["status"] == "ok" and body["broker"] == "redis"
    # `sse-gateway publish` finds the master likewise, its passwords from the environment.
    env = {**os.environ, "SSE_GATEWAY_REDIS_SENTINEL": sentinels.addresses,
           "SSE_GATEWAY_REDIS_SENTINEL_MASTER": MASTER,
           "SSE_GATEWAY_REDIS_URL": f"redis://:{PASSWORD}@/0",
           "SSE_GATEWAY_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    done = subprocess.run([sys.executable, "-m", "gateway", "publish", CHANNEL, "from the CLI"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    stream.wait_events(3)
    assert stream.events[2].data == "from the CLI"
    assert secret_free(gateway.log())


def test_a_sentinel_down_among_three_changes_nothing(sentinels, start_gateway, open_stream):
    sentinels.stop_sentinel(0)  # the first one asked
    gateway = start_gateway(*sentinels.args(), "--heartbeat", "1")
    stream = open_stream(f"{gateway.url}/events/{CHANNEL}")
    assert gateway.publish(CHANNEL, {"data": "one"}).status_code == 200
    sentinels.publisher(timeout=2).publish(CHANNEL, "two")
    stream.wait_events(2)
    assert [e.data for e in stream.events] == ["one", "two"]
    assert requests.get(gateway.url + "/healthz", timeout=5).json()["status"] == "ok"


class AnsweringGateway(Gateway):
    """A gateway that need not be healthy: it is ready once it answers /healthz at all."""

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited early:\n{self.log()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code in (200, 503)
        except requests.RequestException:
            return False


def test_a_wrong_master_name_is_a_clear_error(shared_sentinels):
    sentinels = shared_sentinels
    with pytest.raises(PublishError, match="No master found for 'nosuch'"):
        Publisher(f"redis://:{PASSWORD}@/0", sentinels=sentinels.addresses, master="nosuch",
                  sentinel_password=SENTINEL_PASSWORD, timeout=2).publish(CHANNEL, "x")
    gateway = AnsweringGateway(list(sentinels.args(master="nosuch")))
    try:
        answer = requests.get(gateway.url + "/healthz", timeout=5)
        assert answer.status_code == 503
        assert "No master found for 'nosuch'" in answer.json()["detail"]
        assert secret_free(answer.text) and secret_free(gateway.log())
    finally:
        gateway.cleanup()


@pytest.mark.parametrize("settings, problem", [
    ({"redis_sentinel": "127.0.0.1:26379"}, "needs --redis-sentinel-master"),
    ({"redis_sentinel_master": MASTER}, "need --redis-sentinel"),
    ({"redis_sentinel": "127.0.0.1", "redis_sentinel_master": MASTER}, "is not HOST:PORT"),
    ({"redis_sentinel": "127.0.0.1:26379", "redis_sentinel_master": MASTER,
      "redis_url": f"redis://:{PASSWORD}@127.0.0.1:6379/0"}, "its address comes from"),
    ({"redis_sentinel": "127.0.0.1:26379", "redis_sentinel_master": MASTER,
      "redis_url": "unix:///tmp/redis.sock"}, "must be redis:// or rediss://"),
])
def test_sentinel_settings_that_do_not_go_together_are_refused(settings, problem):
    with pytest.raises(ValueError, match=problem) as refused:
        Config(**settings)
    assert secret_free(str(refused.value))


def test_a_sentinel_setting_error_stops_serve_with_its_reason():
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--redis-sentinel",
                           "127.0.0.1:26379"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert "--redis-sentinel needs --redis-sentinel-master" in done.stderr


def failover(sentinels: Sentinels, start_gateway,
             before_kill: Callable[[CountingPublisher], None] = lambda publisher: None,
             ) -> Tuple[List[Client], CountingPublisher, Set[int]]:
    """Streams open and a publisher publishing, the master is killed: once the sentinels have
    promoted the replica, the publisher's events are acknowledged again, every client has
    the latest, /healthz is 200 and a publish through the gateway works. Returns the clients,
    the publisher, and the acknowledged events that the new master lacks."""
    gateway = start_gateway(*sentinels.args(), "--heartbeat", "1", "--history-length",
                            str(HISTORY))
    stop = threading.Event()
    clients = [Client([f"{gateway.url}/events/{CHANNEL}"], stop) for _ in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    publisher = CountingPublisher(sentinels.publisher(history_length=HISTORY, timeout=2))
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(c.subscribed for c in clients), 15, message="every client")
        publisher.start()
        wait_until(lambda: publisher.last_acked() >= 20, 10, message="events before the kill")
        before_kill(publisher)
        assert sentinels.master_port() == sentinels.master.port
        sentinels.master.proc.kill()
        sentinels.master.proc.wait(10)
        killed_at = publisher.attempted
        wait_until(lambda: sentinels.master_port() == sentinels.replica.port, FAILOVER,
                   message="the sentinels to promote the replica")
        # The publisher reaches the new master, and every client has what it acknowledged.
        first = wait_until(lambda: publisher.last_acked() > killed_at and publisher.last_acked(),
                           CATCH_UP, message="a publish acknowledged by the new master")
        target = wait_until(lambda: publisher.last_acked() >= first + 10
                            and publisher.last_acked(), CATCH_UP,
                            message="more publishes acknowledged by the new master")
        wait_until(lambda: all(c.last_seq() >= target for c in clients), CATCH_UP,
                   message=f"every client to catch up: {[c.last_seq() for c in clients]} "
                           f"< {target}")
        wait_until(lambda: requests.get(gateway.url + "/healthz", timeout=5).status_code == 200,
                   CATCH_UP, message="the gateway's /healthz to recover")
        # The gateway's own publish connection follows too.
        with Stream(f"{gateway.url}/events/other") as other:
            other.wait_for(subscribed)
            answer = gateway.publish("other", {"data": "through the gateway"})
            assert answer.status_code == 200, answer.text
            assert other.wait_events(1)[0].data == "through the gateway"
    finally:
        publisher.close()
        stop.set()
        for thread in threads:
            thread.join(10)
    assert secret_free(gateway.log())
    kept = {entry_id.decode() for entry_id, _ in
            sentinels.replica.client.xrange(history_key("", CHANNEL))}
    lost = {seq for seq, event_id in publisher.acked if event_id not in kept}
    return clients, publisher, lost


def check_clients(clients: List[Client], acked: Dict[int, str], lost: Set[int]) -> None:
    """Every acknowledged event once and in order, under the id Redis gave it, but those the
    new master lacks; a client that missed some of these has a gateway-reset before the events
    after them; none has one when nothing was lost."""
    for index, client in enumerate(clients):
        seqs = [item.seq for item in client.received if item.seq is not None]
        where = f"client {index} ({client.connections} connections, {client.failures[-3:]})"
        assert all(a < b for a, b in zip(seqs, seqs[1:])), f"{where}: out of order: {seqs}"
        assert all(item.event_id == acked[item.seq] for item in client.received
                   if item.seq in acked), f"{where}: events under another id than Redis gave"
        missing = set(acked) - set(seqs)
        assert missing <= lost, f"{where}: never received {sorted(missing - lost)}"
        resets = [n for n, item in enumerate(client.received) if item.seq is None]
        if missing:
            assert resets, f"{where}: {sorted(missing)} lost silently"
            after = [n for n, item in enumerate(client.received)
                     if item.seq is not None and item.seq > max(missing)]
            assert not after or min(resets) < min(after), \
                f"{where}: the gateway-reset came after the events that follow the loss"
            assert {client.received[n].reason for n in resets} == {"history-lost"}
        elif not lost:
            assert not resets, f"{where}: a gateway-reset, though nothing was lost"


def test_the_gateway_and_the_publisher_follow_a_failover(sentinels, start_gateway):
    """Every acknowledged event reaches every client once, in order; should the new master
    lack some (replication is asynchronous, and they may not have reached it), a reset."""
    clients, publisher, lost = failover(sentinels, start_gateway)
    check_clients(clients, dict(publisher.acked), lost)
    print(f"failover: {len(publisher.acked)} events acknowledged, {publisher.failed} "
          f"publishes failed during the switch, {len(lost)} acknowledged events lost")


def test_events_the_new_master_never_received_end_in_a_reset(sentinels, start_gateway):
    """The replica stops receiving (it can no longer authenticate to the master), events are
    acknowledged by the master alone, then the master is killed: the replica that takes
    over lacks them, and every client is told with a gateway-reset."""

    def cut_replication(publisher: CountingPublisher) -> None:
        sentinels.replica.client.config_set("masterauth", "wrong")
        sentinels.master.client.client_kill_filter(_type="replica")
        wait_until(lambda: sentinels.replica.client.info("replication")["master_link_status"]
                   == "down", 10, message="the replica to lose its master")
        cut = publisher.last_acked()
        wait_until(lambda: publisher.last_acked() >= cut + 10, 10,
                   message="events only the master has")

    clients, publisher, lost = failover(sentinels, start_gateway, cut_replication)
    assert len(lost) >= 10, f"the new master lacks only {sorted(lost)}"
    # The open streams had them live, and lost nothing.
    check_clients(clients, dict(publisher.acked), lost)
    # A client that was away resumes from before them, and is told.
    acked = dict(publisher.acked)
    late = Client(clients[0].urls, threading.Event())
    late.cursor = acked[min(lost) - 5]
    resume(late, max(acked))
    # Told first, then given what the new master holds after its cursor.
    assert [item.seq for item in late.received[:5]] == [None, *range(min(lost) - 4, min(lost))]
    late_acked = {seq: event_id for seq, event_id in acked.items() if seq > min(lost) - 5}
    check_clients([late], late_acked, lost)
    assert set(late_acked) - {item.seq for item in late.received} == lost


def resume(client: Client, last: int) -> None:
    """Run the client (from its cursor) until it has event `last`."""
    reader = threading.Thread(target=client.run, daemon=True)
    reader.start()
    try:
        wait_until(lambda: client.last_seq() >= last, CATCH_UP, message=f"event {last}")
    finally:
        client.stop.set()
        reader.join(10)
