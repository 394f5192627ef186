#!/usr/bin/env python3
"""Publish workloads: what a publish costs, how fast batches go in, and many channels.

One server, one run, ONE line of JSON (the fan-out generator's conventions: the payload of
``loadgen.make_payload`` carries its sequence and its send time, every host is loopback):

- ``--mode single``: N subscribers on one channel; R single-event publishes per second, open
  loop, pipelined on one kept-alive connection (the requests due at a loop turn leave in one
  write). CPU per publish (server and Redis apart), publishes/s, publish-to-delivery latency.
- ``--mode batch``: K channels, no subscribers; events published as fast as the server takes
  them (``--window`` requests in flight, ``--batch`` events per request where the server has
  batch publishing, one request per event where it has not). Events/s, CPU per event, and the
  order kept per channel: the ids of each reply (``--publish gateway-batch``) and, with
  ``--redis-url``, each channel's history in Redis afterwards.
- ``--mode channels``: N subscribers, each on its own channel (``user.<i>``); R events/s spread
  round-robin over them, ``--batch`` per request. Everything delivered? At what latency?

    python benchmarks/publish.py --mode single --subscribers 10 --rate 5000 \
        --url 'http://127.0.0.1:8080/events/{channel}' --publish gateway \
        --publish-url 'http://127.0.0.1:8080/publish/{channel}' \
        --server-pid GATEWAY_PID --redis-pid REDIS_PID

``{channel}`` in ``--url`` and ``--publish-url`` is replaced by each channel's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import deque
from urllib.parse import urlsplit

from loadgen import (
    Stats,
    Subscriber,
    cores_cpu_seconds,
    kernel_threads_cpu_seconds,
    make_payload,
    percentile,
    proc_cpu_seconds,
    require_loopback,
    split_http_url,
    sum_readings,
)
from storm import run_once

time_ns = time.time_ns
monotonic = time.monotonic
MODES = ("single", "batch", "channels")
# How each server is published to: one JSON message per request (the gateway's
# POST /publish/<channel>), a batch of NDJSON lines naming their channels (POST /publish/),
# or the raw payload per request (nchan, the C floor).
FORMATS = ("gateway", "gateway-batch", "raw")
MODE_DEFAULTS = {  # mode: channels, channel name, subscribers, rate (0: closed loop)
    "single": (1, "bench", 10, 2000.0),
    "batch": (10, "bench.{i}", 0, 0.0),
    "channels": (0, "user.{i}", 10000, 10000.0),
}


def parse_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


# --------------------------------------------------------------------------- requests


class Requests:
    """The bytes of publish requests in one format."""

    def __init__(self, form: str, url: str, channels: list[str]) -> None:
        self.form = form
        host, port, _ = split_http_url(url.replace("{channel}", "c"))
        self.host, self.port = host, port
        path = urlsplit(url).path
        self.channels = [name.encode() for name in channels]
        if form == "gateway-batch":
            self.heads = [b"POST %s HTTP/1.1\r\nHost: %s:%d\r\n"
                          b"Content-Type: application/x-ndjson\r\n" % (path.encode(), host.encode(), port)]
        else:
            kind = b"application/json" if form == "gateway" else b"text/plain"
            self.heads = [b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: %s\r\n" % (
                path.replace("{channel}", name).encode(), host.encode(), port, kind)
                for name in channels]

    @property
    def batches(self) -> bool:
        return self.form == "gateway-batch"

    def one(self, channel: int, payload: bytes) -> bytes:
        body = b'{"data":"%s"}' % payload if self.form == "gateway" else payload
        return self.heads[channel] + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def batch(self, items: list[tuple[int, bytes]]) -> bytes:
        names = self.channels
        body = b"".join(b'{"channel":"%s","data":"%s"}\n' % (names[c], p) for c, p in items)
        return self.heads[0] + b"Content-Length: %d\r\n\r\n" % len(body) + body


def parse_response(buf: bytes, start: int) -> tuple[int, bytes, int] | None:
    """(status, body, end) of the HTTP/1.1 response at buf[start:], None while incomplete."""
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    lines = buf[start:end].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    pos = end + 4
    if not chunked:
        return (status, buf[pos:pos + length], pos + length) if len(buf) >= pos + length else None
    parts = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        if size == 0:
            tail = buf.find(b"\r\n", eol + 2)
            return None if tail < 0 else (status, b"".join(parts), tail + 2)
        if len(buf) < eol + 2 + size + 2:
            return None
        parts.append(buf[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


class Totals:
    def __init__(self, channels: int) -> None:
        self.sent = 0  # events
        self.requests = 0
        self.accepted = 0
        self.refused = 0
        self.refusals: dict[str, int] = {}
        self.accepted_per_channel = [0] * channels
        self.order_violations = 0
        self.ack_us = []
        self.last_ack = 0
        self.last_ids: dict[int, tuple[int, int]] = {}


class Pipeline(asyncio.Protocol):
    """One kept-alive publishing connection: requests written back to back, replies matched to
    them in order (HTTP/1.1 pipelining)."""

    def __init__(self, totals: Totals, on_reply) -> None:
        self.totals = totals
        self.on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: deque[tuple[int, list[int]]] = deque()  # (sent ns, channels) per request
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, sent: list[list[int]]) -> None:
        """Write requests; `sent` holds each one's events' channels, in order."""
        now = time_ns()
        for channels in sent:
            self.pending.append((now, channels))
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        totals = self.totals
        while self.pending:
            found = parse_response(buf, pos)
            if found is None:
                break
            status, body, pos = found
            sent_ns, channels = self.pending.popleft()
            now = time_ns()
            totals.ack_us.append((now - sent_ns) // 1000)
            totals.last_ack = now
            if 200 <= status < 300:
                totals.accepted += len(channels)
                for channel in channels:
                    totals.accepted_per_channel[channel] += 1
                if len(channels) > 1 or body.startswith(b'{"count"'):
                    self.check_ids(channels, body)
            else:
                totals.refused += len(channels)
                reason = f"{status} {body[:120].decode('utf-8', 'replace')}"
                totals.refusals[reason] = totals.refusals.get(reason, 0) + 1
        self.buf = buf[pos:]
        self.on_reply()

    def check_ids(self, channels: list[int], body: bytes) -> None:
        """A batch reply's ids, in item order, rise within each channel across replies."""
        totals = self.totals
        ids = json.loads(body)["ids"]
        if len(ids) != len(channels):
            totals.order_violations += abs(len(ids) - len(channels))
        last = totals.last_ids
        for channel, text in zip(channels, ids):
            event_id = parse_id(text)
            if event_id <= last.get(channel, (-1, -1)):
                totals.order_violations += 1
            last[channel] = event_id

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_reply()


