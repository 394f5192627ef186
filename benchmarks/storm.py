#!/usr/bin/env python3
"""Reconnect storm: N event-stream clients reconnect at once with a recent Last-Event-ID.

What a gateway restart looks like to the process that takes its clients: they all come back in
the same instant, each with the id of the last event it saw. This measures how long one server
takes to give every one of them what it missed, how many got it (200 and exactly the missed
events, in order), its CPU, and, with ``--redis-url``, the Redis commands it cost (``INFO
commandstats`` before and after). Prints ONE line of JSON.

1. A probe subscriber connects; ``--events`` M events are published (the loadgen payload).
2. The probe takes the id of event M - K - 1, K = ``--missed``: the clients' Last-Event-ID.
3. N clients connect at once, all in one loop turn, and read until they have their K events.

Usage (see benchmarks/README.md)::

    python benchmarks/storm.py --url http://127.0.0.1:8080/events/bench --clients 3000 \
        --publish http-json --publish-url http://127.0.0.1:8080/publish/bench \
        --redis-url redis://127.0.0.1:6379/0 --server-pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from urllib.parse import urlsplit

import loadgen
from loadgen import (
    HttpPublisher,
    Stats,
    Subscriber,
    make_payload,
    percentile,
    proc_cpu_seconds,
    require_loopback,
    split_http_url,
    sum_readings,
)

_ID_LINE = re.compile(rb"(?:^|\n)id: ?([^\n]*)")


class Client(Subscriber):
    """An event-stream client that notes each benchmark event's sequence and id."""

    __slots__ = ("answered", "done", "ids", "seqs", "want")

    def __init__(self, request: bytes, stats: Stats, want: int, done: asyncio.Future) -> None:
        super().__init__(request, stats)
        self.want = want
        self.done = done
        self.seqs: list[int] = []
        self.ids: list[bytes] = []
        self.answered = False  # got 200 text/event-stream

    def _head(self, data: bytes) -> None:
        before = self.stats.headers_ok
        super()._head(data)
        self.answered = self.stats.headers_ok > before

    def _sample(self, event: bytes, start: int, now: int) -> bool:
        if not super()._sample(event, start, now):
            return False
        self.seqs.append(self.last_seq)
        found = _ID_LINE.search(event[start:])
        self.ids.append(found.group(1).strip() if found else b"")
        if len(self.seqs) >= self.want and not self.done.done():
            self.done.set_result(time.monotonic())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.done.done():
            self.done.set_result(None)

    def _give_up(self, reason: str) -> None:
        super()._give_up(reason)
        if not self.done.done():
            self.done.set_result(None)


