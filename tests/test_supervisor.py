"""`serve --workers N`: several gateway processes on one port, with a real redis-server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager

import pytest
from child_processes import die_with_parent, gone
from conftest import ROOT, free_port, wait_until
from sse_client import Stream, StreamClosed, subscribed

STREAMS = 60  # spread over 3 workers by the kernel: the chance one gets none is ~1e-10


def worker_pids(supervisor_pid: int) -> set[int]:
    with open(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children") as f:
        return {int(pid) for pid in f.read().split()}


def start_workers(start_gateway, count: int, *args: str):
    gateway = start_gateway("--workers", str(count), *args)
    # A worker listens once its Redis connection is up; until then the others take its share.
    wait_until(lambda: gateway.log().count("listening on") == count, 15,
               message=f"{count} workers to listen")
    assert len(worker_pids(gateway.proc.pid)) == count
    return gateway


@contextmanager
def subscribed_streams(url: str, count: int):
    """`count` streams of `url`, each subscribed; all are closed on leaving."""
    streams: list[Stream] = []
    try:
        for _ in range(count):
            streams.append(Stream(url))
        for stream in streams:
            stream.wait_for(subscribed)
        yield streams
    finally:
        for stream in streams:
            stream.close()


def test_workers_share_the_port_each_with_one_redis_subscription(start_gateway, redis_db):
    gateway = start_workers(start_gateway, 3, "--redis-url", redis_db.url)
    with subscribed_streams(f"{gateway.url}/events/shared", STREAMS) as streams:
        # One pub/sub subscription per worker process, whatever its number of streams.
        assert redis_db.client.pubsub_numsub("shared") == [(b"shared", 3)]
        event_id = gateway.publish("shared", {"data": "to all"}).json()["id"]
        for stream in streams:
            [event] = stream.wait_events(1)
            assert (event.data, event.last_event_id) == ("to all", event_id)


def test_a_killed_worker_is_replaced_and_its_clients_resume_elsewhere(start_gateway, redis_db):
    gateway = start_workers(start_gateway, 2, "--redis-url", redis_db.url)
    before = worker_pids(gateway.proc.pid)
    with subscribed_streams(f"{gateway.url}/events/survive", 20) as streams:
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(gateway.proc.pid) - {victim}) == 2, 15,
                   message="the supervisor to start a new worker")
        assert "exited (signal 9); restarting it" in gateway.log()
        missed = gateway.publish("survive", {"data": "while reconnecting"}).json()["id"]
        for stream in streams:
            try:
                [event] = stream.wait_events(1)
            except StreamClosed:  # it was on the killed worker: resume from its last id
                with Stream(f"{gateway.url}/events/survive",
                            headers={"Last-Event-ID": stream.parser.last_event_id}) as resumed:
                    [event] = resumed.wait_events(1)
            assert (event.data, event.last_event_id) == ("while reconnecting", missed)


def test_sigterm_ends_every_workers_streams_and_exits_zero(start_gateway, redis_db):
    gateway = start_workers(start_gateway, 2, "--redis-url", redis_db.url,
                            "--shutdown-timeout", "3")
    pids = worker_pids(gateway.proc.pid)
    with subscribed_streams(f"{gateway.url}/events/bye", 20) as streams:
        gateway.proc.send_signal(signal.SIGTERM)
        for stream in streams:
            stream.read_to_end(15)
            assert stream.ended, "each response ends with the chunked terminator"
    assert gateway.proc.wait(15) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the supervisor"
    assert "all workers stopped" in gateway.log()


def test_workers_stop_when_the_supervisor_is_killed_and_free_the_port(start_gateway, redis_db):
    gateway = start_workers(start_gateway, 2, "--redis-url", redis_db.url,
                            "--shutdown-timeout", "3")
    pids = worker_pids(gateway.proc.pid)
    with subscribed_streams(f"{gateway.url}/events/orphans", 4) as streams:
        gateway.proc.kill()  # as the OOM killer would: the supervisor runs no code of its own
        assert gateway.proc.wait(10) == -signal.SIGKILL
        for stream in streams:
            stream.read_to_end(15)
            assert stream.ended, "each worker ended its streams cleanly"
        wait_until(lambda: all(map(gone, pids)), 15, message=f"the workers {pids} to exit")
    with socket.socket() as probe:  # no SO_REUSEPORT: it binds only if no worker holds the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", gateway.port))
        probe.listen()


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30,
                          preexec_fn=die_with_parent())


def test_workers_need_redis():
    result = serve("--port", str(free_port()), "--workers", "2")
    assert result.returncode == 2
    assert "workers above 1 need --redis-url" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_reported_in_one_line(redis_db, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--port", str(port), "--workers", workers, "--redis-url", redis_db.url)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