# --------------------------------------------------------------------------- the run


async def connect_subscribers(urls: list[str], stats: Stats, timeout: float,
                              concurrency: int = 200) -> list[Subscriber]:
    """Open one event stream per URL, `concurrency` connects in flight; wait for every head."""
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    todo = iter(urls)

    async def opener() -> None:
        for url in todo:
            host, port, path = split_http_url(url)
            request = (b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                       b"Cache-Control: no-cache\r\n\r\n" % (path.encode(), host.encode(), port))
            sub = Subscriber(request, stats)
            try:
                await asyncio.wait_for(loop.create_connection(lambda s=sub: s, host, port), 10)
            except (OSError, asyncio.TimeoutError) as error:
                stats.fail(type(error).__name__)
                continue
            subscribers.append(sub)

    openers = [asyncio.ensure_future(opener()) for _ in range(min(concurrency, len(urls)))]
    deadline = monotonic() + timeout
    try:
        while monotonic() < deadline:
            if stats.headers_ok + sum(stats.failed.values()) >= len(urls):
                break
            await asyncio.sleep(0.02)
    finally:
        for task in openers:
            task.cancel()
        await asyncio.gather(*openers, return_exceptions=True)
    return subscribers


class Run:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.names = [a.channel_name.format(i=i) for i in range(a.channels)]
        self.requests = Requests(a.publish, a.publish_url, self.names)
        self.batch = a.batch if self.requests.batches else 1
        self.totals = Totals(a.channels)
        self.stats = Stats()
        self.subscribers: list[Subscriber] = []
        self.pipes: list[Pipeline] = []
        self.seq = 0
        self.result: dict[str, object] = {"label": a.label, "mode": a.mode, "publish": a.publish,
                                          "subscribers": a.subscribers, "channels": a.channels,
                                          "rate": a.rate, "batch": self.batch}

    def send(self, pipe: Pipeline, events: int) -> None:
        remaining = events
        data: list[bytes] = []
        sent: list[list[int]] = []
        while remaining > 0:
            take = min(self.batch, remaining)
            chunk, info = self._requests(take)
            data.append(chunk)
            sent.extend(info)
            remaining -= take
        pipe.send(b"".join(data), sent)

    def _requests(self, events: int) -> tuple[bytes, list[list[int]]]:
        """The requests for the next `events` events: one, unless the server takes no batches."""
        channels = self.a.channels
        requests = self.requests
        if not requests.batches:
            out, sent = [], []
            for _ in range(events):
                seq = self.seq
                self.seq += 1
                out.append(requests.one(seq % channels, make_payload(seq, time_ns())))
                sent.append([seq % channels])
            self.totals.sent += events
            self.totals.requests += events
            return b"".join(out), sent
        items = []
        for _ in range(events):
            seq = self.seq
            self.seq += 1
            items.append((seq % channels, make_payload(seq, time_ns())))
        self.totals.sent += events
        self.totals.requests += 1
        return requests.batch(items), [[channel for channel, _ in items]]

    async def open_pipes(self, count: int, on_reply) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, pipe = await asyncio.wait_for(loop.create_connection(
                lambda: Pipeline(self.totals, on_reply), self.requests.host, self.requests.port), 10)
            self.pipes.append(pipe)  # type: ignore[arg-type]

    async def open_loop(self) -> None:
        """R events/s whatever the server answers; those due at each turn in one write."""
        a = self.a
        await self.open_pipes(1, lambda: None)
        total = max(1, int(a.rate * a.duration))
        t0 = monotonic()
        while self.seq < total:
            pipe = self.pipes[-1]
            if pipe.closed:  # the server ended the connection: what it left unanswered is lost
                await self.open_pipes(1, lambda: None)
                continue
            due = min(total, int((monotonic() - t0) * a.rate) + 1)
            ready = due - self.seq
            if ready >= self.batch or (due == total and ready > 0):
                self.send(pipe, ready - ready % self.batch if due < total else ready)
            await asyncio.sleep(max(0.0005, min(0.002, self.batch / a.rate)))

    async def closed_loop(self) -> None:
        """As fast as the server answers: `--window` requests in flight, for `--duration`."""
        a = self.a
        stop = monotonic() + a.duration
        done = asyncio.get_running_loop().create_future()

        def refill() -> None:
            for pipe in self.pipes:
                if pipe.closed:
                    continue
                if monotonic() >= stop:
                    if not any(p.pending for p in self.pipes) and not done.done():
                        done.set_result(None)
                    continue
                missing = a.window - len(pipe.pending)
                if missing > 0:
                    self.send(pipe, missing * self.batch)
            if all(p.closed for p in self.pipes) and not done.done():
                done.set_result(None)

        await self.open_pipes(a.connections, refill)
        refill()
        await asyncio.wait_for(done, a.duration + a.drain + 10)

    async def check_history(self) -> None:
        """Each channel's history in Redis: the last events accepted for it, in order."""
        a = self.a
        parts = urlsplit(a.redis_url)
        require_loopback(parts.hostname or "127.0.0.1")
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
        checked = wrong = 0
        try:
            for index, name in enumerate(self.names):
                key = f"{a.prefix}sse-gateway:history:{name}".encode()
                writer.write(b"*4\r\n$6\r\nXRANGE\r\n$%d\r\n%s\r\n$1\r\n-\r\n$1\r\n+\r\n" % (len(key), key))
                entries = await read_resp(reader)
                seqs = [int(fields[1].split(b'"data":"@', 1)[1][:8]) for _, fields in entries]
                sent = [s for s in range(self.seq) if s % a.channels == index]
                accepted = self.totals.accepted_per_channel[index]
                expect = sent[:accepted][-len(seqs):] if seqs else []
                checked += len(seqs)
                if seqs != expect or (accepted and not seqs):
                    wrong += 1
        finally:
            writer.close()
        self.result.update(history_checked=checked, history_channels_wrong=wrong)

    async def main(self) -> None:
        a, stats, result = self.a, self.stats, self.result
        urls = [a.url.replace("{channel}", self.names[i % a.channels]) for i in range(a.subscribers)]
        per_channel = [0] * a.channels
        for i in range(a.subscribers):
            per_channel[i % a.channels] += 1
        if urls:
            t0 = monotonic()
            self.subscribers = await connect_subscribers(urls, stats, a.connect_timeout)
            result.update(connected=stats.headers_ok, connect_seconds=round(monotonic() - t0, 2),
                          fail_reasons=dict(stats.failed))
            if stats.headers_ok < len(urls):
                raise RuntimeError(f"{stats.headers_ok} of {len(urls)} subscribers connected: "
                                   f"{dict(stats.failed)}")
            await asyncio.sleep(a.settle)
        stats.late = Stats()
        cpu0 = sum_readings(a.server_pid, proc_cpu_seconds)
        redis0 = sum_readings(a.redis_pid, proc_cpu_seconds)
        cores0, kthreads0 = cores_cpu_seconds(), kernel_threads_cpu_seconds()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self_cpu0 = ru.ru_utime + ru.ru_stime
        t0, t0_ns = monotonic(), time_ns()
        if a.rate > 0:
            await self.open_loop()
        else:
            await self.closed_loop()
        sent_s = monotonic() - t0
        totals = self.totals
        drain_end = monotonic() + a.drain
        while monotonic() < drain_end:
            expected = sum(n * per_channel[c] for c, n in enumerate(totals.accepted_per_channel))
            if not any(p.pending and not p.closed for p in self.pipes) and stats.delivered >= expected:
                break
            await asyncio.sleep(0.01)
        phase = monotonic() - t0
        cpu1 = sum_readings(a.server_pid, proc_cpu_seconds)
        redis1 = sum_readings(a.redis_pid, proc_cpu_seconds)
        cores1, kthreads = cores_cpu_seconds(), kernel_threads_cpu_seconds() - kthreads0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        loadgen_cpu = ru.ru_utime + ru.ru_stime - self_cpu0
        expected = sum(n * per_channel[c] for c, n in enumerate(totals.accepted_per_channel))
        unanswered = sum(len(p.pending) for p in self.pipes)
        result["connections"] = len(self.pipes)
        result.update(
            sent=totals.sent, requests=totals.requests, accepted=totals.accepted,
            refused=totals.refused, refusals=totals.refusals, unanswered_requests=unanswered,
            order_violations=totals.order_violations, send_seconds=round(sent_s, 3),
            phase_seconds=round(phase, 3), delivered=stats.delivered, expected=expected,
            loss=round(1 - stats.delivered / expected, 6) if expected else None,
            reordered=stats.reordered, dropped=stats.dropped,
            loadgen_cpu_s=round(loadgen_cpu, 3))
        if totals.accepted and totals.last_ack > t0_ns:
            result["events_per_s"] = round(totals.accepted / ((totals.last_ack - t0_ns) / 1e9), 1)
        for name, values in (("latency", stats.latency_us), ("ack", totals.ack_us)):
            ordered = sorted(values)
            if ordered:
                result[f"{name}_p50_ms"] = round(percentile(ordered, 0.5), 2)
                result[f"{name}_p99_ms"] = round(percentile(ordered, 0.99), 2)
                result[f"{name}_max_ms"] = round(ordered[-1] / 1000, 2)
        server = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        redis = None if redis0 is None or redis1 is None else redis1 - redis0
        if server is not None:
            result["server_cpu_s"] = round(server, 3)
            total = server + (redis or 0.0)
            if redis is not None:
                result["redis_cpu_s"] = round(redis, 3)
            if totals.accepted:
                per = 1e6 / totals.accepted
                result["cpu_us_per_event"] = round(total * per, 1)
                result["server_cpu_us_per_event"] = round(server * per, 1)
                if redis is not None:
                    result["redis_cpu_us_per_event"] = round(redis * per, 1)
            tasks = [c1[0] - c0[0] for c0, c1 in zip(cores0, cores1)]
            result["background_cpu_s"] = round(max(0.0, sum(tasks) - total - loadgen_cpu - kthreads), 3)
            core = a.server_core
            if core is not None and core < len(tasks) and totals.accepted:
                # The core's busy time also counts the loopback TCP work charged to no process.
                busy = tasks[core] + cores1[core][1] - cores0[core][1]
                result["core_us_per_event"] = round(busy * 1e6 / totals.accepted, 1)
        if a.redis_url and a.mode == "batch":
            await self.check_history()

    def close(self) -> None:
        self.stats.closing = True
        if self.stats.late is not None:
            self.stats.late.closing = True
        for sub in self.subscribers:
            sub.close()
        for pipe in self.pipes:
            if pipe.transport is not None:
                pipe.transport.abort()


