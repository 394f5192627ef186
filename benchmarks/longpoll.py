#!/usr/bin/env python3
"""Long-poll workload: N clients long-poll one channel while R events/s are published.

Each client holds one kept-alive HTTP/1.1 connection and polls again as soon as an answer
comes, from where that answer left it: the gateway's `lastEventId` (`--protocol gateway`,
`GET /poll/<channel>?lastEventId=...`, a JSON batch per answer) or nchan's `Last-Modified`
and `Etag` sent back as `If-Modified-Since` and `If-None-Match` (`--protocol nchan`,
`nchan_subscriber longpoll`, one message per answer). Payloads are loadgen's (sequence and
publish time inside), published open loop as loadgen does. Prints ONE line of JSON: deliveries
against those expected, publish-to-receipt latency, polls answered, the server's CPU per
delivery and, with ``--redis-url``, the Redis commands the phase cost.

    python benchmarks/longpoll.py --url http://127.0.0.1:8080/poll/bench --clients 1000 \
        --rate 2 --duration 10 --publish http-json \
        --publish-url http://127.0.0.1:8080/publish/bench --server-pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from array import array
from urllib.parse import quote

from loadgen import (
    HttpPublisher,
    cores_cpu_seconds,
    kernel_threads_cpu_seconds,
    make_payload,
    percentile,
    proc_cpu_seconds,
    split_http_url,
    sum_readings,
)
from storm import redis_command_calls, redis_command_delta, run_once

time_ns = time.time_ns


class Totals:
    def __init__(self) -> None:
        self.connected = 0
        self.delivered = 0
        self.polls = 0
        self.duplicates = 0
        self.reordered = 0
        self.failed: dict[str, int] = {}
        self.latency_us = array("q")
        # While events are being published, a gateway poll answers with at least one: one
        # that comes back empty then was not woken by them (or the broker was down).
        self.publishing = False
        self.empty = 0
        self.held_max = 0.0  # the longest a poll answered empty while publishing was held

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, headers, b"".join(parts)
    return status, headers, await reader.readexactly(int(headers.get(b"content-length", b"0")))


class Poller:
    """One client's poll loop, on one connection, until `stop` is set."""

    def __init__(self, url: str, protocol: str, hold: float, totals: Totals) -> None:
        self.host, self.port, self.path = split_http_url(url)
        self.protocol = protocol
        self.hold = hold
        self.totals = totals
        self.cursor: str | None = None  # the gateway's lastEventId
        self.cache: list[tuple[bytes, bytes]] = []  # nchan's If-* headers
        self.last_seq = -1

    def request(self) -> bytes:
        path, extra = self.path, b""
        if self.protocol == "gateway":
            path += f"?timeout={self.hold:g}"
            if self.cursor is not None:
                path += "&lastEventId=" + quote(self.cursor)
        else:
            extra = b"".join(b"%s: %s\r\n" % pair for pair in self.cache)
        return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
            path.encode(), self.host.encode(), self.port, extra)

    def take(self, status: int, headers: dict[bytes, bytes], body: bytes, held: float) -> None:
        now = time_ns()
        totals = self.totals
        if status != 200:
            if status not in (304, 408):  # nchan's "nothing new yet": poll again
                totals.fail(f"status {status}")
            return
        if self.protocol == "gateway":
            answer = json.loads(body)
            self.cursor = answer["lastEventId"]
            payloads = [event["data"].encode() for event in answer["events"]]
            if not payloads and totals.publishing:
                totals.empty += 1
                totals.held_max = max(totals.held_max, held)
        else:
            self.cache = [(b"If-Modified-Since", headers.get(b"last-modified", b"")),
                          (b"If-None-Match", headers.get(b"etag", b""))]
            payloads = [body]
        for payload in payloads:
            if not payload.startswith(b"@"):
                continue
            seq, ts = int(payload[1:9]), int(payload[10:29])
            if seq == self.last_seq:
                totals.duplicates += 1
                continue
            if seq < self.last_seq:
                totals.reordered += 1
            self.last_seq = seq
            totals.delivered += 1
            totals.latency_us.append((now - ts) // 1000)

    async def run(self, stop: asyncio.Event, timeout: float) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, asyncio.TimeoutError) as error:
            self.totals.fail(type(error).__name__)
            return
        self.totals.connected += 1
        try:
            while not stop.is_set():
                writer.write(self.request())
                sent = time.monotonic()
                status, headers, body = await read_response(reader)
                self.totals.polls += 1
                self.take(status, headers, body, time.monotonic() - sent)
                if headers.get(b"connection", b"").lower() == b"close":
                    self.totals.fail("server closed the connection")
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            if not stop.is_set():
                self.totals.fail(type(error).__name__)
        finally:
            writer.close()