def request_bytes(url: str, last_event_id: bytes | None) -> bytes:
    host, port, path = split_http_url(url)
    resume = b"Last-Event-ID: %s\r\n" % last_event_id if last_event_id else b""
    return (b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n%s\r\n" % (path.encode(), host.encode(), port, resume))


async def redis_command_calls(url: str) -> dict[str, int]:
    """Calls per command since Redis started, from INFO commandstats (raw RESP, no client)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    require_loopback(host)
    reader, writer = await asyncio.open_connection(host, parts.port or 6379)
    try:
        writer.write(b"INFO commandstats\r\n")
        head = await reader.readline()
        if not head.startswith(b"$"):
            raise RuntimeError(f"INFO answered {head[:80]!r}")
        body = await reader.readexactly(int(head[1:]) + 2)
    finally:
        writer.close()
    calls = {}
    for line in body.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_"):].partition(":")
            fields = dict(item.split("=", 1) for item in stats.split(","))
            calls[name] = int(fields["calls"])
    return calls


def redis_command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, object]:
    """What a workload cost Redis: calls per command between two readings, and their total
    (the readings' own INFO left out)."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta = {name: n for name, n in sorted(delta.items()) if n and name != "info"}
    return {"redis_commands": delta, "redis_command_total": sum(delta.values())}


async def open_client(loop: asyncio.AbstractEventLoop, url: str, client: Client) -> None:
    host, port, _ = split_http_url(url)
    try:
        await loop.create_connection(lambda: client, host, port)
    except OSError as error:
        client.stats.fail(type(error).__name__)
        if not client.done.done():
            client.done.set_result(None)


async def storm(a: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    result: dict[str, object] = {"label": a.label, "clients": a.clients, "events": a.events,
                                 "missed": a.missed}
    probe = Client(request_bytes(a.url, None), Stats(), a.events, loop.create_future())
    await open_client(loop, a.url, probe)
    deadline = time.monotonic() + a.timeout
    while probe.state == loadgen.HEAD and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if probe.state != loadgen.BODY:
        raise RuntimeError(f"the probe subscriber got no stream: {probe.stats.failed}")
    publisher = HttpPublisher(a.publish_url, a.publish == "http-json", a.timeout)
    try:
        for seq in range(a.events):
            await publisher.publish(make_payload(seq, time.time_ns()))
    finally:
        publisher.close()
    await asyncio.wait_for(probe.done, a.timeout)
    probe.close()
    if probe.seqs != list(range(a.events)) or not all(probe.ids):
        raise RuntimeError(f"the probe got events {probe.seqs[:20]} with ids {probe.ids[:3]}")
    first_missed = a.events - a.missed
    resume_id = probe.ids[first_missed - 1]
    result["last_event_id"] = resume_id.decode("latin-1")

    calls0 = await redis_command_calls(a.redis_url) if a.redis_url else {}
    cpu0 = sum_readings(a.server_pid, proc_cpu_seconds)
    stats = Stats()
    request = request_bytes(a.url, resume_id)
    clients = [Client(request, stats, a.missed, loop.create_future()) for _ in range(a.clients)]
    t0 = time.monotonic()
    openers = [asyncio.ensure_future(open_client(loop, a.url, c)) for c in clients]
    done, pending = await asyncio.wait([c.done for c in clients], timeout=a.timeout)
    await asyncio.gather(*openers, return_exceptions=True)
    cpu1 = sum_readings(a.server_pid, proc_cpu_seconds)
    calls1 = await redis_command_calls(a.redis_url) if a.redis_url else {}
    stats.closing = True
    for client in clients:
        client.close()

    wanted = list(range(first_missed, a.events))
    times = sorted(c.done.result() - t0 for c in clients
                   if c.done.done() and c.done.result() is not None and c.seqs == wanted)
    wrong = sum(1 for c in clients if c.seqs and c.seqs != wanted)
    reasons = dict(stats.failed)
    if pending:
        reasons["no events in time"] = len(pending)
    # 200, then the end of the stream: a retry hint, say, from a server that could not read.
    ended = sum(1 for c in clients if c.answered and c.done.done() and c.done.result() is None)
    if ended:
        reasons["stream ended before its events"] = ended
    result.update(
        ok=len(times),
        got_other_events=wrong,
        headers_ok=stats.headers_ok,
        fail_reasons=reasons,
        serve_seconds=round(times[-1], 3) if len(times) == a.clients else None,
    )
    if times:
        micros = [int(t * 1e6) for t in times]
        result.update(serve_p50_ms=round(percentile(micros, 0.5), 1),
                      serve_p99_ms=round(percentile(micros, 0.99), 1))
    if cpu0 is not None and cpu1 is not None:
        result["server_cpu_s"] = round(cpu1 - cpu0, 3)
        result["cpu_ms_per_client"] = round((cpu1 - cpu0) / a.clients * 1000, 3)
    if a.redis_url:
        result.update(redis_command_delta(calls0, calls1))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="event-stream URL (one channel)")
    p.add_argument("-n", "--clients", type=int, default=3000)
    p.add_argument("--events", type=int, default=10, help="events published before the storm")
    p.add_argument("--missed", type=int, default=5, help="of which each client missed the last K")
    p.add_argument("--publish", choices=("http-json", "http-nchan"), default="http-json")
    p.add_argument("--publish-url", required=True)
    p.add_argument("--redis-url", help="the server's Redis: count its commands")
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="server process to measure (repeat: server, its Redis)")
    p.add_argument("--timeout", type=float, default=60.0, help="limit for each phase")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    if not 0 < args.missed < args.events:
        p.error("--missed must be above 0 and below --events")
    return args


def run_once(label: str, workload, hard_timeout: float) -> int:
    """Run one workload coroutine and print its ONE line of JSON, an error line included;
    past `hard_timeout` seconds the process prints a timeout line and exits."""

    def on_alarm(signum: int, frame: object) -> None:
        print(json.dumps({"label": label, "error": "hard timeout"}), flush=True)
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(hard_timeout))
    try:
        result = asyncio.run(workload)
    except Exception as error:  # noqa: BLE001 - a failed run still prints its JSON line
        result = {"label": label, "error": repr(error)}
    signal.alarm(0)
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_once(args.label, storm(args), args.timeout * 3 + 30)

if __name__ == "__main__":
    sys.exit(main())
