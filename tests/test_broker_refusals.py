"""Settings Redis will never accept end the startup; raw broker messages are bounded.

Real redis-servers with `requirepass` and ACL users, real Sentinel, real gateway processes.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis
import requests
from conftest import ROOT, RedisServer, wait_until
from sse_client import Stream, subscribed
from test_sentinel import MASTER, PASSWORD, SENTINEL_PASSWORD, Sentinels

from gateway import Publisher
from gateway.redis_schema import history_key

SECRET = "pw-SECRET-51d0"
OTHER = "pw-SECRET-other-7e3"
STARTUP = 15.0  # seconds a refused gateway may take to exit, on a loaded machine


@pytest.fixture
def locked_redis():
    """A redis-server asking for SECRET, with an ACL user `blind` that may run nothing, and
    `deaf`, that may run everything on every key but use no pub/sub channel (a new ACL user's
    default on Redis 7)."""
    server = RedisServer()
    server.client = redis.Redis(port=server.port, password=SECRET, socket_timeout=5)
    server.start("--requirepass", SECRET)
    server.client.acl_setuser("blind", enabled=True, passwords=[f"+{SECRET}"],
                              commands=["-@all", "+ping"], keys=["*"], channels=["*"])
    server.client.acl_setuser("deaf", enabled=True, passwords=[f"+{SECRET}"],
                              commands=["+@all"], keys=["*"], reset_channels=True)
    try:
        yield server
    finally:
        server.cleanup()


def url(server: RedisServer, credentials: str) -> str:
    return f"redis://{credentials}127.0.0.1:{server.port}/0"


def refused_serve(*args: str) -> tuple[str, float]:
    """Run `serve` with `args`, which must exit 1 within STARTUP: its stderr's last line, and
    how long it took."""
    began = time.monotonic()
    served = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", "0", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=STARTUP + 15)
    took = time.monotonic() - began
    assert served.returncode == 1, served.stderr
    assert "SECRET" not in served.stderr + served.stdout
    # One line says why; no traceback, no worker restarted, nothing else at error level.
    for noise in ("Traceback", "restarting", "ERROR"):
        assert noise not in served.stderr, served.stderr
    lines = served.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("sse-gateway serve:")] == lines[-1:]
    return lines[-1], took


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("credentials, why", [
    (f":{OTHER}@", "the password (or ACL user) of --redis-url is wrong"),
    ("", "(it asks for a password, and none is given): give it as redis://:PASSWORD@host:port"),
    (f"blind:{SECRET}@", "give the ACL user of --redis-url the commands, keys and channels the "
                         "gateway needs"),
    (f"deaf:{SECRET}@", "give the ACL user of --redis-url the commands, keys and channels the "
                        "gateway needs"),
])
def test_credentials_redis_refuses_end_the_startup(locked_redis, credentials, why, workers):
    line, took = refused_serve("--redis-url", url(locked_redis, credentials),
                               "--workers", str(workers))
    assert line.startswith("sse-gateway serve: Redis at redis://"), line
    assert "refused the credentials of --redis-url (" in line and line.endswith(why), line
    assert took < STARTUP, took


def test_credentials_a_sentinel_or_its_master_refuses_end_the_startup():
    sentinels = Sentinels()
    try:
        base = ("--redis-sentinel", sentinels.addresses, "--redis-sentinel-master", MASTER)
        line, _ = refused_serve(*base, "--redis-url", f"redis://:{SECRET}@/0",
                                "--redis-sentinel-password", SENTINEL_PASSWORD)
        assert line.startswith(f"sse-gateway serve: the master '{MASTER}' at 127.0.0.1:"), line
        assert line.endswith("the password (or ACL user) of --redis-url is wrong"), line
        line, _ = refused_serve(*base, "--redis-url", f"redis://:{PASSWORD}@/0",
                                "--redis-sentinel-password", SECRET, "--workers", "2")
        assert line.startswith("sse-gateway serve: the sentinel 127.0.0.1:"), line
        assert line.endswith("the password of --redis-sentinel-password is wrong"), line
        line, _ = refused_serve(*base, "--redis-url", f"redis://:{PASSWORD}@/0")
        assert line.endswith("it asks for a password: give --redis-sentinel-password"), line
    finally:
        sentinels.cleanup()


def healthz(gateway) -> requests.Response:
    return requests.get(gateway.url + "/healthz", timeout=5)


def test_a_refusal_after_serving_is_retried_and_named_until_the_password_is_back(
        start_gateway, locked_redis):
    gateway = start_gateway("--redis-url", url(locked_redis, f":{SECRET}@"), "--heartbeat", "1")
    with Stream(gateway.url + "/events/kept") as stream:
        stream.wait_for(subscribed)
        assert gateway.publish("kept", {"data": "before"}).status_code == 200
        stream.wait_events(1)
        locked_redis.stop()
        locked_redis.client = redis.Redis(port=locked_redis.port, password=OTHER,
                                          socket_timeout=5)
        locked_redis.start("--requirepass", OTHER)

        def refused_named() -> bool:
            response = healthz(gateway)
            return (response.status_code == 503
                    and "refused the credentials of --redis-url" in response.json()["detail"])
        wait_until(refused_named, 20, message="/healthz to name the refusal")
        wait_until(lambda: "Redis refused the credentials of --redis-url" in gateway.log()
                   and "ERROR" in gateway.log(), 20, message="the refusal logged as an error")
        assert gateway.proc.poll() is None
        seen = len(stream.body)
        stream.wait_for(lambda s: len(s.body) > seen, 10)  # its heartbeats go on
        assert not stream.ended
        with Stream(gateway.url + "/events/new") as fresh:
            assert fresh.status == 200  # told to come back later, never a final status
        assert SECRET not in healthz(gateway).text and OTHER not in healthz(gateway).text

        locked_redis.client.config_set("requirepass", SECRET)
        locked_redis.client = redis.Redis(port=locked_redis.port, password=SECRET,
                                          socket_timeout=5)
        wait_until(lambda: healthz(gateway).status_code == 200, 20,
                   message="the gateway to recover once the password is back")
        assert gateway.publish("kept", {"data": "after"}).status_code == 200
        # Redis kept no data across its restart: the stream is told history was lost, then
        # the next event comes.
        stream.wait_for(lambda s: [e.data for e in s.events][-1:] == ["after"], 10)
    assert "SECRET" not in gateway.log()


def test_raw_messages_larger_than_a_publish_are_refused_and_the_next_delivered(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--max-message-size", "1000")
    with Stream(gateway.url + "/events/raw") as stream:
        stream.wait_for(subscribed)
        redis_db.client.publish("raw", "x" * 1000)  # the limit: delivered
        redis_db.client.publish("raw", "CONTENT" * 200)  # 1400 bytes: refused
        redis_db.client.publish("raw", "next")
        assert [e.data for e in stream.wait_events(2, 10)] == ["x" * 1000, "next"]
    body = healthz(gateway).json()
    assert body["refused"] == 1, body
    log = gateway.log()
    assert "channel 'raw'" in log and "1400 bytes" in log and "CONTENT" not in log


def test_history_entries_larger_than_any_publish_could_write_are_skipped(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url, "--max-message-size", "1000")
    key = history_key("", "long")
    first = redis_db.client.xadd(key, {"m": '{"data": "first"}'}).decode()
    # 6 bytes per byte of body (a control character's escape) and the fields' names: the most.
    redis_db.client.xadd(key, {"m": '{"data": "%s"}' % ("\\u0001" * 1000)})
    redis_db.client.xadd(key, {"m": '{"data": "%s"}' % ("y" * 7100)})
    redis_db.client.xadd(key, {"m": '{"data": "last"}'})
    with Stream(gateway.url + "/events/long", {"Last-Event-ID": first}) as stream:
        assert [e.data for e in stream.wait_events(2, 10)] == ["\x01" * 1000, "last"]
    assert healthz(gateway).json()["skipped"] == 1
    assert "more than a publish of --max-message-size could have written" in gateway.log()


def test_a_live_message_larger_than_any_publish_could_write_is_refused_as_in_history(
        start_gateway, redis_db):
    """Published past the HTTP edge (a Python Publisher not told the gateway's limit runs the
    script itself): live and from history alike, the message is refused, and what follows is
    delivered."""
    gateway = start_gateway("--redis-url", redis_db.url, "--max-message-size", "1000")
    publisher = Publisher(redis_db.url)
    with Stream(gateway.url + "/events/long") as stream:
        stream.wait_for(subscribed)
        first = publisher.publish("long", "first")["id"]
        publisher.publish("long", "y" * 7100)
        publisher.publish("long", "last")
        assert [e.data for e in stream.wait_events(2, 10)] == ["first", "last"]
    assert healthz(gateway).json()["refused"] == 1
    with Stream(gateway.url + "/events/long", {"Last-Event-ID": first}) as resumed:
        assert [e.data for e in resumed.wait_events(1, 10)] == ["last"]