async def run(a: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {"label": a.label, "clients": a.clients, "rate": a.rate,
                                 "protocol": a.protocol}
    totals = Totals()
    stop = asyncio.Event()
    pollers = [Poller(a.url, a.protocol, a.hold, totals) for _ in range(a.clients)]
    tasks = [asyncio.ensure_future(p.run(stop, a.timeout)) for p in pollers]
    deadline = time.monotonic() + a.timeout
    while totals.connected + sum(totals.failed.values()) < a.clients:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    # Each client's first poll is on its way: give the server time to hold them all.
    await asyncio.sleep(a.settle)
    result["connected"] = totals.connected
    polls0 = totals.polls
    calls0 = await redis_command_calls(a.redis_url) if a.redis_url else {}
    cpu0 = sum_readings(a.server_pid, proc_cpu_seconds)
    cores0, kthreads0 = cores_cpu_seconds(), kernel_threads_cpu_seconds()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    totals.publishing = True

    publisher = HttpPublisher(a.publish_url, a.publish == "http-json", a.timeout)
    events = max(1, int(a.rate * a.duration))
    waiters = []
    for seq in range(events):
        delay = t0 + seq / a.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        waiters.append(await publisher.send(make_payload(seq, time_ns())))
    totals.publishing = False
    drain_end = time.monotonic() + a.drain
    await asyncio.wait(waiters, timeout=a.drain)
    published = 0
    for waiter in waiters:
        try:
            publisher.accept(waiter)
            published += 1
        except Exception as error:  # noqa: BLE001 - counted and reported
            result["publish_error"] = repr(error)
    publisher.close()
    expected = totals.connected * published
    while totals.delivered < expected and time.monotonic() < drain_end:
        await asyncio.sleep(0.02)
    cpu1 = sum_readings(a.server_pid, proc_cpu_seconds)
    cores1, kthreads1 = cores_cpu_seconds(), kernel_threads_cpu_seconds()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    calls1 = await redis_command_calls(a.redis_url) if a.redis_url else {}
    phase = time.monotonic() - t0
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    result.update(published=published, delivered=totals.delivered, expected=expected,
                  loss=round(1 - totals.delivered / expected, 6) if expected else None,
                  duplicates=totals.duplicates, reordered=totals.reordered,
                  polls=totals.polls - polls0, fail_reasons=totals.failed,
                  empty_answers=totals.empty, empty_held_max_s=round(totals.held_max, 3),
                  phase_seconds=round(phase, 3))
    lat = sorted(totals.latency_us)
    if lat:
        result.update(latency_p50_ms=round(percentile(lat, 0.5), 2),
                      latency_p99_ms=round(percentile(lat, 0.99), 2),
                      latency_max_ms=round(lat[-1] / 1000, 2))
    loadgen_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    result["loadgen_cpu_s"] = round(loadgen_cpu, 3)
    if cpu0 is not None and cpu1 is not None:
        result["server_cpu_s"] = round(cpu1 - cpu0, 3)
        if totals.delivered:
            result["cpu_s_per_1k"] = round((cpu1 - cpu0) / totals.delivered * 1000, 5)
        # Task time of other programs on the cores (as loadgen.py reports it): large values
        # make the run's figures suspect, and run.py's --attempts reruns such a cell.
        tasks = sum(c1[0] - c0[0] for c0, c1 in zip(cores0, cores1))
        other = tasks - (cpu1 - cpu0) - loadgen_cpu - (kthreads1 - kthreads0)
        result["background_cpu_s"] = round(max(0.0, other), 3)
    if a.redis_url:
        result.update(redis_command_delta(calls0, calls1))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="long-poll URL (one channel)")
    p.add_argument("--protocol", choices=("gateway", "nchan"), default="gateway")
    p.add_argument("-n", "--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=2.0, help="events published per second")
    p.add_argument("--duration", type=float, default=10.0, help="publish seconds")
    p.add_argument("--hold", type=float, default=20.0, help="the gateway's ?timeout= per poll")
    p.add_argument("--publish", choices=("http-json", "http-nchan"), default="http-json")
    p.add_argument("--publish-url", required=True)
    p.add_argument("--redis-url", help="the server's Redis: count its commands")
    p.add_argument("--server-pid", type=int, action="append", default=[])
    p.add_argument("--settle", type=float, default=2.0, help="wait after connecting")
    p.add_argument("--drain", type=float, default=5.0, help="max wait for late deliveries")
    p.add_argument("--timeout", type=float, default=60.0, help="limit for connecting")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.clients <= 0:
        p.error("--rate and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_once(args.label, run(args),
                    args.timeout + args.settle + args.duration + args.drain + 60)

if __name__ == "__main__":
    sys.exit(main())
