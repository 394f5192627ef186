"""What a long-poll reads from Redis history: never more than it can answer.

A poll answers with at most `batch` events, so its history read asks Redis for no more
(`XRANGE ... COUNT batch`). A real gateway process and redis-server; Redis' own MONITOR says
what was asked.
"""

from __future__ import annotations

import socket
import time

import requests


def publish_all(gateway, channel: str, count: int) -> list[str]:
    ids = []
    for n in range(count):
        response = gateway.publish(channel, {"data": f"e{n}"})
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def poll(gateway, channel: str, **params) -> dict:
    response = requests.get(f"{gateway.url}/poll/{channel}", params={"timeout": 0, **params},
                            timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


class Monitor:
    """Redis' MONITOR feed: every command the server runs, one line each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.buffer = b""
        assert self._line() == b"+OK"

    def _line(self) -> bytes:
        deadline = time.monotonic() + 10
        while b"\r\n" not in self.buffer:
            assert time.monotonic() < deadline, "MONITOR said nothing"
            data = self.sock.recv(65536)
            assert data, "MONITOR closed"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def next_command(self, name: bytes) -> bytes:
        """The next line of a command `name` (lower case), waiting at most 10 s per line."""
        for _ in range(10_000):
            line = self._line()
            if b'] "' + name + b'"' in line.lower():
                return line
        raise AssertionError(f"no {name!r} in 10,000 commands")

    def close(self) -> None:
        self.sock.close()


def test_a_poll_reads_at_most_its_batch_of_history(start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url)
    ids = publish_all(gateway, "deep", 30)
    monitor = Monitor(redis_db.port)
    try:
        body = poll(gateway, "deep", lastEventId=ids[0], batch=5)
        xrange = monitor.next_command(b"xrange")
    finally:
        monitor.close()
    assert [event["data"] for event in body["events"]] == ["e1", "e2", "e3", "e4", "e5"]
    assert body["lastEventId"] == ids[5]
    assert xrange.lower().endswith(b'"count" "5"'), xrange