async def read_resp(reader: asyncio.StreamReader):
    """One RESP2 reply, as Python values (bulk strings as bytes)."""
    line = await reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        count = int(rest)
        return [] if count < 0 else [await read_resp(reader) for _ in range(count)]
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"-":
        raise RuntimeError(rest.decode("utf-8", "replace"))
    return int(rest) if kind == b":" else rest


async def run(a: argparse.Namespace) -> dict[str, object]:
    job = Run(a)
    try:
        await job.main()
    except Exception as error:  # noqa: BLE001 - a failed run still reports what it has
        job.result["error"] = repr(error)
    finally:
        job.close()
        await asyncio.sleep(0)
    return job.result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="single")
    p.add_argument("--url", default="", help="event-stream URL, with {channel}")
    p.add_argument("--publish", choices=FORMATS, default="gateway")
    p.add_argument("--publish-url", required=True, help="publish URL ({channel} unless a batch)")
    p.add_argument("-n", "--subscribers", type=int, help="default: single 10, batch 0, "
                   "channels 10000")
    p.add_argument("--channels", type=int, help="default: single 1, batch 10, channels: "
                   "one per subscriber")
    p.add_argument("--channel-name", help="default: bench, bench.{i}, user.{i}")
    p.add_argument("--rate", type=float, help="events/s offered, 0: as fast as answered "
                   "(default: single 2000, batch 0, channels 10000)")
    p.add_argument("--batch", type=int, default=100, help="events per batch request")
    p.add_argument("--window", type=int, default=8, help="requests in flight per connection "
                   "(closed loop)")
    p.add_argument("--connections", type=int, default=1, help="publishing connections "
                   "(closed loop)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--drain", type=float, default=5.0, help="max wait for late deliveries")
    p.add_argument("--settle", type=float, default=1.0, help="pause after connecting")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--server-pid", type=int, action="append", default=[])
    p.add_argument("--redis-pid", type=int, action="append", default=[])
    p.add_argument("--server-core", type=int, help="CPU the server (and its Redis) are pinned "
                   "to: also report that core's busy time per event")
    p.add_argument("--redis-url", help="the server's Redis: check the batch's history order")
    p.add_argument("--prefix", default="", help="the gateway's Redis key prefix")
    p.add_argument("--label", default="")
    a = p.parse_args(argv)
    channels, name, subscribers, rate = MODE_DEFAULTS[a.mode]
    a.subscribers = subscribers if a.subscribers is None else a.subscribers
    a.channels = a.channels or channels or max(1, a.subscribers)
    a.channel_name = a.channel_name or name
    a.rate = rate if a.rate is None else a.rate
    if a.subscribers and not a.url:
        p.error("--url is needed for subscribers")
    if a.channels > 1 and "{i}" not in a.channel_name:
        p.error("--channel-name needs {i} for several channels")
    if a.publish != "gateway-batch" and "{channel}" not in a.publish_url:
        p.error("--publish-url needs {channel} for one event per request")
    if a.batch < 1 or a.window < 1 or a.connections < 1 or a.rate < 0:
        p.error("--batch, --window and --connections must be positive, --rate not negative")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return run_once(a.label, run(a), a.connect_timeout + a.settle + a.duration + a.drain + 60)


if __name__ == "__main__":
    sys.exit(main())
